"""Time identity encoding at real sizes with random weights: IResNet-100 + both UniID branches (not a test).

Measures one encode (face net + text branch + adapter branch on one face) and the negative adapter tokens
(adapter branch on zero features), as medians over several rounds after warm-up. On a shared machine
``--threads 1`` gives the steadiest CPU figures (busy cores stall multi-threaded small ops).

    python benchmarks/bench_identity.py [--device cpu|cuda] [--dtype fp32|fp16|bf16] [--rounds R]
                                        [--threads T]
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from uniid_core.cli import argument_parser, run_cli  # noqa: E402
from uniid_core.identity import encode_identity  # noqa: E402
from uniid_core.models import UniIDConfig, UniIDModel, iresnet100  # noqa: E402
from uniid_core.precision import DTYPES  # noqa: E402


def random_model(device: str, dtype: torch.dtype) -> UniIDModel:
    """Released-size UniID model with random branch weights (unused to_k_ip/to_v_ip left uninitialised)."""
    with torch.device("meta"):
        model = UniIDModel(UniIDConfig.sdxl(), fingerprint="benchmark")
    model.to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "adapter_modules" in name:
                continue
            scale = param.shape[-1] ** -0.5 if param.dim() >= 2 else 0.1
            mean = 1.0 if param.dim() == 1 and name.endswith("weight") else 0.0
            param.normal_(mean, scale, generator=generator)
    return model.to(dtype).eval().requires_grad_(False)


def timed(fn: Callable[[], object], device: str, rounds: int, warmup: int = 2) -> list[float]:
    """Wall-clock milliseconds of ``rounds`` calls after ``warmup`` calls (device-synchronised)."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1000)
    return times


def main(argv: list[str] | None = None) -> int:
    """Print the timing table."""
    parser = argument_parser("python benchmarks/bench_identity.py", __doc__.split("\n")[0])
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device"
    )
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="compute dtype")
    parser.add_argument("--rounds", type=int, default=7, help="timed runs per row")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, device {args.device}, dtype {args.dtype}, torch threads {threads}")
    torch.manual_seed(0)
    face_net = iresnet100().to(args.device, dtype).eval().requires_grad_(False)
    model = random_model(args.device, dtype)
    faces = torch.rand(1, 3, 112, 112, device=args.device) * 2 - 1

    def negative() -> torch.Tensor:
        model.clear_cache()
        return model.negative_adapter_tokens()

    with torch.no_grad():
        features = face_net(faces.to(dtype))
        rows = {
            "face net (IResNet-100)": timed(lambda: face_net(faces.to(dtype)), args.device, args.rounds),
            "text branch": timed(lambda: model.text_branch(features), args.device, args.rounds),
            "adapter branch": timed(lambda: model.adapter_branch(features), args.device, args.rounds),
            "encode_identity (all of the above)": timed(
                lambda: encode_identity(model, face_net, faces), args.device, args.rounds
            ),
            "negative adapter tokens (uncached)": timed(negative, args.device, args.rounds),
            "encode + negative": timed(
                lambda: (encode_identity(model, face_net, faces), negative()), args.device, args.rounds
            ),
        }
    for name, times in rows.items():
        print(f"{name:<38} median {statistics.median(times):8.1f} ms   min {min(times):8.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
