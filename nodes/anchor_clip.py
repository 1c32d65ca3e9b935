"""Text-token norm anchor from ComfyUI's own SDXL CLIP (clip_l + clip_g), computed once and cached."""

from __future__ import annotations

import comfy.model_management
import torch

from uniid_core.anchor import AnchorCache, TextAnchor, load_names, text_encoder_fingerprint
from uniid_core.errors import ModelFamilyError

_CACHE = AnchorCache()


class ComfyClipTower:
    """AnchorTower over one ComfyUI SDClipModel (its transformer, special tokens) and its tokenizer."""

    def __init__(self, clip_model: object, tokenizer: object) -> None:
        self.clip_model = clip_model
        self.tokenizer = tokenizer
        self.text_model = clip_model.transformer.text_model
        weight = self.text_model.embeddings.token_embedding.weight
        self.token_embedding = weight.detach().to(torch.float32)
        special = clip_model.special_tokens
        self.bos_id = int(special["start"])
        self.eos_id = int(special["end"])
        self.pad_id = int(special.get("pad", special["end"]))

    def tokenize(self, name: str) -> list[int]:
        """Ids of ``name`` without BOS/EOS/padding, from ComfyUI's tokenizer for this tower."""
        ids = self.tokenizer.tokenizer(name)["input_ids"]
        return [int(i) for i in ids if int(i) not in (self.bos_id, self.eos_id)]

    def penultimate(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """Penultimate hidden states (no final LayerNorm) with position embeddings and the causal mask."""
        _, hidden, _ = self.text_model(
            None,
            embeds=inputs_embeds.to(torch.float32),
            num_tokens=[inputs_embeds.shape[1]],
            intermediate_output=-2,
            final_layer_norm_intermediate=False,
            dtype=torch.float32,
        )
        return hidden


def sdxl_towers(clip: object) -> list[ComfyClipTower]:
    """The CLIP-L and OpenCLIP-G towers of a ComfyUI SDXL CLIP, loaded to their device."""
    model = getattr(clip, "cond_stage_model", None)
    tokenizer = getattr(clip, "tokenizer", None)
    if not all(hasattr(obj, name) for obj in (model, tokenizer) for name in ("clip_l", "clip_g")):
        raise ModelFamilyError(
            f"the CLIP input is {type(model).__name__}, not SDXL's CLIP-L + OpenCLIP-G; connect the CLIP "
            "output of the SDXL checkpoint loader (it is needed for the text-token norm anchor)"
        )
    comfy.model_management.load_model_gpu(clip.patcher)
    return [ComfyClipTower(model.clip_l, tokenizer.clip_l), ComfyClipTower(model.clip_g, tokenizer.clip_g)]


def anchor_for_clip(clip: object, num_tokens: int, names: list[str] | None = None) -> TextAnchor:
    """The celebrity-name anchor of this CLIP's text encoders, memoised per weights fingerprint."""
    towers = sdxl_towers(clip)
    fingerprint = text_encoder_fingerprint([tower.text_model for tower in towers])
    with torch.no_grad():
        return _CACHE.get(towers, names or load_names(), num_tokens, fingerprint=fingerprint)
