"""On-disk store of a prepared dataset: shards, the small pieces that save progress between them, the index.

A worker appends samples to the shard it is building and saves the new ones as a piece
(`shards/pieces/<prefix><NNNNN>-<KKKK>.safetensors/.json`) every few seconds; when the shard is full it
is sealed: all its samples are written as `shards/<prefix><NNNNN>.safetensors/.json`, then its pieces
are deleted. Every file is written under a temporary name and renamed, JSON last, so a kill at any
moment leaves complete shards and complete pieces, which readers treat alike: nothing finished is lost.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from training.data import FORMAT_VERSION, INDEX_NAME, SHARD_DIR, write_json_atomic
from uniid_core.errors import UniIDError

PIECE_DIR = "pieces"
SHARD_RE = re.compile(r"^(shard_(?:[a-z0-9]+_)?)(\d{5,})\.json$")
PIECE_RE = re.compile(r"^(shard_(?:[a-z0-9]+_)?)(\d{5,})-(\d{4,})\.json$")
TAG_RE = re.compile(r"^(?:p(\d+))?(?:w(\d+))?$")

Encoder = Callable[[list[np.ndarray]], tuple[torch.Tensor, torch.Tensor]]


def shard_prefix(part: int, parts: int, worker: int, workers: int) -> str:
    """File prefix of one writer: 'shard_', or tagged with its --part and/or worker ('shard_p001w02_')."""
    tag = (f"p{part:03d}" if parts > 1 else "") + (f"w{worker:02d}" if workers > 1 else "")
    return f"shard_{tag}_" if tag else "shard_"


def prefix_part(prefix: str) -> int | None:
    """The --part a prefix was written by (None: written without --part)."""
    match = TAG_RE.match(prefix.removeprefix("shard_").rstrip("_"))
    return int(match.group(1)) if match and match.group(1) is not None else None


@dataclass
class Record:
    """One shard or piece as described by its JSON file."""

    path: Path
    prefix: str
    shard: int
    piece: int | None
    data: dict[str, Any]

    @property
    def images(self) -> list[str]:
        """Every image it accounts for, used or failed."""
        return [e["image"] for e in self.data["entries"]] + [f["image"] for f in self.data["failures"]]

    @property
    def tensor_file(self) -> str | None:
        """Its .safetensors path relative to the shards folder (None when it holds only failures)."""
        name = self.data["file"]
        if name is None:
            return None
        return name if self.piece is None else f"{PIECE_DIR}/{name}"


def _read(path: Path, pattern: re.Pattern[str]) -> Record | None:
    """Parse one JSON record; None when the file vanished meanwhile (sealed by another process)."""
    match = pattern.match(path.name)
    if match is None:
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    piece = int(match.group(3)) if pattern is PIECE_RE else None
    return Record(path, match.group(1), int(match.group(2)), piece, data)


def read_records(out: Path) -> tuple[list[Record], list[Record]]:
    """(sealed shards, live pieces), sorted; pieces of a shard that is already sealed are left out.

    Pieces are listed before shards: a piece deleted meanwhile was sealed first, so its shard is seen.
    """
    folder = out / SHARD_DIR
    pieces = [r for p in sorted((folder / PIECE_DIR).glob("shard_*.json")) if (r := _read(p, PIECE_RE))]
    shards = [r for p in sorted(folder.glob("shard_*.json")) if (r := _read(p, SHARD_RE))]
    sealed = {(r.prefix, r.shard) for r in shards}
    live = [r for r in pieces if (r.prefix, r.shard) not in sealed]
    return shards, live


def done_images(out: Path) -> set[str]:
    """Every image already recorded (used or failed) in a shard or a piece."""
    shards, pieces = read_records(out)
    return {image for record in shards + pieces for image in record.images}


def latent_settings(records: list[Record]) -> set[tuple[bool, int | None]]:
    """(has latents, resolution) of the records holding samples, to refuse mixing settings."""
    return {(bool(r.data.get("latents")), r.data.get("latent_resolution")) for r in records if r.data["file"]}


def write_samples(
    folder: Path,
    name: str,
    tensors: dict[str, torch.Tensor],
    record: dict[str, Any],
) -> None:
    """Write `name`.safetensors (when there are samples) and then `name`.json, each atomically."""
    record = dict(record, file=None)
    if tensors:
        target = folder / f"{name}.safetensors"
        tmp = target.with_name(f".{target.name}.tmp")
        save_file(tensors, str(tmp))
        tmp.replace(target)
        record["file"] = target.name
    write_json_atomic(folder / f"{name}.json", record)


def delete_record(record: Record) -> None:
    """Remove a record: JSON first (it marks the record complete), then its tensors."""
    record.path.unlink(missing_ok=True)
    if record.data["file"]:
        record.path.with_name(record.data["file"]).unlink(missing_ok=True)


def seal_leftover_pieces(out: Path, owned: Callable[[str], bool]) -> int:
    """Seal the pieces an interrupted run left (only prefixes `owned` says are ours); returns shards sealed.

    Also deletes stale pieces of already-sealed shards and temporary files of our prefixes.
    """
    folder = out / SHARD_DIR
    if not folder.is_dir():
        return 0
    for tmp in list(folder.glob(".shard_*")) + list((folder / PIECE_DIR).glob(".shard_*")):
        match = re.match(r"^\.(shard_(?:[a-z0-9]+_)?)\d", tmp.name)
        if match and owned(match.group(1)):
            tmp.unlink(missing_ok=True)
    shards, live = read_records(out)
    sealed = {(r.prefix, r.shard) for r in shards}
    for path in sorted((folder / PIECE_DIR).glob("shard_*.json")):
        record = _read(path, PIECE_RE)
        if record and owned(record.prefix) and (record.prefix, record.shard) in sealed:
            delete_record(record)
    groups: dict[tuple[str, int], list[Record]] = {}
    for record in live:
        if owned(record.prefix):
            groups.setdefault((record.prefix, record.shard), []).append(record)
    for (prefix, shard), pieces in sorted(groups.items()):
        pieces.sort(key=lambda r: r.piece)
        parts = [load_file(str(folder / r.tensor_file)) for r in pieces if r.tensor_file]
        tensors = {key: torch.cat([p[key] for p in parts]) for key in (parts[0] if parts else {})}
        first = pieces[0].data
        record = {
            "entries": [e for r in pieces for e in r.data["entries"]],
            "failures": [f for r in pieces for f in r.data["failures"]],
            "latents": first.get("latents", False),
            "latent_resolution": first.get("latent_resolution"),
        }
        write_samples(folder, f"{prefix}{shard:05d}", tensors, record)
        for piece in pieces:
            delete_record(piece)
    return len(groups)


def next_shard_number(out: Path, prefix: str) -> int:
    """One past the highest shard number used by `prefix` (sealed or in pieces)."""
    shards, pieces = read_records(out)
    numbers = [r.shard for r in shards + pieces if r.prefix == prefix]
    return max(numbers) + 1 if numbers else 0


@dataclass
class Row:
    """One prepared sample while its shard is being built."""

    face: np.ndarray
    entry: dict[str, Any]
    target: np.ndarray | None = None
    latent: tuple[torch.Tensor, torch.Tensor] | None = None


@dataclass
class ShardWriter:
    """One worker's output: pieces saved on request, sealed into a shard of `shard_size` samples.

    Each call leaves the in-memory state consistent at every bytecode (single appends, counters moved
    last), so an interrupt handler can always save what is there.
    """

    out: Path
    prefix: str
    shard_size: int
    encoder: Encoder | None = None
    latent_resolution: int | None = None
    vae_batch: int = 8
    rows: list[Row] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    saved_rows: int = 0
    saved_failures: int = 0
    piece: int = 0
    shard: int = -1

    def __post_init__(self) -> None:
        """Create the folders and pick this prefix's next shard number."""
        (self.out / SHARD_DIR / PIECE_DIR).mkdir(parents=True, exist_ok=True)
        self.shard = next_shard_number(self.out, self.prefix)

    def add(self, face: np.ndarray, entry: dict[str, Any], target: np.ndarray | None) -> None:
        """Buffer one sample; its latents are encoded once `vae_batch` samples wait for them."""
        self.rows.append(Row(np.ascontiguousarray(face, dtype=np.uint8), entry, target))
        if self.encoder is not None and sum(r.latent is None for r in self.rows) >= self.vae_batch:
            self._encode(self.rows)

    def fail(self, image: str, reason: str) -> None:
        """Record an image that gives no sample, and why."""
        self.failures.append({"image": image, "reason": reason})

    def full(self) -> bool:
        """Whether the shard holds shard_size samples (or failures)."""
        return len(self.rows) >= self.shard_size or len(self.failures) >= self.shard_size

    def _encode(self, rows: list[Row]) -> None:
        """VAE-encode the rows that lack latents, in batches of vae_batch."""
        todo = [r for r in rows if r.latent is None]
        for start in range(0, len(todo), self.vae_batch):
            chunk = todo[start : start + self.vae_batch]
            mean, std = self.encoder([r.target for r in chunk])
            for k, row in enumerate(chunk):
                row.latent = (mean[k], std[k])
                row.target = None

    def _write(self, folder: Path, name: str, rows: list[Row], failures: list[dict[str, str]]) -> None:
        """Write rows + failures as one record (a piece or a shard)."""
        tensors: dict[str, torch.Tensor] = {}
        if rows:
            if self.encoder is not None:
                self._encode(rows)
            tensors["faces"] = torch.from_numpy(np.stack([r.face for r in rows]))
            if self.encoder is not None:
                tensors["latent_mean"] = torch.stack([r.latent[0] for r in rows]).contiguous()
                tensors["latent_std"] = torch.stack([r.latent[1] for r in rows]).contiguous()
        record = {
            "entries": [r.entry for r in rows],
            "failures": failures,
            "latents": self.encoder is not None,
            "latent_resolution": self.latent_resolution if self.encoder is not None else None,
        }
        write_samples(folder, name, tensors, record)

    def save_piece(self) -> None:
        """Save the samples and failures added since the last piece (nothing when there are none)."""
        rows, failures = len(self.rows), len(self.failures)
        if rows == self.saved_rows and failures == self.saved_failures:
            return
        name = f"{self.prefix}{self.shard:05d}-{self.piece:04d}"
        self._write(
            self.out / SHARD_DIR / PIECE_DIR,
            name,
            self.rows[self.saved_rows : rows],
            self.failures[self.saved_failures : failures],
        )
        self.saved_rows, self.saved_failures = rows, failures
        self.piece += 1

    def seal(self) -> None:
        """Write the whole shard, delete its pieces and start the next shard (nothing when it is empty)."""
        if not self.rows and not self.failures:
            return
        name = f"{self.prefix}{self.shard:05d}"
        self._write(self.out / SHARD_DIR, name, self.rows, self.failures)
        for path in sorted((self.out / SHARD_DIR / PIECE_DIR).glob(f"{name}-*.json")):
            record = _read(path, PIECE_RE)
            if record is not None and record.prefix == self.prefix:
                delete_record(record)
        self.rows, self.failures = [], []
        self.saved_rows = self.saved_failures = self.piece = 0
        self.shard += 1


def write_index(out: Path, detector: str) -> dict[str, Any]:
    """Merge shard and piece JSONs into index.json, write report.json + failures.tsv; return the report."""
    shards, pieces = read_records(out)
    records = shards + pieces
    settings = latent_settings(records)
    if len(settings) > 1:
        raise UniIDError(
            f"{out} mixes shards with different latent settings {settings}: prepare into a new --out"
        )
    entries = [
        {"file": r.tensor_file, "latents": bool(r.data.get("latents")), "entries": r.data["entries"]}
        for r in records
        if r.tensor_file
    ]
    failures = [f for r in records for f in r.data["failures"]]
    num = sum(len(s["entries"]) for s in entries)
    index = {
        "version": FORMAT_VERSION,
        "detector": detector,
        "num_samples": num,
        "shards": entries,
        "latent_resolution": next(iter(settings))[1] if settings else None,
    }
    write_json_atomic(out / INDEX_NAME, index)
    words: dict[str, int] = {}
    for shard in entries:
        for entry in shard["entries"]:
            words[entry["class_word"]] = words.get(entry["class_word"], 0) + 1
    report = {"num_samples": num, "num_failed": len(failures), "class_words": words, "failures": failures}
    write_json_atomic(out / "report.json", report)
    lines = ["image\treason"] + [f"{f['image']}\t{f['reason']}" for f in failures]
    (out / "failures.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return report
