"""Identity encoding (official path for one reference, combine modes, identity batches), anchor, save/load,
mismatch checks."""

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
    stack_identities,
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


def test_per_image_makes_one_identity_per_face(tiny_model, tiny_face_net):
    """combine = per_image: identity i is face i encoded on its own (the official one-reference path)."""
    faces = _faces(3, seed=5)
    batch = encode_identity(tiny_model, tiny_face_net, faces, class_word="man", combine="per_image")
    assert batch.count == 3 and batch.num_references == 3 and batch.class_word == "man"
    assert batch.face_embedding.shape == (3, 512)
    for i in range(3):
        one = encode_identity(tiny_model, tiny_face_net, faces[i : i + 1])
        for name in ("text_tokens", "adapter_tokens", "face_embedding"):
            assert_close(getattr(batch, name)[i : i + 1], getattr(one, name), **TOL)
    assert encode_identity(tiny_model, tiny_face_net, faces[:1], combine="per_image").count == 1


def test_stack_identities(tiny_model, tiny_face_net):
    """Identities (single or batches) stack in order; optional fields survive only when all have them."""
    a = encode_identity(tiny_model, tiny_face_net, _faces(2, seed=1), class_word="man")
    b = encode_identity(tiny_model, tiny_face_net, _faces(1, seed=2), class_word="man")
    pair = stack_identities([a, b])
    assert pair.count == 2 and pair.num_references == 3 and pair.class_word == "man"
    assert pair.model_fingerprint == tiny_model.fingerprint
    for name in ("text_tokens", "adapter_tokens", "face_embedding"):
        assert torch.equal(getattr(pair, name), torch.cat([getattr(a, name), getattr(b, name)]))
    assert pair.text_tokens_rescaled is None
    check_identity_matches(pair, tiny_model)
    woman = dataclasses.replace(b, class_word="woman", face_embedding=None)
    three = stack_identities([pair, woman])
    assert three.count == 3 and three.class_word == "person" and three.face_embedding is None
    assert torch.equal(three.adapter_tokens[2], b.adapter_tokens[0])
    rescaled = [dataclasses.replace(x, text_tokens_rescaled=x.text_tokens * 2) for x in (a, b)]
    assert torch.equal(stack_identities(rescaled).text_tokens_rescaled, pair.text_tokens * 2)
    with pytest.raises(IdentityMismatchError, match="different UniID weights"):
        stack_identities([a, dataclasses.replace(b, model_fingerprint="0123456789abcdef")])
    with pytest.raises(IdentityMismatchError, match="some of these identities have text tokens"):
        stack_identities([a, dataclasses.replace(b, text_tokens=None)])
    with pytest.raises(IdentityMismatchError, match="different shapes"):
        stack_identities([a, dataclasses.replace(b, adapter_tokens=torch.zeros(1, 3, 192))])
    with pytest.raises(UniIDError, match="at least one"):
        stack_identities([])
    with pytest.raises(UniIDError, match="disagree on how many identities"):
        _ = dataclasses.replace(pair, adapter_tokens=a.adapter_tokens).count


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


def test_identity_batch_round_trip_and_older_files(tiny_model, tiny_face_net, tmp_path):
    """A batch saves and loads whole (format 2, so a pack reading only format 1 refuses it clearly); a
    single identity is still written as format 1; a file from before batches (no count, no face
    embedding) loads as one identity."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    batch = encode_identity(tiny_model, tiny_face_net, _faces(3, seed=7), combine="per_image")
    loaded = load_identity(save_identity(batch, tmp_path / "three.safetensors"))
    assert loaded.count == 3 and loaded.num_references == 3
    for name in ("text_tokens", "adapter_tokens", "face_embedding"):
        assert torch.equal(getattr(loaded, name), getattr(batch, name))
    one = encode_identity(tiny_model, tiny_face_net, _faces(1))
    single = save_identity(one, tmp_path / "one.safetensors")
    for path, version, count in ((tmp_path / "three.safetensors", "2", "3"), (single, "1", "1")):
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata()
        assert (metadata["format_version"], metadata["num_identities"]) == (version, count)
    old = tmp_path / "old.safetensors"
    tokens = {"text_tokens": torch.ones(1, 2, 192), "adapter_tokens": torch.ones(1, 4, 192)}
    metadata = {"format": "uniid-identity", "format_version": "1", "class_word": "man"}
    save_file(tokens, str(old), metadata=metadata)
    older = load_identity(old)
    assert older.count == 1 and older.face_embedding is None and older.class_word == "man"
    damaged = tmp_path / "damaged.safetensors"
    save_file(
        tokens,
        str(damaged),
        metadata={"format": "uniid-identity", "format_version": "2", "num_identities": "2"},
    )
    with pytest.raises(CheckpointError, match="damaged identity file .*says 2 identities"):
        load_identity(damaged)


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
