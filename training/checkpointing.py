"""Atomic accelerate checkpoints with keep-last-K, trainer position, EMA weights, and branch export."""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from uniid_core.checkpoint import load_uniid, save_uniid
from uniid_core.errors import CheckpointError
from uniid_core.models.uniid import UniIDConfig, UniIDModel

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
UNIID_FILE = "uniid.safetensors"
EMA_FILE = "ema.safetensors"
STATE_FILE = "trainer_state.json"


@dataclass
class TrainerState:
    """Where training stands: optimizer updates done, micro-batches done, and the data position."""

    global_step: int = 0
    micro_step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0


def list_checkpoints(root: Path) -> list[Path]:
    """Completed checkpoints (checkpoint-<step>, never the .tmp folders), oldest first."""
    if not root.is_dir():
        return []
    found = [
        (int(m.group(1)), p) for p in root.iterdir() if (m := CHECKPOINT_RE.match(p.name)) and p.is_dir()
    ]
    return [p for _, p in sorted(found)]


def resolve_resume(root: Path, value: str | None) -> Path | None:
    """'latest' -> newest completed checkpoint (None when there is none yet); a path -> that folder."""
    if not value:
        return None
    if value == "latest":
        found = list_checkpoints(root)
        return found[-1] if found else None
    path = Path(value)
    if not (path / STATE_FILE).is_file():
        raise CheckpointError(
            f"{path} is not a completed trainer checkpoint (no {STATE_FILE}); use --resume latest"
        )
    return path


def prune(root: Path, keep: int | None) -> None:
    """Delete the oldest checkpoints so that at most `keep` remain."""
    if not keep or keep < 1:
        return
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(
    accelerator: Any, root: Path, state: TrainerState, config: dict[str, Any], keep: int | None
) -> Path:
    """accelerate.save_state into a temporary folder, then rename it to checkpoint-<step> (all processes)."""
    final = root / f"checkpoint-{state.global_step}"
    tmp = root / f".tmp-checkpoint-{state.global_step}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / "train_config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
        (tmp / STATE_FILE).write_text(json.dumps(asdict(state)), encoding="utf-8")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        prune(root, keep)
    accelerator.wait_for_everyone()
    return final


def read_trainer_state(path: Path) -> TrainerState:
    """The data position stored with a checkpoint."""
    return TrainerState(**json.loads((path / STATE_FILE).read_text(encoding="utf-8")))


def save_ema(ema: Any, path: Path) -> None:
    """EMA shadow weights as safetensors + its counters as metadata."""
    tensors = {f"shadow.{i}": p.detach().contiguous().cpu() for i, p in enumerate(ema.shadow_params)}
    meta = {"optimization_step": str(ema.optimization_step), "decay": str(ema.decay)}
    save_file(tensors, str(path), metadata=meta)


def load_ema(ema: Any, path: Path) -> None:
    """Inverse of save_ema."""
    from safetensors import safe_open

    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    for i, param in enumerate(ema.shadow_params):
        param.data.copy_(tensors[f"shadow.{i}"].to(param.device, param.dtype))
    ema.optimization_step = int(meta["optimization_step"])


def load_branch_weights(model: UniIDModel, path: Path) -> None:
    """Copy the branches present in a saved UniID file into `model` (strict per branch)."""
    saved = load_uniid(str(path))
    for name in ("text_branch", "adapter_branch"):
        mine, theirs = getattr(model, name), getattr(saved, name)
        if mine is not None:
            if theirs is None:
                raise CheckpointError(f"{path} lacks the {name} this run trains")
            mine.load_state_dict(theirs.state_dict())


def merge_branches(trained: UniIDModel, other: UniIDModel | None) -> UniIDModel:
    """One model holding the trained branch plus the other file's other branch (the trained one wins)."""
    if other is None:
        trained.refresh_fingerprint()
        return trained
    text = trained.text_branch if trained.text_branch is not None else other.text_branch
    adapter = trained.adapter_branch if trained.adapter_branch is not None else other.adapter_branch
    text_cfg = trained.config if trained.text_branch is not None else other.config
    adapter_cfg = trained.config if trained.adapter_branch is not None else other.config
    if text is not None and adapter is not None and sum(text_cfg.text_widths) != adapter_cfg.context_dim:
        raise CheckpointError(
            f"cannot merge: text branch is for context width {sum(text_cfg.text_widths)}, adapter for "
            f"{adapter_cfg.context_dim} (different base models)"
        )
    config = UniIDConfig(
        num_text_tokens=text_cfg.num_text_tokens if text is not None else None,
        num_adapter_tokens=adapter_cfg.num_adapter_tokens if adapter is not None else None,
        adapter_hidden_dim=adapter_cfg.adapter_hidden_dim if adapter is not None else None,
        text_widths=text_cfg.text_widths,
        context_dim=adapter_cfg.context_dim if adapter is not None else text_cfg.context_dim,
        layer_widths=adapter_cfg.layer_widths if adapter is not None else {},
        family=trained.config.family,
        text_depth=text_cfg.text_depth,
        adapter_depth=adapter_cfg.adapter_depth,
    )
    with torch.device("meta"):
        merged = UniIDModel(config, fingerprint="pending")
    state = {}
    if text is not None:
        state.update({f"text_branch.{k}": v for k, v in text.state_dict().items()})
    if adapter is not None:
        state.update({f"adapter_branch.{k}": v for k, v in adapter.state_dict().items()})
    merged.load_state_dict({k: v.detach().float().cpu() for k, v in state.items()}, assign=True)
    merged.refresh_fingerprint()
    return merged


def export_uniid(trained: UniIDModel, out: Path, merge_with: str | None = None) -> Path:
    """Write the trained branch (merged with another file's branch when given) in the single-file format."""
    other = load_uniid(merge_with) if merge_with else None
    out.parent.mkdir(parents=True, exist_ok=True)
    save_uniid(merge_branches(trained, other), str(out))
    return out
