"""One job per output_dir: a second job is refused while the first runs; a killed job's lock is taken over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.training.conftest import tiny_face_net, train_config
from training.config import TrainConfig
from training.run_lock import LOCK_FILE, OutputDirLock
from training.train import Trainer
from uniid_core.errors import UniIDError

REPO = Path(__file__).resolve().parents[2]
HOLD = (
    "import sys, time; from pathlib import Path; from training.run_lock import OutputDirLock; "
    "lock = OutputDirLock(Path(sys.argv[1])); lock.acquire(); print('locked', flush=True); time.sleep(600)"
)


def hold_lock(out: Path) -> subprocess.Popen:
    """Another process (another job) that takes the lock of `out` and keeps it."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    job = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], env=env, stdout=subprocess.PIPE, text=True)
    assert job.stdout.readline().strip() == "locked"
    return job


def test_a_second_job_is_refused_and_a_dead_jobs_lock_is_taken_over(
    tmp_path: Path, tiny_base: Path, prepared: tuple[Path, dict], capsys: pytest.CaptureFixture
) -> None:
    config = TrainConfig(**train_config(tmp_path, tiny_base, prepared[0], "text", max_train_steps=1))
    out = Path(config.output_dir)
    first = hold_lock(out)
    try:
        with pytest.raises(
            UniIDError, match=rf"is in use by another training job \(pid {first.pid} on host "
        ):
            Trainer(config, face_net=tiny_face_net())
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert not (out / "checkpoints").exists()

    capsys.readouterr()
    trainer = Trainer(config, face_net=tiny_face_net())
    assert f"taking over {out / LOCK_FILE} from pid {first.pid}" in capsys.readouterr().err
    with pytest.raises(UniIDError, match="in use by another training job"):
        OutputDirLock(out).acquire()
    assert trainer.run().export is not None
    after = OutputDirLock(out)
    after.acquire()
    assert "taking over" not in capsys.readouterr().err, "a finished job released its lock cleanly"
    after.release()
