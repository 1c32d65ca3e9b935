"""Training configuration: one dataclass whose defaults are the official recipe, read from YAML/JSON."""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from uniid_core.errors import UniIDError
from uniid_core.models.uniid import RELEASED_ADAPTER_HIDDEN_DIM, RELEASED_ADAPTER_TOKENS, RELEASED_TEXT_TOKENS
from uniid_core.rescaler import Rescaler, rescaler_from_text

STAGES = ("text", "adapter")
STAGE_DEFAULTS: dict[str, dict[str, Any]] = {
    "text": {"learning_rate": 1e-4, "train_batch_size": 23, "num_train_epochs": 12},
    "adapter": {"learning_rate": 1e-5, "train_batch_size": 19, "num_train_epochs": 16},
}


@dataclass
class TrainConfig:
    """Everything one training run needs; None fields take the official value of the chosen stage."""

    stage: str = "text"
    base: str = ""
    face_net: str = ""
    dataset: str = ""
    output_dir: str = "uniid-training"

    num_text_tokens: int = RELEASED_TEXT_TOKENS
    num_adapter_tokens: int = RELEASED_ADAPTER_TOKENS
    adapter_hidden_dim: int = RELEASED_ADAPTER_HIDDEN_DIM
    init_from: str | None = None

    resolution: int = 512
    prompt_template: str = "a photo of a {class_word}"
    use_cached_latents: bool = True

    learning_rate: float | None = None
    train_batch_size: int | None = None
    num_train_epochs: int | None = None
    max_train_steps: int | None = None
    max_steps_per_run: int | None = None
    max_run_minutes: float | None = None
    weight_decay: float = 1e-2
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float | None = None
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    gradient_accumulation_steps: int = 1
    gradient_checkpointing: bool = False
    mixed_precision: str | None = None
    allow_tf32: bool = True
    use_ema: bool = False
    ema_decay: float = 0.9999

    adapter_drop_rate: float = 0.05
    text_drop_rate: float = 0.05
    both_drop_rate: float = 0.05

    seed: int = 42
    dataloader_num_workers: int = 2

    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = 3
    resume_from_checkpoint: str | None = None
    export_path: str | None = None
    merge_with: str | None = None

    validation_steps: int = 0
    validation_indices: list[int] = field(default_factory=lambda: [0])
    validation_prompts: list[str] = field(
        default_factory=lambda: ["a photo of a <class word> in a garden, portrait, detailed face"]
    )
    validation_num_inference_steps: int = 30
    validation_resolution: int = 1024
    validation_guidance_scale: float = 7.5
    validation_merge_step: int = 5
    validation_rescale: str = "normalized"
    validation_rescale_params: str = ""
    validation_layer_weights: str = ""

    logging_steps: int = 10
    report_to: str | None = "tensorboard"
    progress_bar: bool = True

    def __post_init__(self) -> None:
        """Coerce values to their field types, fill the stage defaults and reject values that cannot train."""
        for name, kind in field_types().items():
            setattr(self, name, coerce_value(name, getattr(self, name), kind))
        if self.stage not in STAGES:
            raise UniIDError(f"stage must be one of {STAGES}, got {self.stage!r}")
        for key, value in STAGE_DEFAULTS[self.stage].items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        if self.mixed_precision not in (None, "no", "fp16", "bf16"):
            raise UniIDError(f"mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}")
        rates = (self.adapter_drop_rate, self.text_drop_rate, self.both_drop_rate)
        if min(rates) < 0 or sum(rates) > 1:
            raise UniIDError(f"feature drop rates must be >= 0 and sum to <= 1, got {rates}")
        if "{class_word}" not in self.prompt_template:
            raise UniIDError("prompt_template must contain {class_word}, e.g. 'a photo of a {class_word}'")
        if self.gradient_accumulation_steps < 1 or self.train_batch_size < 1:
            raise UniIDError("train_batch_size and gradient_accumulation_steps must be >= 1")
        self.validation_rescaler()
        for key in ("max_steps_per_run", "max_run_minutes"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise UniIDError(f"{key} must be > 0 (or null for no limit), got {value}")

    def validation_rescaler(self) -> Rescaler:
        """The rescaler validation images are made with (strategy, its parameters, layer weights)."""
        return rescaler_from_text(
            self.validation_rescale, self.validation_rescale_params, self.validation_layer_weights
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for logging and for saving next to checkpoints)."""
        return dataclasses.asdict(self)


@functools.cache
def field_types() -> dict[str, Any]:
    """TrainConfig field name -> its type (the annotations evaluated)."""
    return typing.get_type_hints(TrainConfig)


def coerce_value(key: str, value: Any, kind: Any) -> Any:
    """`value` as the field type `kind`, or a UniIDError naming the key.

    YAML 1.1 reads `1e-4` as text and `no`/`off` as false: numbers written as text become numbers,
    `mixed_precision: no` means "no", false turns other optional text settings off, and one value
    given for a list field becomes a one-element list.
    """
    optional = type(None) in typing.get_args(kind)
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        kind = next(k for k in typing.get_args(kind) if k is not type(None))
    if value is None:
        if optional:
            return None
        raise UniIDError(f"config key {key} cannot be null; give a value or leave the key out")
    if typing.get_origin(kind) is list:
        element = typing.get_args(kind)[0]
        items = value if isinstance(value, list | tuple) else [value]
        return [coerce_value(key, item, element) for item in items]
    if kind is str and isinstance(value, bool):
        if key == "mixed_precision" and value is False:
            return "no"
        if optional and value is False:
            return None
        raise UniIDError(
            f"config key {key} must be text, got {value!r}: quote the value (YAML reads yes/no/on/off as "
            "true/false)"
        )
    if kind is str and isinstance(value, str | int | float):
        return str(value)
    if kind is str:
        raise UniIDError(f"config key {key} must be text, got {value!r}")
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise UniIDError(f"config key {key} must be true or false, got {value!r}")
    number = _number(value)
    if kind is float and number is not None:
        return float(number)
    if kind is int and number is not None and float(number).is_integer():
        return int(number)
    expected = "a whole number" if kind is int else "a number (e.g. 1.0e-4)"
    raise UniIDError(f"config key {key} must be {expected}, got {value!r}")


def _number(value: Any) -> float | int | None:
    """An int or float value, or a text that reads as one (YAML 1.1 keeps `1e-4` as text); else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _parse_override(text: str) -> tuple[str, Any]:
    """Split 'key=value' and parse the value as YAML (numbers, booleans, lists, null)."""
    if "=" not in text:
        raise UniIDError(f"override {text!r} must look like key=value")
    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML or JSON file (keys = TrainConfig fields), apply 'key=value' overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        text = Path(path).read_text(encoding="utf-8")
        data = json.loads(text) if str(path).endswith(".json") else (yaml.safe_load(text) or {})
        if not isinstance(data, dict):
            raise UniIDError(f"{path} must hold a mapping of TrainConfig fields")
    for item in overrides or []:
        key, value = _parse_override(item)
        data[key] = value
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UniIDError(f"unknown config keys {unknown}; valid keys: {sorted(known)}")
    return TrainConfig(**data)
