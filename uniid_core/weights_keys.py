"""What a state dict is, told from its tensor names: UniID branches, the face net, or another kind.

Multi-GPU and compile wrappers (``module.``, ``_orig_mod.``) are looked through, and a branch saved on
its own (bare keys) gets its ``text_branch.``/``adapter_branch.`` prefix.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from torch import Tensor

TEXT_PREFIX = "text_branch."
ADAPTER_PREFIX = "adapter_branch."
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_TEXT_BARE = ("proj_1.", "proj_2.", "norm_1.", "norm_2.", "text_resampler_1.", "text_resampler_2.")
_ADAPTER_BARE = ("latents", "adapter_resampler.", "adapter_modules.")
_FACE_NET_KEYS = ("conv1.weight", "layer1.0.conv1.weight", "fc.weight", "features.running_var")

_OWN_WEIGHTS = "UniID needs its own text_branch/adapter_branch weights (the official UniID release)"
# (key prefixes, what the file is, what to do instead)
_FOREIGN_KINDS = (
    (("image_proj.", "ip_adapter."), "an IP-Adapter / InstantID checkpoint", _OWN_WEIGHTS),
    (("id_adapter.", "id_adapter_attn_layers.", "pulid_"), "a PuLID checkpoint", _OWN_WEIGHTS),
    (("id_encoder.",), "a PhotoMaker checkpoint", _OWN_WEIGHTS),
    (
        ("model.diffusion_model.", "conditioner.", "down_blocks.", "first_stage_model."),
        "a Stable Diffusion model checkpoint",
        "load it as the base model, and give UniID its own weights",
    ),
    (("lora_unet_", "lora_te"), "a LoRA", "load it with a LoRA loader, not as UniID weights"),
)


def strip_wrappers(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Remove multi-GPU/compile prefixes (``module.``, ``_orig_mod.``) and a shared ``state_dict.`` level."""
    out = {}
    for key, value in tensors.items():
        while key.startswith(_WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        out[key] = value
    for level in ("state_dict.", "model_state_dict."):
        if out and all(k.startswith(level) for k in out):
            out = {k[len(level) :]: v for k, v in out.items()}
    return out


def foreign_kind(keys: Iterable[str]) -> tuple[str, str] | None:
    """(what the file is, what to do) when the keys belong to another known kind of checkpoint."""
    keys = list(keys)
    for prefixes, kind, hint in _FOREIGN_KINDS:
        if any(k.startswith(prefixes) for k in keys):
            return kind, hint
    return None


def is_face_net_keys(keys: Iterable[str]) -> bool:
    """Whether the keys are those of an insightface IResNet backbone."""
    return set(_FACE_NET_KEYS) <= set(keys)


def is_uniid_keys(keys: Iterable[str]) -> bool:
    """Whether any key belongs to a UniID branch (prefixed, or bare as a branch saved alone)."""
    return any(k.startswith((TEXT_PREFIX, ADAPTER_PREFIX, *_TEXT_BARE, *_ADAPTER_BARE)) for k in keys)


def add_branch_prefixes(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Give bare branch keys (a branch saved on its own) their ``text_branch.``/``adapter_branch.`` prefix."""
    out = {}
    for key, value in tensors.items():
        if key.startswith(_TEXT_BARE):
            key = TEXT_PREFIX + key
        elif key.startswith(_ADAPTER_BARE):
            key = ADAPTER_PREFIX + key
        out[key] = value
    return out
