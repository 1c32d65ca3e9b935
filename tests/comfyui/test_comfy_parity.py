"""Parity: the golden tiny SDXL UNet patched through ComfyUI reproduces the official noise predictions."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from safetensors.torch import load_file

from tests.comfyui.conftest import SDXL_SMALL_UNET

GOLDEN_UNET = {  # the golden sdxl_tiny UNet in ComfyUI terms: SDXL's layout with 1/2 transformer depths
    **SDXL_SMALL_UNET,
    "image_size": 16,
    "transformer_depth": [0, 0, 1, 1, 2, 2],
    "transformer_depth_middle": 2,
    "transformer_depth_output": [0, 0, 0, 1, 1, 1, 2, 2, 2],
}
CASES = {
    1: dict(merge_step=2, rescale="normalized", text=(0.5, 1.8), adapter=(0.8, 1.2)),
    2: dict(merge_step=0, rescale="add", text=(1.0, 1.0), adapter=(1.0, 1.0)),
}


def _make_weights(golden_dir):
    spec = importlib.util.spec_from_file_location("golden_make_weights", golden_dir / "make_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def golden_unet(comfy, golden_dir):
    """The golden diffusers UNet loaded into ComfyUI's SDXL UNet through ComfyUI's key map."""
    import comfy.utils

    rule = _make_weights(golden_dir)
    diffusers_sd = rule.make_state_dict(rule.load_spec(str(golden_dir / "specs/unet.json"))["tensors"], 30000)
    config = comfy.supported_models.SDXL(dict(GOLDEN_UNET))
    config.unet_config["num_head_channels"] = GOLDEN_UNET["num_head_channels"]
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({})
    key_map = comfy.utils.unet_to_diffusers(GOLDEN_UNET)
    converted = {
        comfy_key: diffusers_sd[diff_key]
        for diff_key, comfy_key in key_map.items()
        if diff_key in diffusers_sd
    }
    missing, unexpected = model.diffusion_model.load_state_dict(converted, strict=False)
    assert not missing and not unexpected and len(converted) == len(diffusers_sd)
    return comfy.model_patcher.ModelPatcher(model, torch.device("cpu"), torch.device("cpu"))


@pytest.fixture(scope="module")
def golden_uniid(pack, golden_dir):
    """UniID adapter weights from the golden rule, built by uniid_core's checkpoint code."""
    from uniid_core.checkpoint import uniid_from_tensors

    rule = _make_weights(golden_dir)
    spec = rule.load_spec(str(golden_dir / "specs/adapter_branch.json"))
    model = uniid_from_tensors(rule.make_state_dict(spec["tensors"], spec["seed"]), "golden adapter rule")
    return pack.sockets.UniIDWeights(model=model, source="golden", dtype_choice="fp32")


def _replay(model_k, x, sigmas, extra_args=None, callback=None, disable=None):
    """A sampler that evaluates every step once (the golden UNet inputs are swapped in by a wrapper)."""
    for i in range(len(sigmas) - 1):
        model_k(x, sigmas[i] * x.new_ones([x.shape[0]]), **extra_args)
        callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": x})
    return x


@pytest.mark.parametrize("case", [1, 2])
def test_golden_noise_predictions(comfy, pack, golden_dir, golden_unet, golden_uniid, case):
    """Through ComfyUI's CFGGuider and sampler machinery, every step's cond and uncond noise predictions
    equal the official ones (the golden UNet inputs are fed in; scales come from the step tracking)."""
    import comfy.patcher_extension as ext
    import comfy.samplers

    from uniid_core.identity import Identity

    g = load_file(str(golden_dir / f"golden_case{case}.safetensors"))
    params = CASES[case]
    assert g["step_text_branch_scale"].tolist() == pytest.approx(
        [params["text"][0]] * params["merge_step"] + [params["text"][1]] * (4 - params["merge_step"])
    )
    identity = Identity(
        text_tokens=torch.cat([g["text_branch_raw_1"], g["text_branch_raw_2"]], -1),
        text_tokens_rescaled=g["text_branch_rescaled"],
        adapter_tokens=g["adapter_tokens_cond"],
        class_word="man",
        model_fingerprint=golden_uniid.fingerprint,
    )
    positive = [
        [g["encode_prompt_prompt_embeds"], {"pooled_output": g["encode_prompt_pooled_prompt_embeds"]}]
    ]
    negative = [
        [
            g["encode_prompt_negative_prompt_embeds"],
            {"pooled_output": g["encode_prompt_negative_pooled_prompt_embeds"]},
        ]
    ]
    model, spliced = pack.apply.UniIDApply.execute(
        golden_unet,
        positive,
        golden_uniid,
        identity,
        params["merge_step"],
        *params["text"],
        *params["adapter"],
        params["rescale"],
        0.0,
        1.0,
    )
    state = model.model_options["transformer_options"]["patches_replace"]["attn2"][("middle", 0, 0)].state
    torch.testing.assert_close(state.token_sets[1:], g["adapter_tokens_uncond"], atol=5e-5, rtol=1e-5)
    captured = []

    def capture(executor, x, timesteps, context, y, control, transformer_options, **kwargs):
        sample = g["step_unet_sample"][len(captured)]
        out = executor(sample, timesteps, context, y, control, transformer_options, **kwargs)
        captured.append((timesteps, list(transformer_options["cond_or_uncond"]), out))
        return out

    model = model.clone()
    ext.add_wrapper_with_key(
        ext.WrappersMP.DIFFUSION_MODEL, "golden_capture", capture, model.model_options, is_model_options=True
    )
    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(spliced, negative)
    guider.set_cfg(7.5)
    start = torch.zeros(1, 4, 16, 16)
    guider.sample(start, start, comfy.samplers.KSAMPLER(_replay), g["sigmas"], seed=0)
    assert len(captured) == 4
    for step, (timesteps, chunks, eps) in enumerate(captured):
        assert timesteps.tolist() == [g["step_unet_timestep"][step].item()] * 2
        rows = {chunk: eps[i : i + 1] for i, chunk in enumerate(chunks)}
        torch.testing.assert_close(rows[1], g["step_noise_pred_uncond"][step], atol=5e-5, rtol=0)
        torch.testing.assert_close(rows[0], g["step_noise_pred_cond"][step], atol=5e-5, rtol=0)


def test_plain_unet_matches_golden_without_uniid(comfy, golden_dir, golden_unet):
    g = load_file(str(golden_dir / "golden_case1.safetensors"))
    context = torch.cat([g["encode_prompt_negative_prompt_embeds"], g["encode_prompt_prompt_embeds"]])
    embedder = golden_unet.model.embedder
    y = torch.cat(
        [g["add_text_embeds"], torch.flatten(embedder(g["add_time_ids"].flatten()).reshape(2, -1), 1)], 1
    )
    with torch.no_grad():
        eps = golden_unet.model.diffusion_model(
            g["step_unet_sample"][0], g["step_unet_timestep"][:1].expand(2), context=context, y=y
        )
    torch.testing.assert_close(eps, g["plain_sdxl_step_noise_pred"][0], atol=5e-5, rtol=0)


def test_anchor_from_comfy_clip_matches_golden(comfy, pack, golden_dir):
    """The default norm anchor through ComfyUI's CLIP modules and tokenizers equals the official one."""
    import types

    import comfy.sd1_clip
    import comfy.sdxl_clip

    rule = _make_weights(golden_dir)
    towers = {}
    for name, folder, pad in (("clip_l", "text_encoder", 49407), ("clip_g", "text_encoder_2", 0)):
        config = json.loads((golden_dir / "sdxl_tiny" / folder / "config.json").read_text())
        model = comfy.sd1_clip.SDClipModel(
            layer="last",
            textmodel_json_config=config,
            dtype=torch.float32,
            special_tokens={"start": 49406, "end": 49407, "pad": pad},
        )
        spec = rule.load_spec(str(golden_dir / "specs" / f"{folder}.json"))
        missing, _ = model.transformer.load_state_dict(
            rule.make_state_dict(spec["tensors"], spec["seed"]), strict=False
        )
        assert not [k for k in missing if "text_projection" not in k]
        towers[name] = model
    holder = torch.nn.Module()
    holder.clip_l, holder.clip_g = towers["clip_l"], towers["clip_g"]
    clip = types.SimpleNamespace(
        cond_stage_model=holder,
        tokenizer=comfy.sdxl_clip.SDXLTokenizer(),
        patcher=comfy.model_patcher.ModelPatcher(holder, torch.device("cpu"), torch.device("cpu")),
    )
    anchor = pack.anchor_clip.anchor_for_clip(clip, 3)  # the default names list is the official one
    g = load_file(str(golden_dir / "golden_case1.safetensors"))
    torch.testing.assert_close(anchor.norms_l, g["celeb_anchor_norm_1"].flatten(), atol=5e-5, rtol=1e-5)
    torch.testing.assert_close(anchor.norms_g, g["celeb_anchor_norm_2"].flatten(), atol=5e-5, rtol=1e-5)
    raw = torch.cat([g["text_branch_raw_1"], g["text_branch_raw_2"]], -1)
    torch.testing.assert_close(anchor.rescale(raw), g["text_branch_rescaled"], atol=5e-5, rtol=1e-5)
