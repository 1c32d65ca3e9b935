"""UniID Apply (simple) and UniID Loader (all-in-one): the full nodes' results with fewer inputs.

The simple Apply at strength s samples the same latent as UniID Apply with the official schedule's scales
times s (KSampler on the mini SDXL UNet), strength 0 passes model and conditioning through, and the shipped
basic workflow (simple nodes) gives today's basic workflow's latent (full nodes) through ComfyUI's executor.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.comfyui.conftest import REPO, combo_choices, random_conditioning, random_identity
from tests.comfyui.test_comfy_executor import _Server, model_files  # noqa: F401  (module fixture)

BASIC_BEFORE = Path(__file__).parent / "data" / "uniid_basic_before_simple_nodes.json"
"""workflows/uniid_basic.json as shipped before the simple nodes: the three loaders and UniID Apply."""
STEPS = 7
"""Past the official merge step (5), so both schedule halves run."""


def _ksampler(comfy, model, positive, negative) -> torch.Tensor:
    (out,) = comfy.nodes.common_ksampler(
        model, 3, STEPS, 4.0, "euler", "normal", positive, negative, {"samples": torch.zeros(1, 4, 8, 8)}
    )
    return out["samples"]


@pytest.mark.parametrize("strength", [1.0, 0.35, 1.6])
def test_simple_apply_is_apply_with_the_official_scales_times_strength(
    comfy, pack, mini_sdxl, mini_uniid, small_clip, strength
):
    import comfy.utils as comfy_utils

    comfy_utils.set_progress_bar_enabled(False)
    identity = random_identity(mini_uniid, 21)
    positive, negative = random_conditioning(1), random_conditioning(2)
    simple = pack.apply_simple.UniIDApplySimple.execute(
        mini_sdxl, positive, mini_uniid, identity, small_clip, strength
    )
    full = pack.apply.UniIDApply.execute(
        mini_sdxl, positive, mini_uniid, identity, 5, 0.5 * strength, 1.8 * strength, 0.8 * strength,
        1.2 * strength, "normalized", 0.0, 1.0, clip=small_clip,
    )
    assert torch.equal(simple[1][0][0], full[1][0][0])
    latent = _ksampler(comfy, simple[0], simple[1], negative)
    assert torch.equal(latent, _ksampler(comfy, full[0], full[1], negative))
    assert (latent - _ksampler(comfy, mini_sdxl, positive, negative)).abs().max() > 1e-3


def test_simple_apply_at_strength_zero_passes_everything_through(pack, mini_sdxl, mini_uniid, small_clip):
    positive = random_conditioning(1)
    model, out = pack.apply_simple.UniIDApplySimple.execute(
        mini_sdxl, positive, mini_uniid, random_identity(mini_uniid, 22), small_clip, 0.0
    )
    assert model is mini_sdxl and out is positive


def test_simple_apply_has_only_its_six_inputs_and_the_rescaler_socket(comfy):
    node = comfy.nodes.NODE_CLASS_MAPPINGS["UniIDApplySimple"]
    inputs = node.INPUT_TYPES()
    assert list(inputs["required"]) == ["model", "positive", "uniid", "identity", "clip", "strength"]
    assert list(inputs.get("optional", {})) == ["rescaler"]
    assert inputs["optional"]["rescaler"][0] == "UNIID_RESCALER"
    spec = inputs["required"]["strength"][1]
    assert spec["default"] == 1.0 and spec["min"] == 0.0 and "unchanged" in spec["tooltip"]


def test_all_in_one_loader_gives_what_the_three_loaders_give(comfy, model_files):  # noqa: F811
    mappings = comfy.nodes.NODE_CLASS_MAPPINGS
    node = mappings["UniIDLoaderAllInOne"]
    for name, loader in (("uniid_name", "UniIDLoader"), ("face_net_name", "UniIDFaceNetLoader")):
        assert combo_choices(node, name) == combo_choices(mappings[loader], name)
    assert node.INPUT_TYPES()["required"]["backend"][1]["default"] == "mtcnn"
    weights, face_net, detector = node.execute(
        "small_uniid.safetensors", "insightface/face_small.safetensors", "pre-aligned"
    )
    (alone,) = mappings["UniIDLoader"].execute("small_uniid.safetensors", "auto")
    (net_alone,) = mappings["UniIDFaceNetLoader"].execute("insightface/face_small.safetensors")
    (detector_alone,) = mappings["UniIDFaceDetectorLoader"].execute("pre-aligned", "CPU", "buffalo_l", 320)
    assert weights.fingerprint == alone.fingerprint and weights.dtype_choice == alone.dtype_choice == "auto"
    theirs = net_alone.net.state_dict()
    for name, mine in face_net.net.state_dict().items():
        assert torch.equal(mine, theirs[name]), name
    assert (detector.backend, detector.settings) == (detector_alone.backend, detector_alone.settings)


def test_all_in_one_loader_reports_a_missing_file_like_the_loaders(comfy):
    from uniid_core.errors import CheckpointError

    node = comfy.nodes.NODE_CLASS_MAPPINGS["UniIDLoaderAllInOne"]
    with pytest.raises(CheckpointError, match=r"'absent\.safetensors' was not found in the 'uniid' model"):
        node.execute("absent.safetensors", "insightface/face_small.safetensors", "pre-aligned")


def _on_small_models(workflow: dict, prefix: str) -> dict:
    """A UI workflow as the API prompt it queues, on the test's small models, saving the final latent."""
    scripts = str(REPO / "scripts")
    if scripts not in sys.path:
        sys.path.insert(0, scripts)
    import workflow_check

    prompt = workflow_check.ui_to_api(workflow, workflow_check.load_snapshot()["nodes"])
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "CheckpointLoaderSimple":
            node.update(class_type="UniIDTestModelSource", inputs={})
        if "uniid_name" in inputs:
            inputs["uniid_name"] = "small_uniid.safetensors"
        if "face_net_name" in inputs:
            inputs["face_net_name"] = "insightface/face_small.safetensors"
        if "backend" in inputs:
            inputs["backend"] = "pre-aligned"
        if node["class_type"] == "KSampler":
            inputs["steps"] = STEPS
        if node["class_type"] == "EmptyLatentImage":
            inputs.update(width=64, height=64)
    decode = next(k for k, node in prompt.items() if node["class_type"] == "VAEDecode")
    samples = prompt.pop(decode)["inputs"]["samples"]
    save = next(node for node in prompt.values() if node["class_type"] == "SaveImage")
    save.update(class_type="SaveLatent", inputs={"samples": samples, "filename_prefix": prefix})
    return prompt


def _run_for_latent(comfy, prompt: dict, prefix: str) -> torch.Tensor:
    import execution

    valid, error, outputs, node_errors = asyncio.run(execution.validate_prompt(prefix, prompt, None))
    assert valid, (error, node_errors)
    executor = execution.PromptExecutor(_Server(), cache_type=False)
    executor.execute(prompt, prefix, {}, outputs)
    errors = [data for event, data in executor.status_messages if event == "execution_error"]
    assert executor.success, errors
    (saved,) = (comfy.base / "output").glob(f"{prefix}_*.latent")
    return load_file(str(saved))["latent_tensor"]


def test_basic_workflow_on_simple_nodes_gives_the_image_of_the_full_nodes(comfy, model_files):  # noqa: F811
    """Shipped uniid_basic.json (all-in-one loader, simple Apply at 1) == the basic workflow before it."""
    before = json.loads(BASIC_BEFORE.read_text())
    now = json.loads((REPO / "workflows" / "uniid_basic.json").read_text())
    types_before = {n["type"] for n in before["nodes"]}
    types_now = {n["type"] for n in now["nodes"]}
    assert {"UniIDLoader", "UniIDFaceNetLoader", "UniIDFaceDetectorLoader", "UniIDApply"} <= types_before
    assert {"UniIDLoaderAllInOne", "UniIDApplySimple"} <= types_now
    assert not types_now & {"UniIDLoader", "UniIDFaceNetLoader", "UniIDFaceDetectorLoader", "UniIDApply"}
    full = _run_for_latent(comfy, _on_small_models(before, "basic_full"), "basic_full")
    simple = _run_for_latent(comfy, _on_small_models(now, "basic_simple"), "basic_simple")
    assert full.shape == (1, 4, 8, 8) and full.abs().max() > 0
    assert torch.equal(full, simple)
