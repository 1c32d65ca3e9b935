"""Training config values: YAML 1.1 spellings and --set overrides become the field types, or a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.training.conftest import tiny_face_net, train_config
from training.config import load_config
from training.train import Trainer, main
from uniid_core.cli import run_cli
from uniid_core.errors import UniIDError

YAML_SPELLINGS = """\
stage: adapter
learning_rate: 1e-4
adam_epsilon: 1e-8
max_run_minutes: 90
mixed_precision: no
report_to: off
validation_prompts: a photo of a <class word> smiling
validation_indices: 3
"""


def test_yaml_spellings_read_as_the_field_types(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(YAML_SPELLINGS, encoding="utf-8")
    config = load_config(path)
    assert isinstance(config.learning_rate, float) and config.learning_rate == 1e-4
    assert isinstance(config.adam_epsilon, float) and config.adam_epsilon == 1e-8
    assert isinstance(config.max_run_minutes, float) and config.max_run_minutes == 90.0
    assert (config.mixed_precision, config.report_to) == ("no", None)
    assert config.validation_prompts == ["a photo of a <class word> smiling"]
    assert config.validation_indices == [3]

    overrides = ["learning_rate=2e-5", "mixed_precision=no", "validation_prompts=a photo", "seed=7.0"]
    config = load_config(path, overrides)
    assert (config.learning_rate, config.mixed_precision) == (2e-5, "no")
    assert config.validation_prompts == ["a photo"]
    assert isinstance(config.seed, int) and config.seed == 7


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("learning_rate=fast", "config key learning_rate must be a number"),
        ("train_batch_size=2.5", "config key train_batch_size must be a whole number, got 2.5"),
        ("use_ema=1", "config key use_ema must be true or false, got 1"),
        ("lr_scheduler=yes", "config key lr_scheduler must be text, got True: quote the value"),
        ("validation_indices=0,1", "config key validation_indices must be a whole number, got '0,1'"),
        ("seed=null", "config key seed cannot be null"),
    ],
)
def test_a_value_of_the_wrong_type_names_its_key(override: str, message: str) -> None:
    with pytest.raises(UniIDError, match=message.replace("(", r"\(")):
        load_config(None, [override])


def test_the_command_line_reports_a_bad_value_in_one_line_before_loading_models(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("stage: text\nbase: /nowhere/sdxl\nlearning_rate: 1e-4x\n", encoding="utf-8")
    assert run_cli(main, ["--config", str(path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "error: config key learning_rate must be a number (e.g. 1.0e-4), got '1e-4x'"


def test_a_yaml_learning_rate_trains(tmp_path: Path, tiny_base: Path, prepared: tuple[Path, dict]) -> None:
    config = train_config(tmp_path, tiny_base, prepared[0], "text", max_train_steps=1)
    lines = [f"{key}: {value}" for key, value in config.items() if value is not None]
    path = tmp_path / "text.yaml"
    path.write_text("\n".join(lines + ["learning_rate: 1e-4", "report_to: null"]) + "\n", encoding="utf-8")
    trainer = Trainer(load_config(path), face_net=tiny_face_net())
    result = trainer.run()
    assert result.global_step == 1 and result.export is not None
    assert trainer.optimizer.param_groups[0]["lr"] == 1e-4
