"""Two-process CPU (gloo) DDP run through `accelerate launch`: checkpoints load without `module.` prefixes.

On CPU, `accelerate launch --cpu --num_processes 2` starts one process unless MPI is installed; the
documented way is `ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2` (torchrun + gloo).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

from tests.training.conftest import train_config, write_config
from training.checkpointing import list_checkpoints
from uniid_core.checkpoint import load_uniid

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port nobody listens on right now (for the gloo rendezvous)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.multiprocess
def test_two_process_run_saves_unprefixed_checkpoint(
    tmp_path: Path, tiny_base: Path, prepared: tuple[Path, dict], r100_file: Path
) -> None:
    config = train_config(
        tmp_path,
        tiny_base,
        prepared[0],
        "adapter",
        face_net=str(r100_file),
        train_batch_size=1,
        max_train_steps=2,
        checkpointing_steps=1,
    )
    path = write_config(tmp_path / "config.json", config)
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        "-m",
        "training.train",
        "--config",
        str(path),
    ]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    checkpoints = list_checkpoints(Path(config["output_dir"]) / "checkpoints")
    assert [p.name for p in checkpoints] == ["checkpoint-1", "checkpoint-2"]
    last = checkpoints[-1]
    assert (last / "random_states_0.pkl").is_file() and (last / "random_states_1.pkl").is_file()
    with safe_open(str(last / "uniid.safetensors"), framework="pt") as handle:
        keys = list(handle.keys())
    assert keys and not any(k.startswith("module.") for k in keys)
    assert all(k.startswith("adapter_branch.") for k in keys)
    saved = load_uniid(last / "uniid.safetensors").state_dict()
    exported = load_uniid(Path(config["output_dir"]) / "uniid_adapter.safetensors").state_dict()
    assert saved.keys() == exported.keys()
