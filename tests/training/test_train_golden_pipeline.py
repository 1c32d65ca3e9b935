"""uniid_core.diffusers_pipeline end to end against the official outputs (golden cases 1 and 2, latents)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from uniid_core.anchor import load_names
from uniid_core.diffusers_pipeline import GenerationSettings, UniIDPipeline
from uniid_core.schedule import MergeSchedule

CASES = {
    "golden_case1": (MergeSchedule(merge_step=2), "normalized"),
    "golden_case2": (MergeSchedule(0, 1.0, 1.0, 1.0, 1.0), "add"),
}


@pytest.fixture(scope="module")
def golden_pipeline(golden_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> UniIDPipeline:
    """The official golden weights rebuilt on disk (~1.6 GB, ~15 s), loaded into our pipeline, removed."""
    from uniid_core.parity import write_layout

    layout = write_layout(golden_dir, tmp_path_factory.mktemp("golden"))
    pipeline = UniIDPipeline.from_pretrained(
        str(layout / "sdxl_tiny"),
        str(layout),
        str(layout / "face_recog_r100.pth"),
        names=load_names(golden_dir / "wiki_names_v2.txt"),
    )
    shutil.rmtree(layout)  # everything is in memory now; do not leave 1.6 GB in pytest's temp folders
    return pipeline


@pytest.mark.parametrize("case", sorted(CASES))
def test_pipeline_matches_official_final_latents(
    golden_pipeline: UniIDPipeline, golden_dir: Path, case: str
) -> None:
    reference = load_file(str(golden_dir / f"{case}.safetensors"))
    schedule, rescale = CASES[case]
    identity = golden_pipeline.encode_identity(reference["face_input_normalized"], "man")
    settings = GenerationSettings(
        prompt="A photo of a <class word> eating bread in front of the Eiffel Tower",
        num_inference_steps=4,
        height=128,
        width=128,
        seed=42,
        schedule=schedule,
        rescale=rescale,
    )
    latents = golden_pipeline(identity, settings, output_type="latent")
    torch.testing.assert_close(latents, reference["final_latents"], rtol=1e-4, atol=2e-4)
