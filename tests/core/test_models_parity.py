"""Parity of the face net and both branches with the official outputs (golden set, rule-made weights)."""

from __future__ import annotations

import time

import cv2
import numpy as np
import torch
from torch.testing import assert_close

from uniid_core.models import FaceFeatures, UniIDModel, weights_fingerprint

TOL = {"atol": 5e-5, "rtol": 1e-5}


def test_face_preprocessing_matches_official(golden_dir, golden):
    bgr = cv2.imread(str(golden_dir / "face_112.png"), cv2.IMREAD_COLOR)
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    assert np.array_equal(rgb, golden["face_input_uint8_rgb_hwc"].numpy())
    x = torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0).float()
    normalized = (x * (1 / 255) - 0.5) / 0.5
    assert_close(normalized, golden["face_input_normalized"], atol=1e-7, rtol=0)


def test_face_net_matches_official(golden_face_net, golden):
    with torch.no_grad():
        features = golden_face_net(golden["face_input_normalized"])
    assert_close(features.embedding, golden["face_embedding"], **TOL)
    assert len(features.hidden_states) == 4
    for i, hidden in enumerate(features.hidden_states):
        assert_close(hidden, golden[f"face_hidden_state_{i}"], **TOL)


def test_text_branch_matches_official(golden_uniid, golden_features, golden):
    with torch.no_grad():
        both = golden_uniid.text_branch(golden_features)
        uncond_l, uncond_g = golden_uniid.text_branch.towers(FaceFeatures.zeros(golden_features.batch_size))
    assert both.shape == (1, 3, 2048)
    assert_close(both[..., :768], golden["text_branch_raw_1"], **TOL)
    assert_close(both[..., 768:], golden["text_branch_raw_2"], **TOL)
    assert_close(uncond_l, golden["text_branch_uncond_raw_1"], **TOL)
    assert_close(uncond_g, golden["text_branch_uncond_raw_2"], **TOL)


def test_adapter_branch_matches_official(golden_uniid, golden_features, golden):
    with torch.no_grad():
        cond = golden_uniid.adapter_branch(golden_features)
    assert_close(cond, golden["adapter_tokens_cond"], **TOL)
    negative = golden_uniid.negative_adapter_tokens()
    assert_close(negative, golden["adapter_tokens_uncond"], **TOL)
    assert golden_uniid.negative_adapter_tokens() is negative  # cached


def test_zero_features_without_running_the_net(golden_features):
    zeros = FaceFeatures.zeros(2)
    assert zeros.embedding.shape == (2, 512)
    assert [h.shape[1:] for h in zeros.hidden_states] == [h.shape[1:] for h in golden_features.hidden_states]
    assert all(not h.any() for h in zeros.hidden_states)


def test_sizes_come_from_the_checkpoint(golden_uniid, adapter_state_dict):
    config = golden_uniid.config
    assert (config.num_text_tokens, config.num_adapter_tokens, config.adapter_hidden_dim) == (3, 25, 768)
    assert config.text_widths == (768, 1280) and config.context_dim == 2048
    indices = sorted(int(k.split(".")[2]) for k in adapter_state_dict if k.endswith("to_k_ip.weight"))
    assert list(config.layer_widths) == indices == list(range(1, 35, 2))
    weights = golden_uniid.adapter_branch.ip_weights()
    assert len(weights) == 17
    for index, (k, v) in zip(indices, weights, strict=True):
        assert torch.equal(k, adapter_state_dict[f"adapter_branch.adapter_modules.{index}.to_k_ip.weight"])
        assert torch.equal(v, adapter_state_dict[f"adapter_branch.adapter_modules.{index}.to_v_ip.weight"])


def test_fingerprint_is_cheap_and_stable(golden_uniid, text_state_dict, adapter_state_dict):
    state = golden_uniid.state_dict()
    start = time.perf_counter()
    fingerprint = weights_fingerprint(state)
    elapsed = time.perf_counter() - start
    assert elapsed < 0.25, f"fingerprint took {elapsed * 1000:.0f} ms"
    assert fingerprint == golden_uniid.fingerprint
    assert fingerprint == weights_fingerprint({**text_state_dict, **adapter_state_dict})
    changed = dict(state)
    changed["adapter_branch.latents"] = state["adapter_branch.latents"] + 1.0
    assert weights_fingerprint(changed) != fingerprint
    text_only = {k: v for k, v in state.items() if k.startswith("text_branch.")}
    assert weights_fingerprint(text_only) != fingerprint


def test_negative_tokens_follow_dtype_changes(tiny_model: UniIDModel):
    first = tiny_model.negative_adapter_tokens()
    assert first.shape == (1, 4, 192) and first.dtype == torch.float32
    tiny_model.to(torch.bfloat16)
    second = tiny_model.negative_adapter_tokens()
    assert second.dtype == torch.bfloat16
    assert_close(second.float(), first, atol=0.1, rtol=0.05)
    with torch.no_grad():
        tiny_model.adapter_branch.latents.add_(1.0)
    assert not torch.equal(tiny_model.negative_adapter_tokens(), second)
