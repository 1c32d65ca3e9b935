"""training.memory: parameter counts match the real models, the meta-device activation count matches CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.training.conftest import tiny_face_net
from training.components import load_base
from training.memory import FrozenModels, activation_bytes, build_meta_models, estimate, main, parameter_count
from uniid_core.cli import run_cli


@pytest.mark.parametrize("stage", ["text", "adapter"])
def test_meta_count_equals_the_count_on_real_tensors(stage: str, tiny_base: Path) -> None:
    real = load_base(str(tiny_base))
    cpu = FrozenModels(real.unet, real.vae, (real.text_encoder, real.text_encoder_2), tiny_face_net())
    meta = build_meta_models(str(tiny_base))
    meta.face_net = tiny_face_net().to("meta")
    from torch.nn.attention import SDPBackend, sdpa_kernel

    for batch in (1, 3):
        on_meta = activation_bytes(meta, stage, batch, 64, torch.float32)
        with sdpa_kernel(SDPBackend.MATH):
            assert activation_bytes(cpu, stage, batch, 64, torch.float32, device="cpu") == on_meta
        fused = activation_bytes(cpu, stage, batch, 64, torch.float32, device="cpu")
        corrected = on_meta["total"] - on_meta["softmax"]
        assert fused["softmax"] < on_meta["softmax"], "the CPU's fused attention keeps no attention matrix"
        assert abs(corrected - fused["total"]) < 0.03 * fused["total"], (corrected, fused["total"])
        assert on_meta["total"] > on_meta["norm_inputs"] > 0


def test_estimate_counts_every_resident_model(tiny_base: Path, capsys: pytest.CaptureFixture) -> None:
    real = load_base(str(tiny_base))
    result = estimate(
        "adapter", "bf16", batch=4, resolution=64, gpus=4, zero2=True, ema=True, base=str(tiny_base)
    )
    rows = result["rows"]
    assert rows["unet"] == (parameter_count(real.unet), 2 * parameter_count(real.unet))
    assert rows["vae"][0] == parameter_count(real.vae)
    assert rows["text_encoders"][0] == parameter_count(real.text_encoder) + parameter_count(
        real.text_encoder_2
    )
    branch = rows["branch_weights"][0]
    assert rows["branch_gradients"][1] == branch * 4 // 4 and rows["adamw_moments"][1] == branch * 8 // 4
    assert rows["ema"][1] == 4 * branch
    assert (
        rows["activations"] == (4, 4 * result["activations_per_image"])
        and result["activations_per_image"] > 0
    )
    assert result["total"] == sum(size for _, size in rows.values())
    main(["--stage", "text", "--batch", "2", "--resolution", "64", "--base", str(tiny_base)])
    table = capsys.readouterr().out
    assert "text stage, fp32, 64x64, batch 2 per GPU" in table and "total per GPU" in table


def test_command_line_mistakes_end_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert run_cli(main, ["--base", str(tmp_path / "no-such-sdxl")]) == 1
    assert (
        capsys.readouterr().err
        == f"error: --base {tmp_path / 'no-such-sdxl'}: no such file or folder; check the path\n"
    )
    (tmp_path / "not-sdxl").mkdir()
    assert run_cli(main, ["--base", str(tmp_path / "not-sdxl")]) == 1
    assert "holds no unet/config.json: give a diffusers SDXL folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stopped:
        main(["--batch", "0"])
    assert stopped.value.code == 2 and "--batch: must be >= 1, got 0" in capsys.readouterr().err
