"""Identity encoding (official path for one reference, combine modes), anchor, save/load, mismatch checks."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.testing import assert_close

from uniid_core.anchor import TextAnchor
from uniid_core.checkpoint import save_uniid
from uniid_core.errors import CheckpointError, IdentityMismatchError, UniIDError
from uniid_core.identity import (
    Identity,
    check_identity_matches,
    encode_identity,
    load_identity,
    save_identity,
)

TOL = {"atol": 5e-5, "rtol": 1e-5}


def _faces(count: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, 3, 112, 112, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_single_reference_is_the_official_path(golden_uniid, golden_face_net, golden):
    identity = encode_identity(golden_uniid, golden_face_net, golden["face_input_normalized"], "man")
    expected_text = torch.cat([golden["text_branch_raw_1"], golden["text_branch_raw_2"]], dim=-1)
    assert_close(identity.text_tokens, expected_text, **TOL)
    assert_close(identity.adapter_tokens, golden["adapter_tokens_cond"], **TOL)
    assert identity.class_word == "man" and identity.num_references == 1
    assert identity.model_fingerprint == golden_uniid.fingerprint
    anchor = TextAnchor(golden["celeb_anchor_norm_1"][:, 0], golden["celeb_anchor_norm_2"][:, 0])
    rescaled = identity.with_anchor(anchor)
    assert identity.text_tokens_rescaled is None
    assert_close(rescaled.text_tokens_for_prompt(), golden["text_branch_rescaled"], **TOL)


def test_combine_modes(tiny_model, tiny_face_net):
    faces = _faces(2)
    by_features = encode_identity(tiny_model, tiny_face_net, faces)
    by_tokens = encode_identity(tiny_model, tiny_face_net, faces, combine="mean_tokens")
    assert by_features.num_references == by_tokens.num_references == 2
    assert by_features.text_tokens.shape == (1, 2, 192) and by_features.adapter_tokens.shape == (1, 4, 192)
    assert not torch.allclose(by_features.text_tokens, by_tokens.text_tokens, atol=1e-4)
    assert not torch.allclose(by_features.adapter_tokens, by_tokens.adapter_tokens, atol=1e-4)
    with torch.no_grad():
        features = tiny_face_net(faces)
        text, adapter = tiny_model(features.mean())
        texts, adapters = tiny_model(features)
    assert_close(by_features.text_tokens, text, **TOL)
    assert_close(by_features.adapter_tokens, adapter, **TOL)
    assert_close(by_tokens.text_tokens, texts.mean(0, keepdim=True), **TOL)
    assert_close(by_tokens.adapter_tokens, adapters.mean(0, keepdim=True), **TOL)
    one = _faces(1, seed=3)
    a = encode_identity(tiny_model, tiny_face_net, one)
    b = encode_identity(tiny_model, tiny_face_net, one[0], combine="mean_tokens")
    assert torch.equal(a.text_tokens, b.text_tokens) and torch.equal(a.adapter_tokens, b.adapter_tokens)


def test_bad_inputs(tiny_model, tiny_face_net):
    with pytest.raises(UniIDError, match="112x112"):
        encode_identity(tiny_model, tiny_face_net, torch.zeros(1, 3, 64, 64))
    with pytest.raises(UniIDError, match=r"\[-1, 1\]"):
        encode_identity(tiny_model, tiny_face_net, torch.full((1, 3, 112, 112), 200.0))
    with pytest.raises(UniIDError, match="combine"):
        encode_identity(tiny_model, tiny_face_net, _faces(1), combine="median")


def test_save_load_round_trip(tiny_model, tiny_face_net, tmp_path):
    identity = encode_identity(tiny_model, tiny_face_net, _faces(2), class_word="woman")
    identity = dataclasses.replace(identity, text_tokens_rescaled=identity.text_tokens * 2)
    path = save_identity(identity, tmp_path / "alice.safetensors")
    loaded = load_identity(path)
    for name in ("text_tokens", "text_tokens_rescaled", "adapter_tokens"):
        assert torch.equal(getattr(loaded, name), getattr(identity, name))
    assert (loaded.class_word, loaded.num_references) == ("woman", 2)
    assert loaded.model_fingerprint == tiny_model.fingerprint
    check_identity_matches(loaded, tiny_model)
    text_only = save_identity(Identity(text_tokens=identity.text_tokens), tmp_path / "text.safetensors")
    assert load_identity(text_only).adapter_tokens is None
    with pytest.raises(UniIDError, match="no tokens"):
        save_identity(Identity(), tmp_path / "none.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alice.safetensors", "text.safetensors"]


def test_load_identity_refuses_other_files(tiny_model, tmp_path):
    weights = save_uniid(tiny_model, tmp_path / "weights.safetensors")
    with pytest.raises(CheckpointError, match="not a UniID identity file"):
        load_identity(weights)
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(CheckpointError, match="not a readable identity"):
        load_identity(tmp_path / "junk.safetensors")


def test_anchor_to_and_prompt_tokens(tiny_model, tiny_face_net):
    identity = encode_identity(tiny_model, tiny_face_net, _faces(1))
    assert identity.text_tokens_for_prompt() is identity.text_tokens
    anchor = TextAnchor(torch.tensor([3.0, 4.0]), torch.tensor([5.0, 6.0]), widths=(64, 128))
    anchored = identity.with_anchor(anchor)
    tokens = anchored.text_tokens_for_prompt()
    assert_close(tokens[0, :, :64].norm(dim=-1), torch.tensor([3.0, 4.0]))
    assert_close(tokens[0, :, 64:].norm(dim=-1), torch.tensor([5.0, 6.0]))
    half = anchored.to(dtype=torch.bfloat16)
    dtypes = {half.text_tokens.dtype, half.text_tokens_rescaled.dtype, half.adapter_tokens.dtype}
    assert dtypes == {torch.bfloat16}
    assert half.class_word == anchored.class_word and half.model_fingerprint == anchored.model_fingerprint
    with pytest.raises(UniIDError, match="no text tokens"):
        Identity(adapter_tokens=identity.adapter_tokens).text_tokens_for_prompt()


def test_mismatch_checks(tiny_model, tiny_face_net):
    identity = encode_identity(tiny_model, tiny_face_net, _faces(1))
    check_identity_matches(identity, tiny_model)
    other = dataclasses.replace(identity, model_fingerprint="0123456789abcdef")
    with pytest.raises(IdentityMismatchError, match="encode the face again"):
        check_identity_matches(other, tiny_model)
    with pytest.raises(IdentityMismatchError, match="3 text tokens"):
        check_identity_matches(dataclasses.replace(identity, text_tokens=torch.zeros(1, 3, 192)), tiny_model)
    with pytest.raises(IdentityMismatchError, match="no adapter tokens"):
        check_identity_matches(dataclasses.replace(identity, adapter_tokens=None), tiny_model)


def test_negative_tokens_under_inference_mode(tiny_model):
    """ComfyUI runs nodes under torch.inference_mode, where tensors carry no version counter."""
    with torch.inference_mode():
        inference_model = type(tiny_model)(tiny_model.config)
        inference_model.load_state_dict(tiny_model.state_dict())
        first = inference_model.negative_adapter_tokens()
        assert first is inference_model.negative_adapter_tokens()
    assert torch.equal(first, tiny_model.negative_adapter_tokens())
