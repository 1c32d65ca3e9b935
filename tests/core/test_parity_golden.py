"""Every stage of every golden case matches the official outputs (python -m uniid_core.parity in pytest)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from uniid_core.parity import StageResult, golden_cases, main, run_parity


@pytest.fixture(scope="module")
def parity_results(golden_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[StageResult]:
    """One parity run over all cases (the ~1.6 GB layout is written once and removed afterwards)."""
    work = tmp_path_factory.mktemp("parity")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # OpenMP threads on a shared, oversubscribed CPU slow tiny models 10-100x
    try:
        results = run_parity(golden_dir, work)
    finally:
        torch.set_num_threads(threads)
    assert not (work / "layout").exists()
    return results


def test_every_stage_passes(parity_results: list[StageResult]):
    failed = [r.line() for r in parity_results if not r.passed]
    assert not failed, "\n".join(failed)


def test_every_case_and_stage_family_is_covered(parity_results: list[StageResult], golden_dir: Path):
    cases = {r.case for r in parity_results}
    assert len(cases) == len(golden_cases(golden_dir)) >= 2
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


def test_cli_rejects_a_folder_without_golden_data(tmp_path: Path):
    from uniid_core.errors import UniIDError

    with pytest.raises(UniIDError, match="golden_case"):
        main([str(tmp_path)])


def test_compare_semantics():
    from uniid_core.parity import EXACT, STAGE_TOL, compare

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
