"""uniid_core.diffusers_pipeline: the merge schedule is exact, negatives carry no identity text tokens."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.training.conftest import tiny_face_net
from uniid_core.diffusers_pipeline import GenerationSettings, UniIDPipeline
from uniid_core.diffusers_processor import uniid_processors
from uniid_core.errors import UniIDError
from uniid_core.family import diffusers_layer_widths
from uniid_core.models.uniid import UniIDConfig, UniIDModel
from uniid_core.schedule import MergeSchedule
from uniid_core.splice import splice_text_tokens


@pytest.fixture(scope="module")
def pipeline(tiny_base: Path) -> UniIDPipeline:
    """Tiny SDXL + a random two-branch UniID model + the small face net."""
    from diffusers import StableDiffusionXLPipeline

    sdxl = StableDiffusionXLPipeline.from_pretrained(tiny_base)
    sdxl.set_progress_bar_config(disable=True)
    torch.manual_seed(3)
    config = UniIDConfig(
        num_text_tokens=2,
        num_adapter_tokens=4,
        adapter_hidden_dim=64,
        text_widths=(64, 128),
        context_dim=192,
        layer_widths=diffusers_layer_widths(sdxl.unet),
    )
    model = UniIDModel(config)
    with torch.no_grad():
        torch.nn.init.normal_(model.adapter_branch.adapter_resampler.proj_out.weight, std=0.05)
    model.refresh_fingerprint()
    return UniIDPipeline(sdxl, model.eval(), tiny_face_net(), names=["Tom Hanks", "Ada Lovelace", "Pele"])


@pytest.mark.parametrize("merge_step", [0, 2])
def test_merge_schedule_switches_text_and_adapter_scales(pipeline: UniIDPipeline, merge_step: int) -> None:
    faces = torch.rand(1, 3, 112, 112) * 2 - 1
    identity = pipeline.encode_identity(faces, "woman")
    schedule = MergeSchedule(merge_step=merge_step)
    settings = GenerationSettings(
        prompt="a photo of a <class word>", num_inference_steps=3, height=64, width=64, schedule=schedule
    )
    calls = []

    def record(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        scales = {p.scale for p in uniid_processors(module)}
        rescales = {p.rescaler.strategy for p in uniid_processors(module)}
        calls.append((kwargs["encoder_hidden_states"].clone(), scales, rescales))

    hook = pipeline.sdxl.unet.register_forward_pre_hook(record, with_kwargs=True)
    try:
        pipeline(identity, settings, output_type="latent")
    finally:
        hook.remove()
    assert {p.rescaler.strategy for p in uniid_processors(pipeline.sdxl.unet)} == {"normalized"}
    positive, negative, _, _ = pipeline.sdxl.encode_prompt(
        "a photo of a woman", device="cpu", negative_prompt=settings.negative_prompt
    )
    tokens = identity.text_tokens_for_prompt()
    adapter = identity.adapter_tokens
    empty = pipeline.model.negative_adapter_tokens()
    assert len(calls) == 3
    for i, (context, scales, rescales) in enumerate(calls):
        before = i < merge_step
        text_scale = schedule.text_before if before else schedule.text_after
        expected = torch.cat([splice_text_tokens(positive, tokens, text_scale), adapter], dim=1)
        torch.testing.assert_close(context[1:], expected)
        torch.testing.assert_close(context[:1], torch.cat([negative, empty], dim=1))
        assert scales == {schedule.adapter_before if before else schedule.adapter_after}
        assert rescales == {"normalized"}


def test_text_tokens_are_anchor_rescaled(pipeline: UniIDPipeline) -> None:
    identity = pipeline.encode_identity(torch.rand(1, 3, 112, 112) * 2 - 1)
    anchor = pipeline.anchor()
    norms = identity.text_tokens_for_prompt()[0].split([64, 128], dim=-1)
    torch.testing.assert_close(norms[0].norm(dim=-1), anchor.norms_l)
    torch.testing.assert_close(norms[1].norm(dim=-1), anchor.norms_g)


def test_same_seed_same_image(pipeline: UniIDPipeline) -> None:
    identity = pipeline.encode_identity(torch.zeros(1, 3, 112, 112))
    settings = GenerationSettings(prompt="portrait", num_inference_steps=2, height=64, width=64, seed=5)
    first = pipeline(identity, settings, output_type="latent")
    torch.testing.assert_close(first, pipeline(identity, settings, output_type="latent"), rtol=0, atol=0)
    settings.seed = 6
    assert not torch.allclose(first, pipeline(identity, settings, output_type="latent"))


def test_generation_takes_the_rescaler_objects_of_the_nodes(pipeline: UniIDPipeline) -> None:
    """A Rescaler with layer weights reaches every processor for the run, all-ones weights give the plain
    image, a zero weight everywhere gives the image without the adapter, and the processors are put back."""
    from uniid_core.rescaler import Rescaler, parse_layer_weights, rescaler_from_text

    faces = torch.rand(1, 3, 112, 112, generator=torch.Generator().manual_seed(2)) * 2 - 1
    identity = pipeline.encode_identity(faces)
    settings = GenerationSettings(prompt="portrait", num_inference_steps=2, height=64, width=64, seed=3)
    plain = pipeline(identity, settings, output_type="latent")
    settings.rescale = rescaler_from_text("normalized", "", "input:1, middle:1, output:1")
    assert torch.equal(pipeline(identity, settings, output_type="latent"), plain)

    seen = []
    hook = pipeline.sdxl.unet.register_forward_pre_hook(
        lambda module, args: seen.append({(p.rescaler, p.layer_weight) for p in uniid_processors(module)})
    )
    settings.rescale = Rescaler().with_layer_weights(parse_layer_weights("middle:0.5, all:0"))
    try:
        silenced = pipeline(identity, settings, output_type="latent")
    finally:
        hook.remove()
    assert seen and all(s == {(settings.rescale, 0.0)} for s in seen)
    processors = uniid_processors(pipeline.sdxl.unet)
    assert {(p.rescaler, p.layer_weight) for p in processors} == {(Rescaler(), 1.0)}
    settings.rescale = "normalized"
    settings.schedule = MergeSchedule(adapter_before=0.0, adapter_after=0.0)
    assert torch.equal(silenced, pipeline(identity, settings, output_type="latent"))


def test_identity_batch_gives_image_i_identity_i(pipeline: UniIDPipeline) -> None:
    """combine = per_image: two faces, two images; each image's rows carry its own identity's tokens."""
    faces = torch.rand(2, 3, 112, 112, generator=torch.Generator().manual_seed(4)) * 2 - 1
    batch = pipeline.encode_identity(faces, "person", combine="per_image")
    assert batch.count == 2
    settings = GenerationSettings(prompt="portrait", num_inference_steps=1, height=64, width=64, num_images=2)
    contexts = []
    hook = pipeline.sdxl.unet.register_forward_pre_hook(
        lambda module, args, kwargs: contexts.append(kwargs["encoder_hidden_states"].clone()),
        with_kwargs=True,
    )
    try:
        pipeline(batch, settings, output_type="latent")
    finally:
        hook.remove()
    (context,) = contexts
    tokens, adapter = batch.text_tokens_for_prompt(), batch.adapter_tokens
    for image in range(2):
        row = 2 + image  # negatives first, then the positives
        text = context[row, 1 : 1 + tokens.shape[1]] / settings.schedule.text_before  # step 0: before
        torch.testing.assert_close(text, tokens[image])
        torch.testing.assert_close(context[row, -adapter.shape[1] :], adapter[image])
    with pytest.raises(UniIDError, match="holds 2 identities but 3 image"):
        pipeline(
            batch,
            GenerationSettings(prompt="portrait", num_inference_steps=1, height=64, width=64, num_images=3),
            output_type="latent",
        )
