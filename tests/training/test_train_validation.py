"""Validation during training (UniID inference pipeline) and the standalone pipeline / generate command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from tests.training.conftest import tiny_face_net, train_config
from training.config import TrainConfig
from training.train import train


@pytest.mark.parametrize("stage", ["adapter", "text"])
def test_validation_images_and_tensorboard(
    stage: str, tmp_path: Path, tiny_base: Path, prepared: tuple[Path, dict]
) -> None:
    config = train_config(
        tmp_path,
        tiny_base,
        prepared[0],
        stage,
        max_train_steps=2,
        validation_steps=2,
        validation_indices=[0, 1],
        validation_num_inference_steps=2,
        validation_resolution=64,
        validation_merge_step=1,
        validation_layer_weights="middle:0.5, 0-1:0",
        report_to="tensorboard",
    )
    train(TrainConfig(**config), face_net=tiny_face_net())
    out = Path(config["output_dir"])
    pngs = sorted((out / "validation" / "step-0000002").glob("*.png"))
    assert len(pngs) == 2
    assert Image.open(pngs[0]).size == (64, 64)
    assert list((out / "logs").rglob("events.out.tfevents.*"))


def test_validation_rescaler_is_read_and_checked_with_the_config(tmp_path: Path) -> None:
    from uniid_core.errors import UniIDError

    config = TrainConfig(validation_rescale="add", validation_layer_weights="middle:0.5")
    assert config.validation_rescaler().describe() == "add, layer weights middle:0.5"
    with pytest.raises(UniIDError, match="'middel' is neither a block group"):
        TrainConfig(validation_layer_weights="middel:0.5")
    with pytest.raises(UniIDError, match="'add' has no parameter 'strength'"):
        TrainConfig(validation_rescale="add", validation_rescale_params="strength=1")


def test_generate_command_writes_png_with_settings(
    tmp_path: Path, tiny_base: Path, prepared: tuple[Path, dict], photo_dir: Path, r100_file: Path
) -> None:
    from uniid_core.generate import main as generate_main

    config = train_config(tmp_path, tiny_base, prepared[0], "adapter", max_train_steps=1)
    result = train(TrainConfig(**config), face_net=tiny_face_net())
    written = generate_main(
        [
            "--base",
            str(tiny_base),
            "--uniid",
            str(result.export),
            "--face-net",
            str(r100_file),
            "--ref",
            str(photo_dir / "t1_crop1.jpg"),
            "--detector",
            "mtcnn",
            "--prompt",
            "a photo of a <class word>",
            "--steps",
            "2",
            "--merge-step",
            "1",
            "--width",
            "64",
            "--height",
            "64",
            "--seed",
            "7",
            "--layer-weights",
            "middle:0.5",
            "--out",
            str(tmp_path / "gen"),
        ]
    )
    assert len(written) == 1
    image = Image.open(written[0])
    assert image.size == (64, 64)
    settings = json.loads(image.text["uniid"])
    assert settings["seed"] == 7 and settings["steps"] == 2 and settings["merge_step"] == 1
    assert settings["prompt"] == "a photo of a person"
    assert settings["rescale"] == "normalized" and settings["layer_weights"] == "middle:0.5"
