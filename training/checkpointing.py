"""Atomic accelerate checkpoints with keep-last-K, trainer position, EMA weights, and branch export.

A complete checkpoint is on disk at every moment: a new one is written under a temporary name and
renamed into place before any old one is removed, and a complete one is never overwritten.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from uniid_core.checkpoint import is_uniid_file, load_uniid, save_uniid
from uniid_core.errors import CheckpointError
from uniid_core.models.uniid import UniIDConfig, UniIDModel

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
UNIID_FILE = "uniid.safetensors"
EMA_FILE = "ema.safetensors"
STATE_FILE = "trainer_state.json"
FINISHED_FILE = "finished.json"


@dataclass
class TrainerState:
    """Where training stands (optimizer updates, micro-batches, data position) and the layout that got there.

    The layout (processes, per-process batch, accumulation, dataset size) decides which samples each step
    sees; a resume checks it (see check_resume_layout). None means: written before it was recorded.
    """

    global_step: int = 0
    micro_step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    world_size: int | None = None
    train_batch_size: int | None = None
    gradient_accumulation_steps: int | None = None
    num_samples: int | None = None


def check_resume_layout(saved: TrainerState, now: TrainerState, path: Path) -> str | None:
    """Refuse a resume that would change which samples a step sees; note a safe change of process count.

    Steps see the same samples (and LR, noise, dropout) when processes x per-process batch, the
    accumulation and the dataset size are unchanged, so e.g. 2 processes x batch 4 may resume as 1 x 8.
    """
    if saved.world_size is None:
        return None
    before = saved.world_size * saved.train_batch_size
    after = now.world_size * now.train_batch_size
    layout = (
        f"{saved.world_size} process(es) x train_batch_size {saved.train_batch_size} x "
        f"gradient_accumulation_steps {saved.gradient_accumulation_steps} on {saved.num_samples} samples"
    )
    if saved.num_samples != now.num_samples:
        raise CheckpointError(
            f"{path} was trained on a dataset of {saved.num_samples} samples, this one has "
            f"{now.num_samples}: the data order would change. Resume with the same dataset, or start a "
            "new output_dir (init_from: a UniID export keeps the trained weights)"
        )
    if before != after or saved.gradient_accumulation_steps != now.gradient_accumulation_steps:
        options = [f"{w} x {before // w}" for w in (1, 2, 4, 8, 16, 32, 64) if before % w == 0]
        raise CheckpointError(
            f"{path} was trained with {layout}; this run has {now.world_size} x {now.train_batch_size} x "
            f"{now.gradient_accumulation_steps}. Resuming would change the samples per step. Keep "
            f"gradient_accumulation_steps {saved.gradient_accumulation_steps} and processes x "
            f"train_batch_size = {before} (e.g. {', '.join(options[:4])}; set it with --set "
            "train_batch_size=N), or start a new output_dir"
        )
    if saved.world_size != now.world_size:
        return (
            f"{path} was trained with {layout}; continuing on {now.world_size} x {now.train_batch_size}: "
            "the same samples, step and learning rate"
        )
    return None


def checkpoint_step(path: Path) -> int:
    """The step number in a checkpoint-<step> folder name."""
    match = CHECKPOINT_RE.match(path.name)
    if match is None:
        raise CheckpointError(f"{path} is not named checkpoint-<step>")
    return int(match.group(1))


def list_checkpoints(root: Path) -> list[Path]:
    """Completed checkpoints (checkpoint-<step> holding its state file), oldest first."""
    if not root.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in root.iterdir()
        if (m := CHECKPOINT_RE.match(p.name)) and (p / STATE_FILE).is_file()
    ]
    return [p for _, p in sorted(found)]


def set_aside_newer(root: Path, resumed: Path, step: int) -> list[Path]:
    """Rename the checkpoints at or after `step` (except `resumed`) to abandoned-checkpoint-<step>-<time>.

    Resuming from an older checkpoint starts a new line of training: the abandoned line's newer
    checkpoints must not be resumed by 'latest', pruned before the new ones or kept in their place. They
    leave the checkpoint namespace under a new name and are never deleted. Returns their new paths.
    """
    stamp = time.strftime("%Y%m%d-%H%M%S")
    moved = []
    for path in list_checkpoints(root):
        if checkpoint_step(path) < step or path.resolve() == resumed.resolve():
            continue
        target = root / f"abandoned-{path.name}-{stamp}"
        copy = 1
        while target.exists():
            copy += 1
            target = root / f"abandoned-{path.name}-{stamp}-{copy}"
        os.replace(path, target)
        moved.append(target)
    return moved


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


def remove_folder(path: Path) -> None:
    """Rename a folder out of the checkpoint namespace, then delete it (a kill midway leaves only trash)."""
    trash = path.with_name(f".trash-{path.name}")
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def prune(root: Path, keep: int | None) -> None:
    """Delete the oldest checkpoints so that at most `keep` remain (the newest is never touched)."""
    if not keep or keep < 1:
        return
    for old in list_checkpoints(root)[:-keep]:
        remove_folder(old)


def clean_debris(root: Path) -> None:
    """Remove what an interrupted save or prune left: temporary and trash folders, incomplete checkpoints."""
    if not root.is_dir():
        return
    for path in root.iterdir():
        incomplete = CHECKPOINT_RE.match(path.name) and not (path / STATE_FILE).is_file()
        if path.is_dir() and (path.name.startswith((".tmp-", ".trash-")) or incomplete):
            shutil.rmtree(path, ignore_errors=True)


def save_checkpoint(
    accelerator: Any,
    root: Path,
    state: TrainerState,
    config: dict[str, Any],
    keep: int | None,
    save_kwargs: dict[str, Any] | None = None,
) -> Path:
    """accelerate.save_state into a temporary folder, renamed to checkpoint-<step> (all processes).

    A complete checkpoint of the same step is kept as it is: with exact resume it holds the same state.
    """
    final = root / f"checkpoint-{state.global_step}"
    if (final / STATE_FILE).is_file():
        return final
    tmp = root / f".tmp-checkpoint-{state.global_step}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        clean_debris(root)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), **(save_kwargs or {}))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / "train_config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
        (tmp / STATE_FILE).write_text(json.dumps(asdict(state)), encoding="utf-8")
        os.replace(tmp, final)
        prune(root, keep)
    accelerator.wait_for_everyone()
    return final


def read_trainer_state(path: Path) -> TrainerState:
    """The data position and layout stored with a checkpoint."""
    data = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    known = {f.name for f in dataclasses.fields(TrainerState)}
    return TrainerState(**{k: v for k, v in data.items() if k in known})


def write_finished(out: Path, step: int, export: Path) -> None:
    """Record that the run reached its last step and wrote its export (written after the export)."""
    tmp = out / f".{FINISHED_FILE}.tmp"
    tmp.write_text(json.dumps({"global_step": step, "export": str(export)}), encoding="utf-8")
    os.replace(tmp, out / FINISHED_FILE)


def read_finished(out: Path) -> dict[str, Any] | None:
    """The finished record of a run folder, or None."""
    path = out / FINISHED_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


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


def merge_source_config(path: Path) -> UniIDConfig:
    """The sizes of a UniID file to merge with: from the header of a single file (no tensors read),
    else by loading it (official branch files and release folders)."""
    if not is_uniid_file(path):
        return load_uniid(path).config
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        metadata = handle.metadata() or {}
    try:
        return UniIDConfig.from_metadata(metadata)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: damaged UniID metadata ({exc}); export or convert it again") from exc


def check_merge_source(path: Path, trained: UniIDConfig) -> None:
    """Refuse a merge_with file that cannot complete this run's export (checked before training starts)."""
    text_stage = trained.num_text_tokens is not None
    needed = "adapter" if text_stage else "text"
    other = merge_source_config(path)
    if (other.num_adapter_tokens if text_stage else other.num_text_tokens) is None:
        raise CheckpointError(
            f"merge_with {path} holds no {needed} branch: give the {needed} stage's export "
            f"(uniid_{needed}.safetensors) or remove merge_with"
        )
    if other.family != trained.family:
        raise CheckpointError(
            f"merge_with {path} is for {other.family} models, this run trains for {trained.family}: "
            f"give a {needed} branch trained on the same base model"
        )
    text, adapter = (trained, other) if text_stage else (other, trained)
    if sum(text.text_widths) != adapter.context_dim:
        raise CheckpointError(
            f"merge_with {path}: its {needed} branch does not fit this run's base model (text width "
            f"{sum(text.text_widths)}, adapter context width {adapter.context_dim}): give a {needed} "
            "branch trained on the same base model"
        )


def export_uniid(trained: UniIDModel, out: Path, merge_with: str | None = None) -> Path:
    """Write the trained branch (merged with another file's branch when given) in the single-file format."""
    other = load_uniid(merge_with) if merge_with else None
    out.parent.mkdir(parents=True, exist_ok=True)
    save_uniid(merge_branches(trained, other), str(out))
    return out
