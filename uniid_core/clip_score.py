"""CLIP text-image score of generated images: 100 * max(cosine(CLIP image embedding, CLIP text embedding), 0).

The model is a transformers CLIP folder (e.g. openai/clip-vit-large-patch14) loaded from disk only; nothing
is downloaded. Images are prepared as the folder's preprocessor_config.json says (resize the shorter side,
bicubic; centre crop; scale to [0, 1]; normalise), here with PIL and numpy so no torchvision is needed.
Prompts longer than the text encoder's window (77 tokens) are truncated, as CLIP itself does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import UniIDError

CLIP_SCORE_DEFINITION = (
    "100 * max(cosine(CLIP image embedding, CLIP text embedding of the image's prompt), 0), both projected "
    "embeddings of the given CLIP model"
)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
"""Pixel statistics of OpenAI CLIP (from its released preprocessing), used when the folder gives none."""
DEFAULT_BATCH = 16


def _side(value: Any, fallback: int) -> tuple[int, int] | int:
    """A preprocessor size entry: an int (shorter side), a {"shortest_edge"} or a {"height", "width"}."""
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        if "shortest_edge" in value:
            return int(value["shortest_edge"])
        if "height" in value and "width" in value:
            return int(value["height"]), int(value["width"])
    return fallback


class ClipScorer:
    """A local transformers CLIP model that scores (image, prompt) pairs."""

    def __init__(
        self, folder: str | Path, device: str | torch.device = "cpu", batch_size: int = DEFAULT_BATCH
    ):
        self.folder = Path(folder).expanduser()
        if not (self.folder / "config.json").is_file():
            raise UniIDError(
                f"{self.folder} is not a transformers CLIP folder (no config.json); give a local copy of a "
                "CLIP model such as openai/clip-vit-large-patch14 (nothing is downloaded)"
            )
        from transformers import CLIPModel, CLIPTokenizer

        try:
            self.model = CLIPModel.from_pretrained(str(self.folder), local_files_only=True)
            self.tokenizer = CLIPTokenizer.from_pretrained(str(self.folder), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise UniIDError(
                f"could not load the CLIP model in {self.folder}: {' '.join(str(exc).split())}"
            ) from exc
        self.device = torch.device(device)
        self.model = self.model.to(self.device).eval().requires_grad_(False)
        self.batch_size = max(1, int(batch_size))
        self.name = self.folder.name
        self._read_preprocessing()

    def _read_preprocessing(self) -> None:
        """Resize, crop and normalisation from preprocessor_config.json (CLIP's defaults if absent)."""
        image_size = int(self.model.config.vision_config.image_size)
        path = self.folder / "preprocessor_config.json"
        settings = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        self.resize = _side(settings.get("size"), image_size) if settings.get("do_resize", True) else None
        crop = settings.get("crop_size", image_size) if settings.get("do_center_crop", True) else None
        self.crop = None if crop is None else _side(crop, image_size)
        if isinstance(self.crop, int):
            self.crop = (self.crop, self.crop)
        self.mean = np.asarray(settings.get("image_mean", OPENAI_CLIP_MEAN), np.float32)
        self.std = np.asarray(settings.get("image_std", OPENAI_CLIP_STD), np.float32)
        self.normalize = bool(settings.get("do_normalize", True))

    def preprocess(self, image_rgb: np.ndarray) -> torch.Tensor:
        """One RGB uint8 image -> the model's (3, S, S) float input."""
        from PIL import Image

        picture = Image.fromarray(image_rgb)
        if isinstance(self.resize, int):
            width, height = picture.size
            short, long = (width, height) if width <= height else (height, width)
            new_long = int(self.resize * long / short)
            size = (self.resize, new_long) if width <= height else (new_long, self.resize)
            picture = picture.resize(size, Image.Resampling.BICUBIC)
        elif self.resize is not None:
            picture = picture.resize((self.resize[1], self.resize[0]), Image.Resampling.BICUBIC)
        if self.crop is not None:
            crop_h, crop_w = self.crop
            left, top = (picture.width - crop_w) // 2, (picture.height - crop_h) // 2
            picture = picture.crop((left, top, left + crop_w, top + crop_h))
        pixels = np.asarray(picture, dtype=np.float32) / 255.0
        if self.normalize:
            pixels = (pixels - self.mean) / self.std
        return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))

    def score(self, pixels: torch.Tensor, prompts: list[str]) -> list[float]:
        """CLIP scores of preprocessed images (B, 3, S, S) against their prompts, one per pair."""
        if pixels.shape[0] != len(prompts):
            raise UniIDError(f"{pixels.shape[0]} images but {len(prompts)} prompts to score them against")
        window = int(self.model.config.text_config.max_position_embeddings)
        scores: list[float] = []
        with torch.no_grad():
            for start in range(0, len(prompts), self.batch_size):
                batch = pixels[start : start + self.batch_size].to(self.device)
                tokens = self.tokenizer(
                    prompts[start : start + self.batch_size],
                    padding=True,
                    truncation=True,
                    max_length=window,
                    return_tensors="pt",
                ).to(self.device)
                vision = self.model.vision_model(pixel_values=batch.to(self.model.dtype)).pooler_output
                text = self.model.text_model(
                    input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
                ).pooler_output
                image_embeds = torch.nn.functional.normalize(
                    self.model.visual_projection(vision).float(), dim=-1
                )
                text_embeds = torch.nn.functional.normalize(self.model.text_projection(text).float(), dim=-1)
                cosine = (image_embeds * text_embeds).sum(dim=-1)
                scores.extend((100.0 * cosine.clamp(min=0.0)).cpu().tolist())
        return scores
