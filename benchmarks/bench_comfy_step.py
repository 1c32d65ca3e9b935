"""Whole sampling step through ComfyUI: plain SDXL vs the same model patched by UniID Apply (a ratio).

All variants sample the same latent with the same sampler in interleaved rounds in one process; the
printed ratios (median patched / median plain time per step) are what mean something, absolute times
drift with machine load. CPU: SDXL layout with model_channels 64 at 256x256. GPU: full SDXL at 1024x1024
in fp16 (random weights, real shapes). ``--compile BACKEND`` adds both models compiled through ComfyUI's
compile helper (what TorchCompileModel uses) and reports compiled UniID / compiled plain next to the
eager ratio. ``--per-block SPEC`` adds the same identity applied with a UniID Rescaler Per Block of
that layer spec (e.g. "input:1, middle:0.5, output:1.2") and reports it against plain and against
the plain ``--rescale`` run.

    COMFYUI_PATH=/path/to/ComfyUI python benchmarks/bench_comfy_step.py [--compile inductor]
    COMFYUI_PATH=... python benchmarks/bench_comfy_step.py --per-block "input:1, middle:0.5, output:1.2"
    COMFYUI_PATH=... python benchmarks/bench_comfy_step.py --device cuda --size 1024 --compile cudagraphs
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from uniid_core.cli import argument_parser, run_cli  # noqa: E402


def _comfyui_problem(path: str | None) -> str | None:
    """Why ``path`` is not a usable ComfyUI folder (None when it is)."""
    if not path:
        return "give --comfyui PATH or set COMFYUI_PATH to a ComfyUI 0.3.64+ folder"
    if not (Path(path) / "comfy").is_dir() or not (Path(path) / "nodes.py").is_file():
        return f"{path} is not a ComfyUI folder (no comfy/ and nodes.py there)"
    return None


def _comfy(path: str, device: str):
    """Import ComfyUI in-process and load the UniID pack through ComfyUI's custom-node loader."""
    sys.path.insert(0, path)
    import comfy.cli_args

    comfy.cli_args.args.cpu = device == "cpu"
    comfy.cli_args.args.use_pytorch_cross_attention = True  # SDPA, as ComfyUI uses on GPUs (no graph breaks)
    import comfy.utils
    import utils.extra_config  # noqa: F401  (ComfyUI's utils package before `nodes`)

    import nodes

    comfy.utils.set_progress_bar_enabled(False)
    link = Path(tempfile.mkdtemp()) / "comfyui-uniid"
    link.symlink_to(REPO, target_is_directory=True)
    if not asyncio.run(nodes.load_custom_node(str(link))):
        raise SystemExit("ComfyUI could not load the UniID pack")
    return nodes, sys.modules[str(link).replace(".", "_x_") + ".nodes"]


def _unet_config(full: bool, dtype) -> dict:
    return {
        "use_checkpoint": False,
        "image_size": 32,
        "out_channels": 4,
        "use_spatial_transformer": True,
        "legacy": False,
        "num_classes": "sequential",
        "adm_in_channels": 2816,
        "dtype": dtype,
        "in_channels": 4,
        "model_channels": 320 if full else 64,
        "num_res_blocks": [2, 2, 2],
        "transformer_depth": [0, 0, 2, 2, 10, 10],
        "channel_mult": [1, 2, 4],
        "transformer_depth_middle": 10,
        "use_linear_in_transformer": True,
        "context_dim": 2048,
        "num_head_channels": 64,
        "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
        "use_temporal_attention": False,
        "use_temporal_resblock": False,
    }


def _init(module, seed: int) -> None:
    import torch

    gen = torch.Generator(device=next(module.parameters()).device).manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.ndim >= 2:
                param.normal_(0.0, param[0].numel() ** -0.5, generator=gen)
            else:
                param.normal_(1.0 if name.endswith("weight") else 0.0, 0.02, generator=gen)


def main(argv: list[str] | None = None) -> int:
    """Time both variants in interleaved rounds and print the ratio (skipped without ComfyUI)."""
    parser = argument_parser("python benchmarks/bench_comfy_step.py", __doc__.splitlines()[0])
    parser.add_argument(
        "--comfyui", default=os.environ.get("COMFYUI_PATH"), help="ComfyUI folder (default: $COMFYUI_PATH)"
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to run")
    parser.add_argument(
        "--size", type=int, default=0, help="image side in pixels (0: 256 on CPU, 1024 on GPU)"
    )
    parser.add_argument("--steps", type=int, default=4, help="sampling steps per timed run")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds per variant")
    parser.add_argument("--rescale", default="normalized", help="UniID rescale mode (normalized or add)")
    parser.add_argument(
        "--compile", default="none", help="also time both models under torch.compile with this backend"
    )
    parser.add_argument(
        "--per-block",
        default="",
        help="also time UniID with a UniID Rescaler Per Block of this layer spec (on top of --rescale)",
    )
    args = parser.parse_args(argv)
    problem = _comfyui_problem(args.comfyui)
    if problem:
        print(f"skipped: this benchmark runs inside ComfyUI; {problem}")
        return 0
    import torch

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    full = device == "cuda"
    size = args.size or (1024 if full else 256)
    nodes, pack = _comfy(args.comfyui, device)
    import comfy.ldm.modules.attention as comfy_attention
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models

    from uniid_core.identity import Identity
    from uniid_core.models.uniid import UniIDConfig, UniIDModel

    dtype = torch.float16 if full else torch.float32
    config = comfy.supported_models.SDXL(_unet_config(full, dtype))
    config.set_inference_dtype(dtype, None)
    load_device = mm.get_torch_device()
    base = config.get_model({}, device=load_device)
    _init(base.diffusion_model, 0)
    model = comfy.model_patcher.ModelPatcher(
        base, load_device=load_device, offload_device=mm.unet_offload_device()
    )
    layers = pack.base_model.cross_attn_layers(model)
    uniid_config = UniIDConfig(
        num_text_tokens=None,
        num_adapter_tokens=25,
        adapter_hidden_dim=768,
        layer_widths={layer.index: layer.width for layer in layers},
        adapter_depth=1,
    )
    with torch.no_grad():
        uniid = UniIDModel(uniid_config).eval()
    weights = pack.sockets.UniIDWeights(model=uniid, source="random", dtype_choice="auto")
    gen = torch.Generator().manual_seed(1)
    identity = Identity(
        text_tokens=torch.randn(1, 3, 2048, generator=gen),
        text_tokens_rescaled=torch.randn(1, 3, 2048, generator=gen) * 0.5,
        adapter_tokens=torch.randn(1, 25, 2048, generator=gen),
        model_fingerprint=uniid.fingerprint,
    )
    positive = [
        [torch.randn(1, 77, 2048, generator=gen), {"pooled_output": torch.randn(1, 1280, generator=gen)}]
    ]
    negative = [
        [torch.randn(1, 77, 2048, generator=gen), {"pooled_output": torch.randn(1, 1280, generator=gen)}]
    ]
    schedule = (2, 0.5, 1.8, 0.8, 1.2, args.rescale, 0.0, 1.0)
    patched, patched_positive = pack.apply.UniIDApply.execute(model, positive, weights, identity, *schedule)
    latent = {"samples": torch.zeros(1, 4, size // 8, size // 8)}
    variants = {"plain": (model, positive), "uniid": (patched, patched_positive)}
    if args.per_block:
        (base,) = pack.rescaler.UniIDRescaler.execute(args.rescale, "")
        (rescaler,) = pack.rescaler.UniIDRescalerPerBlock.execute(1.0, 1.0, 1.0, args.per_block, base)
        variants["uniid_per_block"] = pack.apply.UniIDApply.execute(
            model, positive, weights, identity, *schedule, rescaler=rescaler
        )
    if args.compile != "none":
        from comfy_api.torch_helpers import set_torch_compile_wrapper

        for name in list(variants):
            compiled = variants[name][0].clone()
            set_torch_compile_wrapper(compiled, backend=args.compile)
            variants[f"{name}_compiled"] = (compiled, variants[name][1])

    def run(name: str) -> float:
        unet, cond = variants[name]
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.inference_mode():
            nodes.common_ksampler(unet, 0, args.steps, 5.0, "euler", "normal", cond, negative, latent)
        if device == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / args.steps

    for name in variants:
        start = time.perf_counter()
        run(name)
        print(f"warm-up {name}: {time.perf_counter() - start:.1f} s")
    times = {name: [] for name in variants}
    for round_index in range(args.rounds):
        order = list(variants) if round_index % 2 == 0 else list(reversed(variants))
        for name in order:
            times[name].append(run(name))
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(
        f"device {device} ({torch.cuda.get_device_name() if full else 'cpu'}), threads "
        f"{torch.get_num_threads()}, {dtype}, {size}x{size}, batch 2 (CFG), {len(layers)} attn2 layers, "
        f"{args.steps} euler steps x {args.rounds} interleaved rounds, rescale {args.rescale}, "
        f"per-block {args.per_block or 'off'}, compile {args.compile}, "
        f"attention {comfy_attention.optimized_attention.__name__}"
    )
    for name, median in medians.items():
        every = [round(t * 1000, 1) for t in times[name]]
        print(f"{name:15s} median {median * 1000:.1f} ms/step (all: {every})")
    eager = medians["uniid"] / medians["plain"]
    print(f"ratio eager uniid/plain: {eager:.3f}")
    for suffix, label in (("", "eager"), ("_compiled", "compiled")):
        if f"uniid_per_block{suffix}" in medians:
            per_block = medians[f"uniid_per_block{suffix}"]
            print(
                f"ratio {label} per-block/plain: {per_block / medians[f'plain{suffix}']:.3f}, "
                f"per-block/uniid: {per_block / medians[f'uniid{suffix}']:.3f}"
            )
    if args.compile != "none":
        compiled = medians["uniid_compiled"] / medians["plain_compiled"]
        print(f"ratio compiled uniid/plain: {compiled:.3f} ({compiled - eager:+.3f} vs eager)")
        print(
            f"compile speed-up: plain {medians['plain'] / medians['plain_compiled']:.2f}x, "
            f"uniid {medians['uniid'] / medians['uniid_compiled']:.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
