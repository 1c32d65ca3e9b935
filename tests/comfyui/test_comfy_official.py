"""The official script's result through ComfyUI's own sampler: golden tiny SDXL, UniID Apply, the official
schedule and noise nodes, SamplerCustomAdvanced -> the official final latents; KSampler's scheduler entry."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.comfyui.conftest import REPO
from tests.comfyui.test_comfy_executor import _Server, model_files  # noqa: F401  (module fixture)
from tests.comfyui.test_comfy_parity import CASES, golden_unet, golden_uniid  # noqa: F401  (module fixtures)

SEED, CFG, STEPS, SIZE = 42, 7.5, 4, 128  # the golden cases' settings (golden README)


@pytest.fixture(scope="module")
def custom_sampler(comfy):
    """ComfyUI's custom-sampling nodes (SamplerCustomAdvanced, CFGGuider, KSamplerSelect, RandomNoise)."""
    import comfy_extras.nodes_custom_sampler as custom

    return custom


def _conditioning(embeds: torch.Tensor, pooled: torch.Tensor) -> list:
    """CONDITIONING as an SDXL text encoder gives it, sized for the golden 128x128 image."""
    size = {"width": SIZE, "height": SIZE, "target_width": SIZE, "target_height": SIZE}
    return [[embeds, {"pooled_output": pooled, "crop_w": 0, "crop_h": 0, **size}]]


def _apply_case(pack, unet, uniid, g: dict, case: int) -> tuple:
    """UniID Apply with the golden identity tokens and the case's schedule -> (model, positive, negative)."""
    from uniid_core.identity import Identity

    params = CASES[case]
    identity = Identity(
        text_tokens=torch.cat([g["text_branch_raw_1"], g["text_branch_raw_2"]], -1),
        text_tokens_rescaled=g["text_branch_rescaled"],
        adapter_tokens=g["adapter_tokens_cond"],
        class_word="man",
        model_fingerprint=uniid.fingerprint,
    )
    positive = _conditioning(g["encode_prompt_prompt_embeds"], g["encode_prompt_pooled_prompt_embeds"])
    negative = _conditioning(
        g["encode_prompt_negative_prompt_embeds"], g["encode_prompt_negative_pooled_prompt_embeds"]
    )
    model, spliced = pack.apply.UniIDApply.execute(
        unet,
        positive,
        uniid,
        identity,
        params["merge_step"],
        *params["text"],
        *params["adapter"],
        params["rescale"],
        0.0,
        1.0,
    )
    return model, spliced, negative


def _capture_unet_inputs(model) -> list:
    """Record (x, timestep) of every UNet call through a diffusion-model wrapper (read-only)."""
    import comfy.patcher_extension as ext

    calls = []

    def capture(executor, x, timesteps, *args, **kwargs):
        calls.append((x.clone(), timesteps.clone()))
        return executor(x, timesteps, *args, **kwargs)

    ext.add_wrapper_with_key(
        ext.WrappersMP.DIFFUSION_MODEL,
        "official_capture",
        capture,
        model.model_options,
        is_model_options=True,
    )
    return calls


@pytest.mark.parametrize("case", [1, 2])
def test_official_nodes_reproduce_golden_final_latents(
    comfy,
    pack,
    golden_dir,
    golden_unet,  # noqa: F811
    golden_uniid,  # noqa: F811
    custom_sampler,
    case,
):
    g = load_file(str(golden_dir / f"golden_case{case}.safetensors"))
    model, positive, negative = _apply_case(pack, golden_unet, golden_uniid, g, case)
    calls = _capture_unet_inputs(model)
    (sigmas,) = pack.official.UniIDOfficialSchedule.execute(model, STEPS, "euler")
    assert torch.equal(sigmas, g["sigmas"])
    (noise,) = pack.official.UniIDOfficialNoise.execute(model, sigmas, SEED, "cpu")
    (guider,) = custom_sampler.CFGGuider().get_guider(model, positive, negative, CFG)
    (sampler,) = custom_sampler.KSamplerSelect().get_sampler("euler")
    latent = {"samples": torch.zeros(1, 4, SIZE // 8, SIZE // 8)}
    with torch.no_grad():
        output, _ = custom_sampler.SamplerCustomAdvanced().sample(noise, guider, sampler, sigmas, latent)

    assert [t[0].item() for _, t in calls] == g["step_unet_timestep"].tolist()
    inputs = torch.stack([x for x, _ in calls])  # UNet inputs x / sqrt(1 + sigma^2), both CFG halves
    torch.testing.assert_close(inputs[0], g["step_unet_sample"][0], atol=1e-6, rtol=0)
    torch.testing.assert_close(inputs, g["step_unet_sample"], atol=5e-4, rtol=1e-5)
    final = golden_unet.model.process_latent_in(output["samples"])  # ComfyUI returns latents unscaled
    torch.testing.assert_close(final, g["final_latents"], atol=5e-4, rtol=1e-5)
    print(f"case {case}: max |final - golden| = {(final - g['final_latents']).abs().max().item():.3g}")


@pytest.mark.parametrize("start", ["below_sigma_max", "at_sigma_max"])
def test_comfy_noise_scaling_lands_on_init_noise_sigma(
    comfy,
    pack,
    golden_dir,
    golden_unet,  # noqa: F811
    custom_sampler,
    start,
):
    """Through ComfyUI's sampler the first UNet input is the unit noise, x / sqrt(1 + sigma_0^2), both where
    ComfyUI scales by sigma_0 (the node pre-scales) and where sigma_0 reaches sigma_max (factor 1)."""
    from uniid_core.official_schedule import official_noise, official_sigmas

    g = load_file(str(golden_dir / "golden_case1.safetensors"))
    sigmas = official_sigmas(6)
    if start == "at_sigma_max":  # 1000 steps start at the table's last entry, ComfyUI's sigma_max
        sigmas = official_sigmas(1000)[[0, 500, 1000]]
    model = golden_unet.clone()
    calls = _capture_unet_inputs(model)
    positive = _conditioning(g["encode_prompt_prompt_embeds"], g["encode_prompt_pooled_prompt_embeds"])
    (noise,) = pack.official.UniIDOfficialNoise.execute(model, sigmas, SEED, "cpu")
    assert (noise.factor == 1.0) == (start == "at_sigma_max")
    (guider,) = custom_sampler.CFGGuider().get_guider(model, positive, positive, 1.0)
    (sampler,) = custom_sampler.KSamplerSelect().get_sampler("euler")
    latent = {"samples": torch.zeros(1, 4, SIZE // 8, SIZE // 8)}
    with torch.no_grad():
        custom_sampler.SamplerCustomAdvanced().sample(noise, guider, sampler, sigmas[:2], latent)
    unit = official_noise((1, 4, SIZE // 8, SIZE // 8), SEED)
    torch.testing.assert_close(calls[0][0], unit, atol=2e-6, rtol=0)


def test_ksampler_lists_official_schedulers_and_matches_the_custom_graph(
    comfy,
    pack,
    golden_dir,
    golden_unet,  # noqa: F811
    golden_uniid,  # noqa: F811
    custom_sampler,
):
    """KSampler with 'uniid_official' = SamplerCustomAdvanced with the official sigmas and ComfyUI's own
    noise; only the first-noise scale separates it from the official result (3% at 4 steps)."""
    for node in ("KSampler", "KSamplerAdvanced"):
        choices = comfy.nodes.NODE_CLASS_MAPPINGS[node].INPUT_TYPES()["required"]["scheduler"][0]
        assert {"uniid_official", "uniid_official_ddim"} <= set(choices)
    basic = custom_sampler.BasicScheduler()
    assert "uniid_official_ddim" in basic.INPUT_TYPES()["required"]["scheduler"][0]
    (ddim,) = basic.get_sigmas(golden_unet, "uniid_official_ddim", 6, 1.0)
    (official_ddim,) = pack.official.UniIDOfficialSchedule.execute(golden_unet, 6, "ddim")
    assert torch.equal(ddim, official_ddim) and ddim[-1] > 0

    g = load_file(str(golden_dir / "golden_case1.safetensors"))
    model, positive, negative = _apply_case(pack, golden_unet, golden_uniid, g, 1)
    latent = {"samples": torch.zeros(1, 4, SIZE // 8, SIZE // 8)}
    with torch.no_grad():
        (ksampled,) = comfy.nodes.common_ksampler(
            model, SEED, STEPS, CFG, "euler", "uniid_official", positive, negative, latent
        )
        (sigmas,) = pack.official.UniIDOfficialSchedule.execute(model, STEPS, "euler")
        (guider,) = custom_sampler.CFGGuider().get_guider(model, positive, negative, CFG)
        (sampler,) = custom_sampler.KSamplerSelect().get_sampler("euler")
        (noise,) = custom_sampler.RandomNoise().get_noise(SEED)
        custom, _ = custom_sampler.SamplerCustomAdvanced().sample(noise, guider, sampler, sigmas, latent)
    torch.testing.assert_close(ksampled["samples"], custom["samples"], atol=1e-6, rtol=0)
    off = (golden_unet.model.process_latent_in(ksampled["samples"]) - g["final_latents"]).abs().max()
    assert off > 5e-2, "KSampler's sigma_0 noise scaling should differ visibly from the official one"


def test_schedule_refuses_a_zero_terminal_snr_model(comfy, pack, golden_unet):  # noqa: F811
    from comfy_extras.nodes_model_advanced import ModelSamplingDiscrete

    from uniid_core.errors import UniIDError

    (zsnr,) = ModelSamplingDiscrete().patch(golden_unet, "eps", True)
    with pytest.raises(UniIDError, match="not the scaled-linear discrete schedule"):
        pack.official.UniIDOfficialSchedule.execute(zsnr, 30, "euler")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown on machines without CUDA")
def test_cuda_generator_without_cuda_says_what_to_pick(comfy, pack, golden_unet):  # noqa: F811
    from uniid_core.errors import UniIDError

    sigmas = torch.tensor([4.1, 0.0])
    with pytest.raises(UniIDError, match="choose 'cpu'"):
        pack.official.UniIDOfficialNoise.execute(golden_unet, sigmas, SEED, "cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (inference.py draws there)")
def test_cuda_generator_draws_the_official_noise(comfy, pack, golden_unet):  # noqa: F811
    from diffusers.utils.torch_utils import randn_tensor

    from uniid_core.official_schedule import noise_prescale, official_sigmas

    sigmas = official_sigmas(30)
    (noise,) = pack.official.UniIDOfficialNoise.execute(golden_unet, sigmas, SEED, "cuda")
    drawn = noise.generate_noise({"samples": torch.zeros(1, 4, 128, 128)})
    generator = torch.Generator("cuda").manual_seed(SEED)
    dtype = golden_unet.model_dtype()
    official = randn_tensor((1, 4, 128, 128), generator=generator, device=torch.device("cuda"), dtype=dtype)
    sigma_max = float(golden_unet.get_model_object("model_sampling").sigma_max)
    expected = (official.cpu().double() * noise_prescale(sigmas, sigma_max)).float()
    assert drawn.device.type == "cpu" and torch.equal(drawn, expected)


def _shipped_prompt(repo: Path) -> dict:
    """The shipped official-settings workflow as an API prompt, on the test's small stand-in models."""
    scripts = str(repo / "scripts")
    if scripts not in sys.path:
        sys.path.insert(0, scripts)
    import workflow_check

    workflow = json.loads((repo / "workflows" / "uniid_official_settings.json").read_text())
    prompt = workflow_check.ui_to_api(workflow, workflow_check.load_snapshot()["nodes"])
    by_type = {node["class_type"]: node for node in prompt.values()}
    by_type["CheckpointLoaderSimple"].update(class_type="UniIDTestModelSource", inputs={})
    by_type["UniIDLoader"]["inputs"]["uniid_name"] = "small_uniid.safetensors"
    by_type["UniIDFaceNetLoader"]["inputs"]["face_net_name"] = "insightface/face_small.safetensors"
    by_type["UniIDFaceDetectorLoader"]["inputs"]["backend"] = "pre-aligned"
    by_type["UniIDOfficialNoise"]["inputs"]["generator"] = "cpu"
    by_type["UniIDOfficialSchedule"]["inputs"]["steps"] = 6
    by_type["EmptyLatentImage"]["inputs"].update(width=64, height=64)
    decode = next(k for k, node in prompt.items() if node["class_type"] == "VAEDecode")
    samples = prompt.pop(decode)["inputs"]["samples"]
    by_type["SaveImage"].update(
        class_type="SaveLatent", inputs={"samples": samples, "filename_prefix": "uniid_official_test"}
    )
    return prompt


def test_shipped_official_workflow_runs_through_comfy_executor(comfy, model_files, custom_sampler):  # noqa: F811
    """The shipped graph (official nodes -> SamplerCustomAdvanced) validates and executes in ComfyUI."""
    import execution

    names = ("SamplerCustomAdvanced", "CFGGuider", "KSamplerSelect")
    added = {n: getattr(custom_sampler, n) for n in names if n not in comfy.nodes.NODE_CLASS_MAPPINGS}
    comfy.nodes.NODE_CLASS_MAPPINGS.update(added)
    try:
        prompt = _shipped_prompt(REPO)
        valid, error, outputs, node_errors = asyncio.run(execution.validate_prompt("official", prompt, None))
        assert valid, (error, node_errors)
        executor = execution.PromptExecutor(_Server(), cache_type=False)
        executor.execute(prompt, "official", {}, outputs)
        errors = [data for event, data in executor.status_messages if event == "execution_error"]
        assert executor.success, errors
    finally:
        for name in added:
            comfy.nodes.NODE_CLASS_MAPPINGS.pop(name, None)
    saved = list((comfy.base / "output").glob("uniid_official_test*.latent"))
    assert len(saved) == 1
    latent = load_file(str(saved[0]))["latent_tensor"]
    assert latent.shape == (1, 4, 8, 8) and torch.isfinite(latent).all() and latent.abs().max() > 0
