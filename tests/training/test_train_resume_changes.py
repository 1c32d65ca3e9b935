"""Resuming with changes: an older checkpoint starts a new line of training; changed AdamW settings apply."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from tests.training.conftest import tiny_face_net, train_config
from training.checkpointing import FINISHED_FILE, list_checkpoints
from training.config import TrainConfig
from training.train import Trainer
from uniid_core.checkpoint import load_uniid


def weights(path: Path) -> dict[str, torch.Tensor]:
    """The text branch stored in a UniID file."""
    return load_uniid(path).text_branch.state_dict()


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Whether two state dicts hold exactly the same tensors."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k].to(a[k].dtype)) for k in a)


def test_resuming_an_older_checkpoint_sets_the_newer_ones_aside_and_trains_a_new_line(
    tmp_path: Path, tiny_base: Path, prepared: tuple[Path, dict], capsys: pytest.CaptureFixture
) -> None:
    first = train_config(
        tmp_path, tiny_base, prepared[0], "text", max_train_steps=4, checkpointing_steps=1,
        checkpoints_total_limit=3, learning_rate=1e-2,
    )  # fmt: skip
    run_a = Trainer(TrainConfig(**first), face_net=tiny_face_net()).run()
    out = Path(first["output_dir"])
    root = out / "checkpoints"
    assert [p.name for p in list_checkpoints(root)] == ["checkpoint-2", "checkpoint-3", "checkpoint-4"]
    old = {p.name: (p / "uniid.safetensors").read_bytes() for p in list_checkpoints(root)}
    old_export = weights(run_a.export)

    changed = dict(first, max_grad_norm=1e-6, checkpoints_total_limit=2)
    capsys.readouterr()
    second = Trainer(
        TrainConfig(**changed, max_steps_per_run=1, resume_from_checkpoint=str(root / "checkpoint-2")),
        face_net=tiny_face_net(),
    )
    run_b = second.run()
    err = capsys.readouterr().err
    assert "newer checkpoints of the abandoned run are kept" in err and "config changes" not in err
    assert run_b.global_step == 3 and run_b.export is None and not (out / FINISHED_FILE).exists()
    assert [p.name for p in list_checkpoints(root)] == ["checkpoint-2", "checkpoint-3"]
    assert run_b.checkpoint == root / "checkpoint-3"
    assert same(second.uniid.text_branch.state_dict(), weights(root / "checkpoint-3" / "uniid.safetensors"))
    aside = {re.match(r"abandoned-checkpoint-\d+", p.name)[0]: p for p in root.glob("abandoned-*")}
    assert sorted(aside) == ["abandoned-checkpoint-3", "abandoned-checkpoint-4"]
    for name, path in aside.items():
        assert (path / "uniid.safetensors").read_bytes() == old[name.removeprefix("abandoned-")], "kept as is"

    third = Trainer(TrainConfig(**changed, resume_from_checkpoint="latest"), face_net=tiny_face_net())
    run_c = third.run()
    err = capsys.readouterr().err
    assert "resumed from" in err and "checkpoint-3 at step 3" in err and "abandoned" not in err
    assert run_c.global_step == 4 and [step for step, _ in run_c.losses] == [4]
    assert run_c.export == run_a.export and (out / FINISHED_FILE).is_file()
    exported = weights(run_c.export)
    assert same(third.uniid.text_branch.state_dict(), exported) and not same(exported, old_export)
    assert [p.name for p in list_checkpoints(root)] == ["checkpoint-3", "checkpoint-4"], "pruned: new line"
    assert len(list(root.glob("abandoned-checkpoint-*"))) == 2, "pruning never touches set-aside folders"


def test_changed_adamw_settings_apply_on_resume(
    tmp_path: Path, tiny_base: Path, prepared: tuple[Path, dict], capsys: pytest.CaptureFixture
) -> None:
    from diffusers.optimization import get_scheduler

    first = train_config(
        tmp_path, tiny_base, prepared[0], "text", max_train_steps=4, max_steps_per_run=2,
        checkpointing_steps=1, learning_rate=1e-3, lr_scheduler="cosine",
    )  # fmt: skip
    Trainer(TrainConfig(**first), face_net=tiny_face_net()).run()
    new = dict(learning_rate=0.1, weight_decay=0.5, adam_beta1=0.8, adam_epsilon=1e-6, max_steps_per_run=1)
    capsys.readouterr()
    config = TrainConfig(**dict(first, **new), resume_from_checkpoint="latest")
    trainer = Trainer(config, face_net=tiny_face_net())
    trainer.run()
    err = capsys.readouterr().err
    assert "learning_rate 0.001 -> 0.1, weight_decay 0.01 -> 0.5, adam_beta1 0.9 -> 0.8" in err
    assert "adam_epsilon 1e-08 -> 1e-06" in err and "adam_beta2" not in err
    group = trainer.optimizer.param_groups[0]
    assert (group["weight_decay"], group["betas"], group["eps"]) == (0.5, (0.8, 0.999), 1e-6)

    probe = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    schedule = get_scheduler("cosine", probe, num_warmup_steps=0, num_training_steps=4)
    for _ in range(3):
        probe.step()
        schedule.step()
    assert trainer.scheduler.get_last_lr() == schedule.get_last_lr() == [group["lr"]]
    assert group["lr"] == pytest.approx(0.1 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * 3 / 4)).item()))
