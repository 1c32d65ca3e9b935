"""Prepared-dataset format (safetensors shards + JSON) and the map-style dataset / sampler that stream it."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open

from uniid_core.errors import UniIDError
from uniid_core.face.image import load_image

INDEX_NAME = "index.json"
SHARD_DIR = "shards"
FORMAT_VERSION = 1


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temporary file and rename it, so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def resize_target(image_rgb: np.ndarray, resolution: int) -> np.ndarray:
    """Resize an RGB uint8 image to resolution x resolution (no crop, bilinear with antialias)."""
    resized = Image.fromarray(image_rgb).resize((resolution, resolution), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)


def load_target_image(path: str, resolution: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Read an image as RGB (the face pipeline's loader) and resize it; returns (uint8 HWC, (H, W))."""
    image = load_image(path)
    return resize_target(image, resolution), (image.shape[0], image.shape[1])


def pixels_to_unit_range(pixels: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float in [-1, 1], the VAE's input range."""
    return pixels.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def faces_uint8_to_input(faces: torch.Tensor) -> torch.Tensor:
    """(B,112,112,3) uint8 -> (B,3,112,112) in [-1, 1] by the official arithmetic (x/255 - 0.5)/0.5."""
    return (faces.permute(0, 3, 1, 2).float() * (1 / 255) - 0.5) / 0.5


@dataclass
class Sample:
    """Where one training sample lives and what it is conditioned on."""

    shard: int
    row: int
    image: str
    class_word: str
    original_size: tuple[int, int]


def read_index(root: str | Path) -> dict[str, Any]:
    """Load DATASET_DIR/index.json, telling the user to run training.prepare when it is missing."""
    path = Path(root) / INDEX_NAME
    if not path.is_file():
        raise UniIDError(f"{path} not found: build the dataset first with `python -m training.prepare`")
    index = json.loads(path.read_text(encoding="utf-8"))
    if index.get("version") != FORMAT_VERSION:
        raise UniIDError(f"{path} has format version {index.get('version')}, expected {FORMAT_VERSION}")
    return index


class FaceDataset(torch.utils.data.Dataset):
    """Random access over the prepared shards: aligned face crop, target (latents or pixels), prompt data."""

    def __init__(self, root: str | Path, resolution: int = 512, use_cached_latents: bool = True) -> None:
        """Read the index; cached latents are used only when every shard has them."""
        self.root = Path(root)
        self.index = read_index(self.root)
        self.resolution = resolution
        self.shard_files = [self.root / SHARD_DIR / s["file"] for s in self.index["shards"]]
        self.samples: list[Sample] = []
        for shard_id, shard in enumerate(self.index["shards"]):
            for row, entry in enumerate(shard["entries"]):
                self.samples.append(
                    Sample(shard_id, row, entry["image"], entry["class_word"], tuple(entry["original_size"]))
                )
        if not self.samples:
            raise UniIDError(f"{self.root} holds no usable sample: see its report.json for why")
        has_latents = all(s.get("latents") for s in self.index["shards"])
        self.use_latents = use_cached_latents and has_latents
        if self.use_latents and self.index.get("latent_resolution") != resolution:
            raise UniIDError(
                f"cached latents are for {self.index.get('latent_resolution')}px, training uses "
                f"{resolution}px:"
                " set use_cached_latents: false or prepare again with the matching resolution"
            )
        self._handles: dict[int, Any] = {}

    def __len__(self) -> int:
        """Number of usable samples."""
        return len(self.samples)

    def class_words(self) -> list[str]:
        """Distinct class words, sorted (used to pre-encode the prompts once)."""
        return sorted({s.class_word for s in self.samples})

    def _shard(self, shard_id: int) -> Any:
        handle = self._handles.get(shard_id)
        if handle is None:
            handle = safe_open(str(self.shard_files[shard_id]), framework="pt")
            self._handles[shard_id] = handle
        return handle

    def face(self, i: int) -> torch.Tensor:
        """Aligned 112x112x3 uint8 crop of sample i."""
        sample = self.samples[i]
        return self._shard(sample.shard).get_slice("faces")[sample.row]

    def __getitem__(self, i: int) -> dict[str, Any]:
        """One sample: face crop, target latents (mean, std) or pixels, class word and original size."""
        sample = self.samples[i]
        handle = self._shard(sample.shard)
        item: dict[str, Any] = {
            "face": handle.get_slice("faces")[sample.row],
            "class_word": sample.class_word,
            "original_size": torch.tensor(sample.original_size, dtype=torch.long),
        }
        if self.use_latents:
            item["latent_mean"] = handle.get_slice("latent_mean")[sample.row]
            item["latent_std"] = handle.get_slice("latent_std")[sample.row]
        else:
            pixels, size = load_target_image(sample.image, self.resolution)
            item["pixels"] = torch.from_numpy(pixels.copy())
            item["original_size"] = torch.tensor(size, dtype=torch.long)
        return item

    def __getstate__(self) -> dict[str, Any]:
        """Drop open file handles when the dataset is sent to DataLoader workers."""
        state = self.__dict__.copy()
        state["_handles"] = {}
        return state


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors, keep class words as a list (each sample keeps its own prompt)."""
    batch: dict[str, Any] = {"class_word": [it["class_word"] for it in items]}
    for key in items[0]:
        if key != "class_word":
            batch[key] = torch.stack([it[key] for it in items])
    return batch


class ResumableBatchSampler(torch.utils.data.Sampler):
    """Seeded per-epoch shuffle split across processes; can start mid-epoch for exact resume.

    Every process gets the same number of full batches (drop_last), batch k of rank r being
    perm[(k * world + r) * B : ... + B], so DDP ranks stay in lockstep.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        """Remember the split; call set_epoch before iterating."""
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start_batch = 0
        if self.batches_per_epoch() == 0:
            raise UniIDError(
                f"{num_samples} samples cannot fill one batch of {batch_size} on {world_size} process(es):"
                " lower train_batch_size or add images"
            )

    def batches_per_epoch(self) -> int:
        """Full batches per process per epoch."""
        return self.num_samples // (self.batch_size * self.world_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch's permutation and the first batch to yield (to skip what was already trained)."""
        self.epoch = epoch
        self.start_batch = start_batch

    def __len__(self) -> int:
        """Batches left in this epoch for this process."""
        return self.batches_per_epoch() - self.start_batch

    def __iter__(self) -> Iterator[list[int]]:
        """Yield this process's batches of the current epoch from start_batch on."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(self.num_samples, generator=generator).tolist()
        for k in range(self.start_batch, self.batches_per_epoch()):
            first = (k * self.world_size + self.rank) * self.batch_size
            yield perm[first : first + self.batch_size]


class ContinuousBatches(torch.utils.data.Sampler):
    """The batches of every epoch one after another, from the sampler's (epoch, start batch) on.

    One DataLoader iterator, and so one set of worker processes, serves a whole run: the workers start
    once and are shut down cleanly when the training loop leaves it (no persistent workers to leave behind).
    """

    def __init__(self, sampler: ResumableBatchSampler) -> None:
        """Wrap the per-epoch sampler; call its set_epoch before iterating."""
        self.sampler = sampler

    def __iter__(self) -> Iterator[list[int]]:
        """Yield batches endlessly: the rest of the current epoch, then each next epoch from its start."""
        epoch, start = self.sampler.epoch, self.sampler.start_batch
        while True:
            self.sampler.set_epoch(epoch, start)
            yield from self.sampler
            epoch, start = epoch + 1, 0
