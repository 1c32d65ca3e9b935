"""Every stage of every golden case matches the official outputs (python -m uniid_core.parity in pytest)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from uniid_core.parity import PER_PROMPT_KEYS, StageResult, golden_cases, main, run_parity

REPEATS = 3
DROPPED = (
    "celeb_col_mean_1",
    "step_unet_encoder_hidden_states",
    "step_latents_after",
    "final_latents",
    "plain_sdxl_final_latents",
)


def _repeated_case(source: Path, out: Path) -> None:
    """Case 1 as a several-images run writes it: prompt-stage tensors repeated, sigmas 1 ulp off, some
    tensors missing (the UNet and end-to-end stages then report themselves skipped)."""
    with safe_open(str(source), "pt") as handle:
        metadata = dict(handle.metadata())
    golden = json.loads(metadata["golden"])
    golden["meta"]["case_name"] = "repeats"
    metadata["golden"] = json.dumps(golden)
    tensors = load_file(str(source))
    for key in PER_PROMPT_KEYS:
        if tensors[key].shape[0] == 1:
            tensors[key] = tensors[key].repeat(REPEATS, *([1] * (tensors[key].dim() - 1)))
    sigmas = tensors["sigmas"]
    tensors["sigmas"] = torch.where(
        sigmas > 0, torch.nextafter(sigmas, torch.full_like(sigmas, 99.0)), sigmas
    )
    for key in DROPPED:
        del tensors[key]
    save_file(tensors, str(out), metadata=metadata)


@pytest.fixture(scope="module")
def parity_results(golden_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[StageResult]:
    """One parity run over all cases plus a repeated-images copy of case 1 (the layout is removed after)."""
    golden = tmp_path_factory.mktemp("golden")
    for item in golden_dir.iterdir():
        (golden / item.name).symlink_to(item, target_is_directory=item.is_dir())
    _repeated_case(golden_dir / "golden_case1.safetensors", golden / "golden_case9_repeats.safetensors")
    work = tmp_path_factory.mktemp("parity")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # OpenMP threads on a shared, oversubscribed CPU slow tiny models 10-100x
    try:
        results = run_parity(golden, work)
    finally:
        torch.set_num_threads(threads)
    assert not (work / "layout").exists()
    return results


def test_every_stage_passes(parity_results: list[StageResult]):
    failed = [r.line() for r in parity_results if not r.passed]
    assert not failed, "\n".join(failed)


def test_every_case_and_stage_family_is_covered(parity_results: list[StageResult], golden_dir: Path):
    cases = {r.case for r in parity_results} - {"repeats"}
    assert len(cases) == len(golden_cases(golden_dir)) >= 2
    assert not any(r.skipped for r in parity_results if r.case in cases)
    for case in cases:
        names = " | ".join(r.name for r in parity_results if r.case == case)
        for family in (
            "face preprocessing",
            "face net embedding",
            "text branch raw",
            "adapter tokens cond",
            "adapter tokens uncond",
            "anchor name-token column means",
            "anchor norms",
            "text tokens rescaled",
            "prompt input ids",
            "encode prompt embeds",
            "spliced prompt embeds",
            "scheduler timesteps",
            "adapter scale per step (sigma)",
            "noise pred cond",
            "scheduler step",
            "end-to-end final latents",
            "plain SDXL final latents",
        ):
            assert family in names, f"{case}: no stage {family!r}"


def test_several_images_per_prompt_and_missing_stages(parity_results: list[StageResult]):
    """Prompt-stage tensors repeated per image are compared repeat by repeat; sigmas 1 ulp off pass."""
    results = {r.name: r for r in parity_results if r.case == "repeats"}
    repeated = [name for name in results if name.endswith(f"(x{REPEATS} images)")]
    for stage in (
        "face net embedding",
        "text branch raw (tower 1)",
        "adapter tokens cond",
        "text tokens rescaled to anchor",
        "prompt input ids 1",
        "encode prompt embeds",
        "encode negative pooled",
        "spliced prompt embeds",
        "pooled prompt embeds",
    ):
        assert f"{stage} (x{REPEATS} images)" in repeated, stage
    assert all(results[name].passed for name in repeated)
    sigmas = results["scheduler sigmas"]
    assert sigmas.passed and sigmas.ulps == 1 and sigmas.max_abs > 0
    assert results["scheduler timesteps"].exact and results["added text embeds"].passed
    skipped = {name: r.skipped for name, r in results.items() if r.skipped}
    assert skipped == {
        "anchor name-token column means (tower 1)": "celeb_col_mean_1",
        "UNet steps (rest of the group)": "step_unet_encoder_hidden_states",
        "end-to-end latents": "step_latents_after and final_latents",
        "plain SDXL final latents (no UniID)": "plain_sdxl_final_latents",
    }
    assert (
        "SKIP (the golden file lacks celeb_col_mean_1)"
        in results["anchor name-token column means (tower 1)"].line()
    )


def test_cli_rejects_a_folder_without_golden_data(tmp_path: Path):
    from uniid_core.errors import UniIDError

    with pytest.raises(UniIDError, match="golden_case"):
        main([str(tmp_path)])


def test_compare_semantics():
    from uniid_core.parity import EXACT, STAGE_TOL, compare, compare_ulps

    ref = torch.tensor([0.0, 100.0])
    assert compare("c", "s", ref + torch.tensor([4e-5, 1e-3]), ref, STAGE_TOL).passed
    assert not compare("c", "s", ref + torch.tensor([6e-5, 0.0]), ref, STAGE_TOL).passed
    assert not compare("c", "s", ref + 1e-7, ref, EXACT).passed
    assert compare("c", "s", ref.clone(), ref, EXACT).passed
    assert not compare("c", "s", torch.tensor([float("nan"), 100.0]), ref, STAGE_TOL).passed
    mismatch = compare("c", "s", ref[:1], ref, STAGE_TOL)
    assert not mismatch.passed and "shape" in mismatch.name
    assert (
        "PASS" in compare("c", "s", ref, ref, EXACT).line()
        and "exact" in compare("c", "s", ref, ref, EXACT).line()
    )
    rows = torch.stack([ref, ref, ref])
    assert compare("c", "s", ref[None], rows, EXACT, repeats=True).passed
    rows[2, 0] += 1e-3
    one_off = compare("c", "s", ref[None], rows, STAGE_TOL, repeats=True)
    assert not one_off.passed and "(x3 images)" in one_off.name, "every repeat must be compared"
    assert not compare("c", "s", ref[None], torch.stack([ref, ref]), EXACT).passed, "repeats only on request"
    sigmas = torch.tensor([14.614642, 1.0, 0.029167, 0.0])
    up = torch.nextafter(sigmas, torch.full_like(sigmas, 99.0))
    assert compare_ulps("c", "sigmas", up, sigmas).passed
    assert "within 1 float32 ulp" in compare_ulps("c", "sigmas", up, sigmas).line()
    assert not compare_ulps("c", "sigmas", torch.nextafter(up, torch.full_like(up, 99.0)), sigmas).passed


def test_cli_exit_status_follows_the_stages(monkeypatch, capsys, tmp_path: Path):
    from uniid_core import parity

    good = StageResult("case1", "a", 0.0, 5e-5, 1e-5, True)
    bad = StageResult("case1", "b", 1.0, 5e-5, 1e-5, False)
    monkeypatch.setattr(parity, "run_parity", lambda *args, **kwargs: [good])
    assert parity.main([str(tmp_path)]) == 0
    monkeypatch.setattr(parity, "run_parity", lambda *args, **kwargs: [good, bad])
    assert parity.main([str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "1/2 stages passed, 1 FAILED" in out
    skip = StageResult("case1", "c", float("nan"), 0.0, 0.0, True, skipped="some_key")
    monkeypatch.setattr(parity, "run_parity", lambda *args, **kwargs: [good, skip])
    assert parity.main([str(tmp_path)]) == 0
    assert "1/1 stages passed, 1 skipped" in capsys.readouterr().out
