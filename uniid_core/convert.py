"""Convert the official two-folder UniID release into the project's single ``.safetensors`` file.

Usage: ``python -m uniid_core.convert --text DIR --adapter DIR --out FILE.safetensors [--dtype fp16]``.
Nothing is written unless loading, validation and writing all succeed.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .checkpoint import load_official, save_uniid
from .cli import argument_parser, run_cli
from .errors import UniIDError
from .models.uniid import UniIDModel
from .precision import DTYPES


def summary(model: UniIDModel, path: Path, dtype_name: str) -> str:
    """Human-readable description of a converted model."""
    c = model.config
    lines = [f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, {dtype_name})"]
    if model.text_branch is not None:
        lines.append(
            f"  text branch:    N={c.num_text_tokens} tokens, widths {list(c.text_widths)}, "
            f"depth {c.text_depth}"
        )
    if model.adapter_branch is not None:
        widths = sorted(set(c.layer_widths.values()))
        lines.append(
            f"  adapter branch: M={c.num_adapter_tokens} tokens, hidden {c.adapter_hidden_dim}, "
            f"depth {c.adapter_depth}, {len(c.layer_widths)} attn2 layers (widths {widths}), "
            f"context {c.context_dim}"
        )
    params = sum(p.numel() for p in model.parameters())
    lines.append(f"  {params / 1e6:.1f}M parameters, family {c.family}, fingerprint {model.fingerprint}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the process exit status."""
    parser = argument_parser("python -m uniid_core.convert", __doc__.split("\n")[0])
    parser.add_argument("--text", help="official text-branch folder or its pytorch_model.bin")
    parser.add_argument("--adapter", help="official adapter-branch folder or its pytorch_model.bin")
    parser.add_argument("--out", required=True, help="output .safetensors file")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="stored dtype")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.text is None and args.adapter is None:
        parser.error("give --text, --adapter or both")
    if out.suffix != ".safetensors":
        parser.error(f"--out must end in .safetensors (got {out.name})")
    if out.exists() and not args.overwrite:
        print(f"error: {out} exists; pass --overwrite to replace it", file=sys.stderr)
        return 1
    try:
        model = load_official(args.text, args.adapter)
        save_uniid(model, out, DTYPES[args.dtype])
    except (UniIDError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(summary(model, out, args.dtype))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
