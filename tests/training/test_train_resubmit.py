"""Resubmitted cluster jobs: the same command continues until the end and exports once; checkpoints stay."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.training.conftest import tiny_face_net, train_config, write_config
from training import checkpointing
from training.checkpointing import FINISHED_FILE, TrainerState, check_resume_layout, list_checkpoints
from training.config import TrainConfig, load_config
from training.run_lock import LOCK_FILE
from training.train import Trainer, TrainResult, parse_args, train
from uniid_core.checkpoint import load_uniid
from uniid_core.errors import CheckpointError, UniIDError


def submit(config: dict) -> TrainResult:
    """One job submission: the same config, resuming whatever is there."""
    return train(TrainConfig(**config, resume_from_checkpoint="latest"), face_net=tiny_face_net())


def test_same_command_resubmitted_finishes_and_exports_exactly_once(
    tmp_path: Path, tiny_base: Path, prepared: tuple[Path, dict], capsys: pytest.CaptureFixture
) -> None:
    common = dict(max_train_steps=5, lr_scheduler="cosine", lr_warmup_steps=1, checkpointing_steps=0)
    reference = train_config(tmp_path / "full", tiny_base, prepared[0], "adapter", **common)
    full = train(TrainConfig(**reference), face_net=tiny_face_net())
    config = train_config(tmp_path / "jobs", tiny_base, prepared[0], "adapter", max_steps_per_run=2, **common)
    runs = [submit(config) for _ in range(3)]
    assert [r.global_step for r in runs] == [2, 4, 5]
    assert [r.export is not None for r in runs] == [False, False, True]
    assert "stopped at step 2 of 5 (max_steps_per_run)" in capsys.readouterr().err
    assert [loss for r in runs for loss in r.losses] == full.losses
    exported, reference = load_uniid(runs[-1].export).state_dict(), load_uniid(full.export).state_dict()
    assert all(torch.equal(value, reference[key]) for key, value in exported.items())

    out = Path(config["output_dir"])
    lock = out / LOCK_FILE  # every job takes it, a finished run's too

    def files() -> dict[Path, int]:
        paths = [runs[-1].export, *out.rglob("*")]
        return {p: p.stat().st_mtime_ns for p in paths if p.is_file() and p != lock}

    before = files()
    again = submit(config)
    assert again.export is None and again.global_step == 5 and again.losses == []
    assert "already finished at step 5" in capsys.readouterr().err
    assert files() == before, "a finished run is left exactly as it was (no checkpoint rewrite, no export)"


def test_killed_between_last_checkpoint_and_export_exports_on_resubmission(
    tmp_path: Path, tiny_base: Path, prepared: tuple[Path, dict]
) -> None:
    config = train_config(tmp_path, tiny_base, prepared[0], "text", max_train_steps=2)
    first = submit(config)
    first.export.unlink()
    (Path(config["output_dir"]) / FINISHED_FILE).unlink()
    second = submit(config)
    assert second.losses == [] and second.export == first.export and second.export.is_file()


def test_time_budget_stops_with_a_checkpoint(
    tmp_path: Path, tiny_base: Path, prepared: tuple[Path, dict], capsys: pytest.CaptureFixture
) -> None:
    config = train_config(tmp_path, tiny_base, prepared[0], "text", max_train_steps=3, max_run_minutes=1e-6)
    result = submit(config)
    assert result.global_step == 1 and result.export is None
    assert [p.name for p in list_checkpoints(Path(config["output_dir"]) / "checkpoints")] == ["checkpoint-1"]
    assert "(max_run_minutes)" in capsys.readouterr().err


def test_a_complete_checkpoint_is_on_disk_at_every_moment(
    tmp_path: Path, tiny_base: Path, prepared: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = train_config(
        tmp_path, tiny_base, prepared[0], "text", checkpointing_steps=1, checkpoints_total_limit=1
    )
    root = Path(config["output_dir"]) / "checkpoints"
    observed = []

    def checked(name: str, operation: object) -> object:
        def wrapper(*args: object, **kwargs: object) -> object:
            before = list_checkpoints(root)
            result = operation(*args, **kwargs)
            after = list_checkpoints(root)
            observed.append((name, [p.name for p in before], [p.name for p in after]))
            return result

        return wrapper

    monkeypatch.setattr(checkpointing.os, "replace", checked("replace", os.replace))
    monkeypatch.setattr(checkpointing.shutil, "rmtree", checked("rmtree", shutil.rmtree))
    train(TrainConfig(**config), face_net=tiny_face_net())
    assert [p.name for p in list_checkpoints(root)] == ["checkpoint-3"]
    first = next(i for i, (_, _, after) in enumerate(observed) if after)
    gaps = [entry for entry in observed[first + 1 :] if not entry[1] or not entry[2]]
    assert not gaps, f"moments without a complete checkpoint: {gaps}"
    assert {name for name, _, _ in observed} == {"replace", "rmtree"}

    (root / ".tmp-checkpoint-4").mkdir()
    (root / "checkpoint-9").mkdir()
    assert [p.name for p in list_checkpoints(root)] == ["checkpoint-3"], (
        "incomplete folders are never resumed"
    )
    resumed = submit(dict(config, max_train_steps=4))
    assert resumed.global_step == 4 and not (root / ".tmp-checkpoint-4").exists()


def test_fresh_start_into_a_used_output_dir_is_refused(
    tmp_path: Path, tiny_base: Path, prepared: tuple[Path, dict]
) -> None:
    config = train_config(tmp_path, tiny_base, prepared[0], "text", max_train_steps=1)
    train(TrainConfig(**config), face_net=tiny_face_net())
    with pytest.raises(CheckpointError, match="already holds checkpoints.*--resume latest"):
        train(TrainConfig(**config), face_net=tiny_face_net())


def test_resume_layout_rules() -> None:
    saved = TrainerState(
        3, 3, 0, 3, world_size=2, train_batch_size=4, gradient_accumulation_steps=1, num_samples=9
    )
    path = Path("checkpoint-3")
    same = dict(gradient_accumulation_steps=1, num_samples=9)
    assert check_resume_layout(saved, TrainerState(world_size=2, train_batch_size=4, **same), path) is None
    note = check_resume_layout(saved, TrainerState(world_size=1, train_batch_size=8, **same), path)
    assert "continuing on 1 x 8" in note and "same samples, step and learning rate" in note
    with pytest.raises(CheckpointError, match=r"processes x train_batch_size = 8 \(e.g. 1 x 8, 2 x 4, 4 x 2"):
        check_resume_layout(saved, TrainerState(world_size=1, train_batch_size=4, **same), path)
    with pytest.raises(CheckpointError, match="gradient_accumulation_steps 1"):
        check_resume_layout(
            saved,
            TrainerState(world_size=1, train_batch_size=8, gradient_accumulation_steps=2, num_samples=9),
            path,
        )
    with pytest.raises(CheckpointError, match="dataset of 9 samples, this one has 10"):
        check_resume_layout(
            saved,
            TrainerState(world_size=2, train_batch_size=4, gradient_accumulation_steps=1, num_samples=10),
            path,
        )
    assert check_resume_layout(TrainerState(3, 3, 0, 3), TrainerState(world_size=4, **same), path) is None


def test_repeated_set_options_add_up(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.json", {"stage": "adapter"})
    args = parse_args(
        ["--config", str(path), "--set", "seed=7", "--set", "learning_rate=0.5", "use_ema=true"]
    )
    assert args.set == ["seed=7", "learning_rate=0.5", "use_ema=true"]
    config = load_config(args.config, args.set)
    assert (config.seed, config.learning_rate, config.use_ema) == (7, 0.5, True)
    with pytest.raises(UniIDError, match="max_steps_per_run must be > 0"):
        load_config(path, ["max_steps_per_run=0"])


def test_accumulation_beyond_one_epoch_trains_every_epoch_and_exports(
    tmp_path: Path, tiny_base: Path, prepared: tuple[Path, dict], capsys: pytest.CaptureFixture
) -> None:
    common = dict(max_train_steps=None, num_train_epochs=3, gradient_accumulation_steps=3)
    reference = train_config(tmp_path / "full", tiny_base, prepared[0], "text", **common)
    trainer = Trainer(TrainConfig(**reference), face_net=tiny_face_net())
    assert trainer.sampler.batches_per_epoch() == 2, "5 samples in batches of 2"
    assert trainer.max_steps == 2, "3 epochs x 2 micro-batches / accumulation 3"
    full = trainer.run()
    assert full.global_step == 2 and full.export is not None
    state = trainer.state
    assert state.micro_step == 6 == 2 * state.epoch + state.batch_in_epoch, "all 3 epochs were read"

    config = train_config(tmp_path / "jobs", tiny_base, prepared[0], "text", max_steps_per_run=1, **common)
    runs = [submit(config) for _ in range(2)]
    assert [r.global_step for r in runs] == [1, 2] and runs[-1].export is not None
    assert "stopped at step 1 of 2 (max_steps_per_run)" in capsys.readouterr().err
    losses = [loss for r in runs for loss in r.losses]
    assert losses == full.losses, "a step spanning two epochs resumes exactly"


class PreemptedTrainer(Trainer):
    """A Trainer that receives SIGTERM in the middle of its first optimizer step (between micro-batches)."""

    def compute_loss(self, batch: dict, generators: list[torch.Generator]) -> torch.Tensor:
        if self.state.micro_step == 0:
            os.kill(os.getpid(), signal.SIGTERM)
        return super().compute_loss(batch, generators)


def test_sigterm_checkpoints_at_the_step_boundary_and_the_resubmission_finishes(
    tmp_path: Path, tiny_base: Path, prepared: tuple[Path, dict], capsys: pytest.CaptureFixture
) -> None:
    common = dict(max_train_steps=3, gradient_accumulation_steps=2, lr_scheduler="cosine")
    reference = train_config(tmp_path / "full", tiny_base, prepared[0], "text", **common)
    full = train(TrainConfig(**reference), face_net=tiny_face_net())
    config = train_config(tmp_path / "jobs", tiny_base, prepared[0], "text", **common)
    before = signal.getsignal(signal.SIGTERM)
    trainer = PreemptedTrainer(
        TrainConfig(**config, resume_from_checkpoint="latest"), face_net=tiny_face_net()
    )
    stopped = trainer.run()
    assert signal.getsignal(signal.SIGTERM) is before, "the previous SIGTERM handler is back"
    assert "stopped at step 1 of 3 (SIGTERM) with a checkpoint" in capsys.readouterr().err
    assert stopped.global_step == 1 and stopped.export is None and trainer.state.micro_step == 2
    assert stopped.checkpoint == Path(config["output_dir"]) / "checkpoints" / "checkpoint-1"
    resumed = submit(config)
    assert resumed.global_step == 3 and resumed.export is not None
    assert stopped.losses + resumed.losses == full.losses
    capsys.readouterr()
    assert submit(config).export is None and "already finished at step 3" in capsys.readouterr().err


def test_sigterm_to_the_whole_job_stops_it_cleanly(
    tmp_path: Path, tiny_base: Path, prepared: tuple[Path, dict], r100_file: Path
) -> None:
    config = train_config(
        tmp_path, tiny_base, prepared[0], "text", face_net=str(r100_file), max_train_steps=1000,
        checkpointing_steps=1, dataloader_num_workers=1,
    )  # fmt: skip
    path = write_config(tmp_path / "config.json", config)
    root = Path(config["output_dir"]) / "checkpoints"
    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(repo))
    command = [sys.executable, "-m", "training.train", "--config", str(path)]
    job = subprocess.Popen(
        command, cwd=repo, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 240
        while not list_checkpoints(root) and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert list_checkpoints(root), "the job wrote its first checkpoint"
        os.killpg(job.pid, signal.SIGTERM)  # as a cluster scheduler does: every process of the job
        _, err = job.communicate(timeout=240)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 0, err[-2000:]
    line = next(line for line in err.splitlines() if line.startswith("stopped at step"))
    step = int(line.split()[3])
    assert line.endswith("(SIGTERM) with a checkpoint: run the same command with --resume latest to continue")
    assert list_checkpoints(root)[-1].name == f"checkpoint-{step}"
    assert not (Path(config["output_dir"]) / "finished.json").exists()
