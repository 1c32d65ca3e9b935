"""CLIP score on a tiny random transformers CLIP: our preprocessing and score equal transformers' own."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from uniid_core.clip_score import ClipScorer
from uniid_core.errors import UniIDError

PROMPTS = ["a photo of a woman in a space suit", "a red car", "a watercolor portrait of an astronaut"]


def _images(eileen: np.ndarray) -> list[np.ndarray]:
    wide = np.ascontiguousarray(np.concatenate([eileen, eileen[:, ::-1]], axis=1))
    noise = np.random.default_rng(0).integers(0, 256, (40, 64, 3), dtype=np.uint8)
    return [eileen, wide, noise]


def test_preprocessing_matches_the_transformers_image_processor(tiny_clip: Path, eileen) -> None:
    import transformers

    processor_class = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    processor = processor_class.from_pretrained(str(tiny_clip))
    scorer = ClipScorer(tiny_clip)
    for image in _images(eileen):
        ours = scorer.preprocess(image)
        theirs = processor(images=image, return_tensors="pt")["pixel_values"][0]
        assert ours.shape == theirs.shape == (3, 32, 32)
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_clip_score_is_100_times_clipped_cosine_of_the_model_embeddings(tiny_clip: Path, eileen) -> None:
    from transformers import CLIPModel, CLIPTokenizer

    scorer = ClipScorer(tiny_clip, batch_size=2)
    pixels = torch.stack([scorer.preprocess(image) for image in _images(eileen)])
    scores = scorer.score(pixels, PROMPTS)
    model = CLIPModel.from_pretrained(str(tiny_clip)).eval()
    tokens = CLIPTokenizer.from_pretrained(str(tiny_clip))(PROMPTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(
            input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], pixel_values=pixels
        )
    cosine = (out.image_embeds * out.text_embeds).sum(-1)
    assert scores == pytest.approx((100 * cosine.clamp(min=0)).tolist(), abs=1e-4)
    assert (cosine < 0).any() and (cosine > 0).any()  # the clipping at 0 is exercised
    assert all(0.0 <= s <= 100.0 for s in scores)
    long_prompt = " ".join(["astronaut"] * 200)
    assert len(scorer.score(pixels[:1], [long_prompt])) == 1
    with pytest.raises(UniIDError, match="3 images but 2 prompts"):
        scorer.score(pixels, PROMPTS[:2])


def test_not_a_clip_folder(tmp_path: Path) -> None:
    with pytest.raises(UniIDError, match="not a transformers CLIP folder"):
        ClipScorer(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UniIDError, match="could not load the CLIP model"):
        ClipScorer(tmp_path)
