"""Memory arithmetic of a training run per GPU: frozen models, trained branch + AdamW, activations per image.

`python -m training.memory --stage adapter --precision bf16 --batch 19 [--resolution 512] [--gpus 8
--zero2] [--ema] [--base SDXL_DIR]` builds the models on the meta device (no
weights are read or allocated; SDXL-base shapes unless --base gives a diffusers folder), counts their
parameters, and counts the tensors autograd keeps for backward in one training forward pass. Activations
are counted, not measured: allocator slack, attention/cuDNN workspaces and the transient buffers of the
backward pass come on top (measure with benchmarks/bench_train.py on the GPU itself).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from training.components import UniIDTrainingModule, build_stage_model
from training.config import TrainConfig
from uniid_core.cli import argument_parser, path_problem, positive_int, require_paths, run_cli
from uniid_core.diffusers_processor import install_uniid_processors
from uniid_core.family import SDXL

GIB = 2**30


@dataclass
class FrozenModels:
    """The frozen models of a run (weightless on the meta device for the arithmetic)."""

    unet: nn.Module
    vae: nn.Module
    text_encoders: tuple[nn.Module, nn.Module]
    face_net: nn.Module


def build_meta_models(base: str | None = None) -> FrozenModels:
    """SDXL-base shapes, or the shapes of a diffusers SDXL folder, on the meta device."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from uniid_core.models.iresnet import iresnet100

    if base:
        unet_config = UNet2DConditionModel.load_config(base, subfolder="unet")
        vae_config = AutoencoderKL.load_config(base, subfolder="vae")
        text_configs = [
            CLIPTextConfig.from_pretrained(base, subfolder=f) for f in ("text_encoder", "text_encoder_2")
        ]
    else:
        unet_config, vae_config = SDXL.unet_config(), SDXL.reference_vae
        text_configs = [CLIPTextConfig(**tower) for tower in SDXL.text_configs()]
    with torch.device("meta"):
        models = FrozenModels(
            unet=UNet2DConditionModel.from_config(unet_config),
            vae=AutoencoderKL.from_config(vae_config),
            text_encoders=(CLIPTextModel(text_configs[0]), CLIPTextModelWithProjection(text_configs[1])),
            face_net=iresnet100(),
        )
    for module in (models.unet, models.vae, *models.text_encoders, models.face_net):
        module.requires_grad_(False).eval()
    return models


def parameter_count(module: nn.Module) -> int:
    """Number of parameters (buffers are negligible here)."""
    return sum(p.numel() for p in module.parameters())


def _storage_key(tensor: Tensor) -> int:
    """Identity of a tensor's storage (views share it; works on the meta device too)."""
    return tensor.untyped_storage()._cdata


def saved_tensor_bytes(forward: Callable[[], Tensor], exclude: list[nn.Module]) -> tuple[int, int, int]:
    """Bytes autograd keeps for backward while `forward()` runs, and of those, what norms and softmax keep.

    Distinct storages are counted once; the weights of `exclude` (saved as views) are left out.
    Returns (all, normalisation inputs, softmax outputs); the last two come from the autograd graph.
    """
    weights = {_storage_key(p) for m in exclude for p in (*m.parameters(), *m.buffers())}
    kept: dict[int, int] = {}

    def pack(tensor: Tensor) -> Tensor:
        key = _storage_key(tensor)
        if key not in weights:
            kept[key] = max(kept.get(key, 0), tensor.untyped_storage().nbytes())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        output = forward()
    norms: dict[int, int] = {}
    softmax: dict[int, int] = {}
    seen, stack = set(), [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(n for n, _ in node.next_functions)
        name = type(node).__name__
        for attr, target in (("_saved_input", norms), ("_saved_result", softmax)):
            wanted = "NormBackward" in name if target is norms else "SoftmaxBackward" in name
            value = getattr(node, attr, None) if wanted else None
            if isinstance(value, Tensor) and _storage_key(value) in kept:
                target[_storage_key(value)] = kept[_storage_key(value)]
    return sum(kept.values()), sum(norms.values()), sum(softmax.values())


def activation_bytes(
    models: FrozenModels,
    stage: str,
    batch: int,
    resolution: int,
    dtype: torch.dtype,
    device: str = "meta",
) -> dict[str, int]:
    """Saved-for-backward bytes of one training forward pass at `batch` (on meta: no memory is used)."""
    cfg = TrainConfig(stage=stage)
    unet = models.unet
    if next(unet.parameters()).dtype != dtype:
        unet.to(dtype)
    with torch.device(device):
        uniid = build_stage_model(cfg, unet, models.text_encoders).to(dtype)
    if stage == "adapter":
        install_uniid_processors(unet, uniid, rescale="add", scale=1.0)
    module = UniIDTrainingModule(uniid, unet, stage)
    module.trainable_branch().requires_grad_(True)
    side = resolution // 8
    meta = dict(device=device, dtype=dtype)
    with torch.no_grad():
        features = models.face_net.to(dtype=dtype)(torch.zeros(batch, 3, 112, 112, **meta))

    def forward() -> Tensor:
        return module(
            torch.zeros(batch, 4, side, side, **meta),
            torch.zeros(batch, dtype=torch.long, device=device),
            torch.zeros(batch, SDXL.chunk, unet.config.cross_attention_dim, **meta),
            torch.zeros(batch, models.text_encoders[1].config.hidden_size, **meta),
            torch.zeros(batch, 6, **meta),
            features,
        )

    total, norms, softmax = saved_tensor_bytes(forward, [unet, models.face_net])
    return {
        "total": total,
        "norm_inputs": norms,
        "softmax": softmax,
        "branch": parameter_count(module.trainable_branch()),
    }


def estimate(
    stage: str = "adapter",
    precision: str = "fp32",
    batch: int = 1,
    resolution: int = 512,
    gpus: int = 1,
    zero2: bool = False,
    ema: bool = False,
    base: str | None = None,
) -> dict[str, Any]:
    """Per-GPU bytes of every term for one configuration (parameters counted, activations at batch 1 and 2).

    Activations assume fused attention (the GPU default: no attention matrix kept) and, in bf16/fp16,
    autocast's float32 normalisation inputs; both are corrected from the meta-device count.
    """
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be fp32, bf16 or fp16, got {precision!r}")
    models = build_meta_models(base)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    weight = torch.finfo(dtype).bits // 8
    counts = {
        "unet": parameter_count(models.unet),
        "vae": parameter_count(models.vae),
        "text_encoders": sum(parameter_count(e) for e in models.text_encoders),
        "face_net": parameter_count(models.face_net),
    }
    adjusted, branch = [], 0
    for size in (1, 2):
        saved = activation_bytes(models, stage, size, resolution, dtype)
        norms = saved["norm_inputs"] if dtype != torch.float32 else 0
        adjusted.append(saved["total"] - saved["softmax"] + norms)
        branch = saved["branch"]
    per_image = adjusted[1] - adjusted[0]
    fixed_activations = adjusted[0] - per_image
    shards = gpus if zero2 else 1
    vae_bytes = 4 if precision == "fp16" and models.vae.config.force_upcast else weight
    rows = {
        "unet": (counts["unet"], counts["unet"] * weight),
        "vae": (counts["vae"], counts["vae"] * vae_bytes),
        "text_encoders": (counts["text_encoders"], counts["text_encoders"] * weight),
        "face_net": (counts["face_net"], counts["face_net"] * weight),
        "branch_weights": (branch, branch * 4),
        "branch_gradients": (branch, branch * 4 // shards),
        "adamw_moments": (branch, branch * 8 // shards),
        "ema": (branch, branch * 4 if ema else 0),
        "fixed_activations": (None, fixed_activations),
        "activations": (batch, per_image * batch),
    }
    return {
        "config": dict(
            stage=stage,
            precision=precision,
            batch=batch,
            resolution=resolution,
            gpus=gpus,
            zero2=zero2,
            ema=ema,
        ),
        "rows": rows,
        "activations_per_image": per_image,
        "fixed": sum(b for k, (_, b) in rows.items() if k != "activations"),
        "total": sum(b for _, b in rows.values()),
    }


LABELS = {
    "unet": "UNet (frozen)",
    "vae": "VAE (frozen; cached latents make it validation-only)",
    "text_encoders": "text encoders (frozen)",
    "face_net": "face net IResNet-100 (frozen)",
    "branch_weights": "trained branch weights (fp32)",
    "branch_gradients": "trained branch gradients (fp32)",
    "adamw_moments": "AdamW moments (2 x fp32)",
    "ema": "EMA copy (fp32)",
    "fixed_activations": "activations, batch-independent (joined k/v weights)",
    "activations": "activations (saved for backward)",
}


def format_table(result: dict[str, Any]) -> str:
    """Readable table of an estimate."""
    cfg = result["config"]
    zero = f", ZeRO-2 over {cfg['gpus']} GPUs" if cfg["zero2"] else ""
    lines = [
        f"{cfg['stage']} stage, {cfg['precision']}, {cfg['resolution']}x{cfg['resolution']}, "
        f"batch {cfg['batch']} per GPU{zero}",
    ]
    for key, (count, size) in result["rows"].items():
        what = (
            ""
            if count is None
            else f"{count} images"
            if key == "activations"
            else f"{count / 1e6:.1f} M params"
        )
        lines.append(f"  {LABELS[key]:<55} {what:>16} {size / GIB:9.2f} GiB")
    lines.append(f"  {'fixed (all but per-image activations)':<72} {result['fixed'] / GIB:9.2f} GiB")
    lines.append(f"  {'activations per image':<72} {result['activations_per_image'] / GIB:9.2f} GiB")
    lines.append(f"  {'total per GPU':<72} {result['total'] / GIB:9.2f} GiB")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Print the memory table of one configuration; returns the estimate."""
    parser = argument_parser("python -m training.memory", __doc__.split("\n")[0])
    parser.add_argument("--stage", choices=("text", "adapter"), default="adapter")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    parser.add_argument(
        "--batch", type=positive_int, default=None, help="per GPU (default: official 23 text / 19 adapter)"
    )
    parser.add_argument("--resolution", type=positive_int, default=512)
    parser.add_argument("--gpus", type=positive_int, default=1, help="GPUs in the run (matters with --zero2)")
    parser.add_argument(
        "--zero2", action="store_true", help="DeepSpeed ZeRO-2: gradients + AdamW split over GPUs"
    )
    parser.add_argument("--ema", action="store_true", help="use_ema: one more fp32 copy of the branch")
    parser.add_argument(
        "--base", default=None, help="diffusers SDXL folder whose shapes to use (default SDXL base)"
    )
    args = parser.parse_args(argv)
    if args.base:
        require_paths(
            path_problem("--base", args.base, "folder", "unet/config.json", "a diffusers SDXL folder")
        )
    batch = args.batch if args.batch is not None else TrainConfig(stage=args.stage).train_batch_size
    result = estimate(
        args.stage,
        args.precision,
        batch,
        args.resolution,
        args.gpus,
        args.zero2,
        args.ema,
        args.base,
    )
    print(format_table(result))
    return result


if __name__ == "__main__":
    sys.exit(run_cli(main))
