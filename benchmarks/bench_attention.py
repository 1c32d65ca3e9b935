"""Time one SDXL attn2 layer at 1024x1024 (CFG batch 2): plain attention vs the UniID processor.

Variants run in interleaved rounds in the same process; the printed ratios (median time / median plain
time) are the figures that mean something, absolute times drift with machine load.

    python benchmarks/bench_attention.py                      # CPU, float32
    python benchmarks/bench_attention.py --device cuda --dtype fp16
"""

from __future__ import annotations

import statistics
import sys
import time
from argparse import Namespace
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from uniid_core.cli import argument_parser, run_cli  # noqa: E402
from uniid_core.diffusers_processor import UniIDAttnProcessor  # noqa: E402
from uniid_core.family import SDXL  # noqa: E402
from uniid_core.models.uniid import RELEASED_ADAPTER_TOKENS  # noqa: E402
from uniid_core.precision import DTYPES  # noqa: E402

CONTEXT_DIM = SDXL.context_dim
TEXT_TOKENS = SDXL.chunk
ADAPTER_TOKENS = RELEASED_ADAPTER_TOKENS
BATCH = 2
HEAD_DIM = 64
LATENT_SIDE = 1024 // 8
SHAPES = sorted(
    {((LATENT_SIDE >> layer.level) ** 2, layer.width) for layer in SDXL.cross_attn_layers}, reverse=True
)
"""(query tokens, width) of every kind of SDXL attn2 layer at 1024x1024: (4096, 640) and (1024, 1280)."""


class HostSyncProcessor(UniIDAttnProcessor):
    """Reference for the official processor's costs: re-projects K/V every call and reads norms to host."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        split = encoder_hidden_states.shape[1] - self.num_tokens
        text, identity = encoder_hidden_states[:, :split], encoder_hidden_states[:, split:]
        query = attn.to_q(hidden_states)
        heads = attn.heads

        def mha(k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            b, lq, c = query.shape
            qh = query.view(b, lq, heads, -1).transpose(1, 2)
            kh = k.view(b, -1, heads, c // heads).transpose(1, 2)
            vh = v.view(b, -1, heads, c // heads).transpose(1, 2)
            out = torch.nn.functional.scaled_dot_product_attention(qh, kh, vh)
            return out.transpose(1, 2).reshape(b, lq, c)

        h = mha(attn.to_k(text), attn.to_v(text))
        ip = mha(self.to_k_ip(identity), self.to_v_ip(identity))
        norm_h = torch.norm(h, dim=(1, 2), keepdim=True)
        norm_ip = torch.norm(ip, dim=(1, 2), keepdim=True)
        if norm_ip.min().cpu().item() < 1e-6:
            norm_ip = norm_ip + 1e-6
        self.last_text_norm = norm_h.norm().cpu().item()
        return attn.to_out[0](h + self.scale * ip * (norm_h / norm_ip))


def _layer(width: int, device: str, dtype: torch.dtype) -> Attention:
    attn = Attention(
        query_dim=width, cross_attention_dim=CONTEXT_DIM, heads=width // HEAD_DIM, dim_head=HEAD_DIM
    )
    return attn.to(device=device, dtype=dtype).eval()


def _ip_linear(width: int, device: str, dtype: torch.dtype) -> nn.Linear:
    linear = nn.Linear(CONTEXT_DIM, width, bias=False).to(device=device, dtype=dtype)
    return linear.requires_grad_(False)


def _timer(device: str) -> Callable[[], float]:
    if device.startswith("cuda"):

        def now() -> float:
            torch.cuda.synchronize()
            return time.perf_counter()

        return now
    return time.perf_counter


def bench_shape(tokens: int, width: int, args: Namespace) -> dict[str, list[float]]:
    """Per-variant lists of per-call seconds over interleaved rounds for one layer shape."""
    device, dtype = args.device, DTYPES[args.dtype]
    gen = torch.Generator(device="cpu").manual_seed(0)
    hidden = torch.randn(BATCH, tokens, width, generator=gen).to(device=device, dtype=dtype)
    text = torch.randn(BATCH, TEXT_TOKENS, CONTEXT_DIM, generator=gen).to(device=device, dtype=dtype)
    ident = torch.randn(BATCH, ADAPTER_TOKENS, CONTEXT_DIM, generator=gen).to(device=device, dtype=dtype)
    full = torch.cat([text, ident], dim=1)
    attn = _layer(width, device, dtype)
    k_ip, v_ip = _ip_linear(width, device, dtype), _ip_linear(width, device, dtype)
    processors = {
        "plain": (AttnProcessor2_0(), text),
        "uniid normalized (cached K/V)": (
            UniIDAttnProcessor(k_ip, v_ip, ADAPTER_TOKENS, 1.0, "normalized"),
            full,
        ),
        "uniid add (cached K/V)": (UniIDAttnProcessor(k_ip, v_ip, ADAPTER_TOKENS, 1.0, "add"), full),
        "reference: uncached + host sync": (HostSyncProcessor(k_ip, v_ip, ADAPTER_TOKENS, 1.0), full),
    }
    now = _timer(device)
    times: dict[str, list[float]] = {name: [] for name in processors}
    with torch.inference_mode():
        for processor, context in processors.values():
            attn.set_processor(processor)
            for _ in range(args.warmup):
                attn(hidden, encoder_hidden_states=context)
        for round_index in range(args.rounds):
            order = list(processors.items())
            if round_index % 2:
                order.reverse()
            for name, (processor, context) in order:
                attn.set_processor(processor)
                start = now()
                for _ in range(args.iters):
                    attn(hidden, encoder_hidden_states=context)
                times[name].append((now() - start) / args.iters)
    return times


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the ratio lines."""
    parser = argument_parser("python benchmarks/bench_attention.py", __doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="compute dtype")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds per variant")
    parser.add_argument("--iters", type=int, default=3, help="layer calls timed per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls before the rounds")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("CUDA is not available here; run without --device cuda", file=sys.stderr)
        return 2
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(
        f"device {args.device} ({where}), dtype {args.dtype}, torch {torch.__version__}, "
        f"torch threads {torch.get_num_threads()}, rounds {args.rounds} x {args.iters} calls, batch {BATCH}, "
        f"context {TEXT_TOKENS} + {ADAPTER_TOKENS} adapter tokens"
    )
    for tokens, width in SHAPES:
        times = bench_shape(tokens, width, args)
        plain = statistics.median(times["plain"])
        print(f"\nattn2 layer: {tokens} query tokens @ width {width} ({width // HEAD_DIM} heads)")
        for name, values in times.items():
            median = statistics.median(values)
            ratios = [v / p for v, p in zip(values, times["plain"], strict=True)]
            print(
                f"  {name:<34} median {median * 1e3:9.3f} ms   ratio vs plain {median / plain:5.3f}x "
                f"(median of per-round ratios {statistics.median(ratios):5.3f}x)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
