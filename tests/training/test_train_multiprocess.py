"""Scale-out through accelerate with the shipped configs: DDP on CPU (gloo), DeepSpeed ZeRO-2 on a GPU.

The DDP run uses training/configs/accelerate/ddp_multinode.yaml with its node options overridden for one
machine, the way a user overrides --machine_rank on each node. On CPU, torchrun + gloo carries it
(ACCELERATE_USE_CPU=1: without it each process would train alone).
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from tests.training.conftest import train_config, write_config
from training.checkpointing import list_checkpoints, read_trainer_state
from training.config import TrainConfig
from training.train import train
from uniid_core.checkpoint import load_uniid
from uniid_core.errors import CheckpointError

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "training" / "configs" / "accelerate"


def free_port() -> int:
    """A TCP port nobody listens on right now (for the rendezvous)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(config_file: Path, processes: int, train_config_path: Path) -> subprocess.CompletedProcess:
    """`accelerate launch --config_file ... -m training.train` on this machine only (gloo on CPU)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    if not torch.cuda.is_available():
        env["ACCELERATE_USE_CPU"] = "1"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file),
        "--num_machines", "1", "--machine_rank", "0", "--num_processes", str(processes),
        "--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port()),
        "-m", "training.train", "--config", str(train_config_path), "--resume", "latest",
    ]  # fmt: skip
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_shipped_accelerate_configs_parse() -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    ddp = load_config_from_file(str(CONFIGS / "ddp_multinode.yaml"))
    assert (ddp.distributed_type, ddp.num_machines, ddp.num_processes) == ("MULTI_GPU", 2, 16)
    zero2 = load_config_from_file(str(CONFIGS / "deepspeed_zero2.yaml"))
    assert zero2.distributed_type == "DEEPSPEED" and zero2.deepspeed_config["zero_stage"] == 2
    assert "gradient_accumulation_steps" not in zero2.deepspeed_config, "the training config owns it"


@pytest.mark.multiprocess
def test_two_process_checkpoint_continues_on_one_process(
    tmp_path: Path, tiny_base: Path, prepared: tuple[Path, dict], r100_file: Path
) -> None:
    common = dict(
        face_net=str(r100_file),
        max_train_steps=4,
        lr_scheduler="cosine",
        lr_warmup_steps=1,
        checkpointing_steps=1,
    )
    reference = train(
        TrainConfig(**train_config(tmp_path / "one", tiny_base, prepared[0], "adapter", **common))
    )

    config = train_config(
        tmp_path, tiny_base, prepared[0], "adapter", train_batch_size=1, max_steps_per_run=2
    )
    config.update(common)
    done = launch(CONFIGS / "ddp_multinode.yaml", 2, write_config(tmp_path / "config.json", config))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "stopped at step 2 of 4" in done.stderr
    last = list_checkpoints(Path(config["output_dir"]) / "checkpoints")[-1]
    assert last.name == "checkpoint-2"
    assert (last / "random_states_0.pkl").is_file() and (last / "random_states_1.pkl").is_file()
    state = read_trainer_state(last)
    assert (state.world_size, state.train_batch_size, state.micro_step) == (2, 1, 2)
    with safe_open(str(last / "uniid.safetensors"), framework="pt") as handle:
        keys = list(handle.keys())
    assert keys and all(k.startswith("adapter_branch.") for k in keys), "saved unwrapped (no module.)"

    with pytest.raises(
        CheckpointError, match=r"2 process\(es\) x train_batch_size 1.*processes x train_batch"
    ):
        train(TrainConfig(**dict(config, resume_from_checkpoint="latest")))
    resumed = train(TrainConfig(**dict(config, train_batch_size=2, resume_from_checkpoint="latest")))
    assert [step for step, _ in resumed.losses] == [3, 4]
    torch.testing.assert_close(
        [loss for _, loss in resumed.losses], [loss for _, loss in reference.losses[2:]], rtol=1e-4, atol=1e-6
    )
    ours, theirs = load_uniid(resumed.export).state_dict(), load_uniid(reference.export).state_dict()
    for key, value in theirs.items():
        torch.testing.assert_close(ours[key], value, rtol=1e-4, atol=1e-6, msg=key)


def deepspeed_unavailable() -> str | None:
    """Why the DeepSpeed test cannot run here (None when it can)."""
    if not torch.cuda.is_available():
        return "DeepSpeed ZeRO-2 needs a CUDA GPU (none here)"
    if importlib.util.find_spec("deepspeed") is None:
        return "needs DeepSpeed: pip install -r training/requirements-deepspeed.txt"
    return None


@pytest.mark.skipif(deepspeed_unavailable() is not None, reason=str(deepspeed_unavailable()))
def test_deepspeed_zero2_trains_resumes_and_exports(
    tmp_path: Path, tiny_base: Path, prepared: tuple[Path, dict], r100_file: Path
) -> None:
    config = train_config(
        tmp_path,
        tiny_base,
        prepared[0],
        "adapter",
        face_net=str(r100_file),
        max_train_steps=2,
        max_steps_per_run=1,
    )
    path = write_config(tmp_path / "config.json", config)
    for expected in ("stopped at step 1 of 2", "finished at step 2"):
        done = launch(CONFIGS / "deepspeed_zero2.yaml", 1, path)
        assert done.returncode == 0 and expected in done.stderr, done.stderr[-3000:]
    assert [p.name for p in list_checkpoints(Path(config["output_dir"]) / "checkpoints")][
        -1
    ] == "checkpoint-2"
    assert load_uniid(Path(config["output_dir"]) / "uniid_adapter.safetensors").adapter_branch is not None
