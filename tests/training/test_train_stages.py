"""Both training stages on the tiny SDXL: a few steps, exact resume, export loadable by uniid_core."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tests.training.conftest import tiny_face_net, train_config
from training.checkpointing import list_checkpoints
from training.config import TrainConfig
from training.export import main as export_main
from training.train import train
from uniid_core.checkpoint import load_uniid


def run(config: dict) -> object:
    """Train in this process with the small injected face net."""
    return train(TrainConfig(**config), face_net=tiny_face_net())


@pytest.fixture(scope="module")
def stage_runs(
    tmp_path_factory: pytest.TempPathFactory, tiny_base: Path, prepared: tuple[Path, dict]
) -> dict:
    """Three steps of each stage (EMA on for the adapter stage)."""
    tmp = tmp_path_factory.mktemp("stages")
    return {
        stage: run(
            train_config(
                tmp, tiny_base, prepared[0], stage, use_ema=stage == "adapter", checkpointing_steps=3
            )
        )
        for stage in ("text", "adapter")
    }


@pytest.mark.parametrize("stage", ["text", "adapter"])
def test_stage_trains_and_exports(stage: str, stage_runs: dict) -> None:
    result = stage_runs[stage]
    assert [s for s, _ in result.losses] == [1, 2, 3]
    assert all(math.isfinite(loss) for _, loss in result.losses)
    model = load_uniid(result.export)
    assert (model.text_branch is not None) == (stage == "text")
    assert (model.adapter_branch is not None) == (stage == "adapter")
    assert not any(k.startswith("module.") for k in model.state_dict())
    if stage == "adapter":
        assert model.config.num_adapter_tokens == 4 and len(model.config.layer_widths) == 4
    else:
        assert model.config.num_text_tokens == 2 and model.config.text_widths == (64, 128)
    saved = load_uniid(result.checkpoint / "uniid.safetensors")
    assert saved.state_dict().keys() == model.state_dict().keys()


def test_export_merges_both_branches(stage_runs: dict, tmp_path: Path) -> None:
    out = export_main(
        [
            "--checkpoint",
            str(stage_runs["adapter"].checkpoint),
            "--ema",
            "--out",
            str(tmp_path / "both.safetensors"),
            "--merge",
            str(stage_runs["text"].export),
        ]
    )
    merged = load_uniid(out)
    assert merged.text_branch is not None and merged.adapter_branch is not None
    text = load_uniid(stage_runs["text"].export).state_dict()
    adapter = load_uniid(stage_runs["adapter"].export).state_dict()
    for key, value in merged.state_dict().items():
        assert torch.equal(value, (text if key.startswith("text_branch.") else adapter)[key]), key


def test_resume_continues_with_identical_losses(
    tmp_path: Path, tiny_base: Path, prepared: tuple[Path, dict]
) -> None:
    common = dict(max_train_steps=4, lr_scheduler="cosine", lr_warmup_steps=1, dataloader_num_workers=1)
    full = run(
        train_config(tmp_path / "a", tiny_base, prepared[0], "adapter", checkpointing_steps=2, **common)
    )
    interrupted = dict(checkpointing_steps=1, checkpoints_total_limit=2, **common)
    first = run(
        train_config(tmp_path / "b", tiny_base, prepared[0], "adapter", max_steps_per_run=2, **interrupted)
    )
    assert first.export is None and first.global_step == 2
    config = train_config(
        tmp_path / "b", tiny_base, prepared[0], "adapter", resume_from_checkpoint="latest", **interrupted
    )
    second = run(config)
    assert [s for s, _ in second.losses] == [3, 4]
    assert first.losses + second.losses == full.losses
    exported = [load_uniid(r.export).state_dict() for r in (full, second)]
    for key, value in exported[0].items():
        assert torch.equal(value, exported[1][key]), key
    root = Path(config["output_dir"]) / "checkpoints"
    assert [p.name for p in list_checkpoints(root)] == ["checkpoint-3", "checkpoint-4"]
    assert not list(root.glob(".tmp-*"))


def test_bf16_gradient_checkpointing_and_accumulation(
    tmp_path: Path, tiny_base: Path, prepared: tuple[Path, dict]
) -> None:
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    try:
        result = run(
            train_config(
                tmp_path,
                tiny_base,
                prepared[0],
                "adapter",
                train_batch_size=1,
                max_train_steps=2,
                mixed_precision="bf16",
                gradient_checkpointing=True,
                gradient_accumulation_steps=2,
                max_grad_norm=1.0,
                lr_scheduler="cosine",
                lr_warmup_steps=1,
            )
        )
    finally:
        AcceleratorState._reset_state(True)
    assert [s for s, _ in result.losses] == [1, 2]
    assert all(math.isfinite(loss) for _, loss in result.losses)
    assert load_uniid(result.export).adapter_branch is not None
