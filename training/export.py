"""Export a trainer checkpoint as the single-file UniID .safetensors, optionally merged with the other branch.

`python -m training.export --checkpoint OUTPUT_DIR/checkpoints/checkpoint-N --out uniid.safetensors
[--merge OTHER_BRANCH_FILE] [--ema]`
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from training.checkpointing import EMA_FILE, UNIID_FILE, export_uniid, list_checkpoints
from uniid_core.checkpoint import load_uniid
from uniid_core.cli import argument_parser, run_cli
from uniid_core.errors import CheckpointError
from uniid_core.models.uniid import UniIDModel


def checkpoint_model(path: Path, use_ema: bool = False) -> UniIDModel:
    """The trained branch stored in a checkpoint folder (or a UniID file), with EMA weights if asked."""
    if path.is_dir() and not (path / UNIID_FILE).is_file():
        found = list_checkpoints(path / "checkpoints") or list_checkpoints(path)
        if not found:
            raise CheckpointError(f"{path} holds no trainer checkpoint (checkpoint-N/{UNIID_FILE})")
        path = found[-1]
    model = load_uniid(path / UNIID_FILE if path.is_dir() else path)
    if use_ema:
        ema_file = path / EMA_FILE
        if not ema_file.is_file():
            raise CheckpointError(f"{path} has no {EMA_FILE}: the run was trained without use_ema")
        shadow = load_file(str(ema_file))
        branch = model.text_branch if model.text_branch is not None else model.adapter_branch
        with torch.no_grad():
            for i, param in enumerate(branch.parameters()):
                param.copy_(shadow[f"shadow.{i}"])
        model.refresh_fingerprint()
    return model


def main(argv: list[str] | None = None) -> Path:
    """Write the export and print its path."""
    parser = argument_parser("python -m training.export", __doc__.split("\n")[0])
    parser.add_argument(
        "--checkpoint", required=True, help="checkpoint folder, run output folder or UniID file"
    )
    parser.add_argument("--out", required=True, help="output .safetensors")
    parser.add_argument("--merge", default=None, help="UniID file holding the other branch to include")
    parser.add_argument("--ema", action="store_true", help="export the EMA weights of the checkpoint")
    args = parser.parse_args(argv)
    out = export_uniid(checkpoint_model(Path(args.checkpoint), args.ema), Path(args.out), args.merge)
    print(out, file=sys.stderr)
    return out


if __name__ == "__main__":
    sys.exit(run_cli(main))
