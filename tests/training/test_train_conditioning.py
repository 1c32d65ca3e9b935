"""Trainer conditioning: per-sample prompts, prompt encoding, dropout rates, micro-conditioning."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.training.conftest import tiny_face_net, train_config
from training.components import (
    PromptCache,
    build_stage_model,
    draw_feature_dropout,
    encode_prompts,
    load_base,
    mask_features,
    time_ids,
)
from training.config import TrainConfig
from training.train import Trainer, sample_generators
from uniid_core.family import diffusers_cross_attn
from uniid_core.models.iresnet import FaceFeatures


def test_prompt_encoding_matches_diffusers_encode_prompt(tiny_base: Path) -> None:
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_base)
    prompts = ["a photo of a man", "a photo of a woman"]
    ours, pooled = encode_prompts(
        [pipe.tokenizer, pipe.tokenizer_2], [pipe.text_encoder, pipe.text_encoder_2], prompts, "cpu"
    )
    theirs = pipe.encode_prompt(prompts, device="cpu", do_classifier_free_guidance=False)
    torch.testing.assert_close(ours, theirs[0])
    torch.testing.assert_close(pooled, theirs[2])


def test_each_sample_gets_its_own_prompt(
    tmp_path: Path, tiny_base: Path, prepared: tuple[Path, dict]
) -> None:
    config = TrainConfig(**train_config(tmp_path, tiny_base, prepared[0], "text"))
    trainer = Trainer(config, face_net=tiny_face_net())
    trainer.prompts = PromptCache(config.prompt_template, trainer.base, ["man", "woman"], trainer.device)
    seen = []
    hook = trainer.base.unet.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(args[2].detach().clone()), with_kwargs=True
    )
    dataset = trainer.dataset
    batch = {
        "face": torch.stack([dataset.face(0), dataset.face(0)]),
        "latent_mean": torch.zeros(2, 4, 8, 8),
        "latent_std": torch.zeros(2, 4, 8, 8),
        "class_word": ["man", "woman"],
        "original_size": torch.tensor([[100, 80], [64, 64]]),
    }
    trainer.compute_loss(batch, sample_generators(0, 0, 0, 2))
    hook.remove()
    context = seen[0]
    expected, _ = encode_prompts(
        [trainer.base.tokenizer, trainer.base.tokenizer_2],
        [trainer.base.text_encoder, trainer.base.text_encoder_2],
        ["a photo of a man", "a photo of a woman"],
        "cpu",
    )
    n = config.num_text_tokens
    torch.testing.assert_close(context[:, n + 1 :], expected[:, 1 : 77 - n])
    assert not torch.allclose(context[0, n + 1 :], context[1, n + 1 :])


def test_feature_dropout_rates_are_honoured() -> None:
    draws = 200_000
    keep_text, keep_adapter = draw_feature_dropout(draws, torch.Generator().manual_seed(42), 0.05, 0.05, 0.05)
    rates = {
        "adapter_only": (~keep_adapter & keep_text).float().mean().item(),
        "text_only": (~keep_text & keep_adapter).float().mean().item(),
        "both": (~keep_text & ~keep_adapter).float().mean().item(),
    }
    tolerance = 5 * (0.05 * 0.95 / draws) ** 0.5
    for name, rate in rates.items():
        assert abs(rate - 0.05) < tolerance, (name, rate)
    assert abs((~keep_text).float().mean().item() - 0.10) < tolerance


def test_mask_features_zeroes_only_dropped_samples() -> None:
    features = FaceFeatures(torch.ones(3, 512), tuple(torch.ones(3, c, 4, 4) for c in (64, 128, 256, 512)))
    masked = mask_features(features, torch.tensor([True, False, True]))
    assert masked.embedding[1].abs().sum() == 0 and masked.embedding[0].sum() == 512
    assert all(h[1].abs().sum() == 0 and h[2].abs().sum() > 0 for h in masked.hidden_states)


def test_micro_conditioning_uses_original_size_and_fixed_target() -> None:
    ids = time_ids(torch.tensor([[1024, 768], [300, 500]]), 512)
    assert ids.tolist() == [[1024, 768, 0, 0, 512, 512], [300, 500, 0, 0, 512, 512]]


def test_adapter_ip_weights_start_from_unet_kv(tiny_base: Path) -> None:
    base = load_base(str(tiny_base))
    config = TrainConfig(stage="adapter", num_adapter_tokens=4, adapter_hidden_dim=64)
    model = build_stage_model(config, base.unet, (base.text_encoder, base.text_encoder_2))
    layers = diffusers_cross_attn(base.unet)
    for (k_ip, v_ip), (_, _, attn) in zip(model.adapter_branch.ip_weights(), layers, strict=True):
        assert torch.equal(k_ip, attn.to_k.weight) and torch.equal(v_ip, attn.to_v.weight)
    tokens = model.adapter_branch(FaceFeatures.zeros(1))
    assert tokens.shape == (1, 4, 192)


def test_example_configs_carry_the_official_recipe() -> None:
    from training.config import load_config

    folder = Path(__file__).resolve().parents[2] / "training" / "configs"
    text, adapter = load_config(folder / "text.yaml"), load_config(folder / "adapter.yaml")
    assert (text.learning_rate, text.train_batch_size, text.num_train_epochs) == (1e-4, 23, 12)
    assert (adapter.learning_rate, adapter.train_batch_size, adapter.num_train_epochs) == (1e-5, 19, 16)
    for config in (text, adapter):
        assert config.weight_decay == 1e-2 and config.seed == 42 and config.resolution == 512
        assert (config.adapter_drop_rate, config.text_drop_rate, config.both_drop_rate) == (0.05, 0.05, 0.05)
        assert config.prompt_template.format(class_word="man") == "a photo of a man"
