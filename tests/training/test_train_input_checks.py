"""Inputs that cannot give a correct run are refused before training: merge_with, the base, its target."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.training.conftest import TEXT_WIDTHS, tiny_face_net, train_config
from training.components import base_problem
from training.config import TrainConfig
from training.train import Trainer
from uniid_core.checkpoint import load_uniid, save_uniid
from uniid_core.errors import CheckpointError, UniIDError
from uniid_core.models.uniid import UniIDConfig, UniIDModel


def text_branch_file(path: Path, widths: tuple[int, int]) -> Path:
    """A UniID file holding only a random text branch for text towers of `widths`."""
    torch.manual_seed(4)
    model = UniIDModel(
        UniIDConfig(num_text_tokens=2, num_adapter_tokens=None, adapter_hidden_dim=None, text_widths=widths)
    )
    return save_uniid(model, path)


def trainer(tmp_path: Path, base: Path, dataset: Path, stage: str, **overrides: object) -> Trainer:
    """A Trainer of the tiny model (building it runs every check that comes before training)."""
    return Trainer(
        TrainConfig(**train_config(tmp_path, base, dataset, stage, **overrides)), face_net=tiny_face_net()
    )


def test_merge_with_is_checked_before_training(
    tmp_path: Path, tiny_base: Path, prepared: tuple[Path, dict]
) -> None:
    dataset = prepared[0]
    missing = tmp_path / "runs" / "uniid_text.safetensors"
    with pytest.raises(UniIDError, match=f"merge_with {missing}: no such file or folder; check the path"):
        trainer(tmp_path, tiny_base, dataset, "adapter", merge_with=str(missing))
    text = text_branch_file(tmp_path / "text.safetensors", TEXT_WIDTHS)
    with pytest.raises(
        CheckpointError, match=r"holds no adapter branch: give the adapter stage's export \(uniid_adapter"
    ):
        trainer(tmp_path, tiny_base, dataset, "text", merge_with=str(text))
    other_base = text_branch_file(tmp_path / "other.safetensors", (64, 64))
    with pytest.raises(
        CheckpointError, match="does not fit this run's base model .text width 128, adapter context width 192"
    ):
        trainer(tmp_path, tiny_base, dataset, "adapter", merge_with=str(other_base))
    assert (
        not (tmp_path / "run_adapter" / "checkpoints").exists()
        and not (tmp_path / "run_text" / "checkpoints").exists()
    )

    result = trainer(tmp_path, tiny_base, dataset, "adapter", merge_with=str(text), max_train_steps=1).run()
    merged = load_uniid(result.export)
    assert merged.adapter_branch is not None
    expected = load_uniid(text).text_branch.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in merged.text_branch.state_dict().items())


def test_a_missing_base_folder_is_named_before_anything_loads(
    tmp_path: Path, prepared: tuple[Path, dict]
) -> None:
    typo = tmp_path / "stable-diffusion-xl-base-1.O"
    with pytest.raises(UniIDError, match=f"base {typo}: no such file or folder; check the path"):
        trainer(tmp_path, typo, prepared[0], "text")
    (tmp_path / "empty").mkdir()
    assert base_problem(str(tmp_path / "empty")).endswith(
        "holds no unet/config.json: give a diffusers SDXL folder"
    )
    assert base_problem("stabilityai/stable-diffusion-xl-base-1.0") is None, "a Hub id is left to diffusers"
    assert base_problem("./models/sdxl") is not None and base_problem("/models/sdxl") is not None


def test_a_v_prediction_base_is_refused(tmp_path: Path, tiny_base: Path, prepared: tuple[Path, dict]) -> None:
    vbase = tmp_path / "v-base"
    vbase.mkdir()
    for entry in tiny_base.iterdir():
        if entry.name != "scheduler":
            (vbase / entry.name).symlink_to(entry)
    shutil.copytree(tiny_base / "scheduler", vbase / "scheduler")
    config_file = vbase / "scheduler" / "scheduler_config.json"
    config = json.loads(config_file.read_text())
    assert config["prediction_type"] == "epsilon"
    config_file.write_text(json.dumps(dict(config, prediction_type="v_prediction")))
    with pytest.raises(
        UniIDError, match="prediction_type 'v_prediction'; the trainer trains epsilon-prediction"
    ):
        trainer(tmp_path, vbase, prepared[0], "text")
