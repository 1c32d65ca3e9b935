"""Packs applied after UniID Apply that extend its attn2 patches, and the K/V cache's device keys.

ComfyUI_IPAdapter_plus (and PuLID) applied to a model whose attn2 layer already has a replace patch
clone the model, shallow-copy transformer_options down to the attn2 dict and call
``patch.add(callback, **kwargs)`` on the patch found there; the patch then adds
``callback(out, q, k, v, extra_options, **kwargs)`` to its output while the call's sigma is in
[sigma_end, sigma_start]. ``ipadapter_after`` below follows that protocol with a stand-in callback
(extra attention over random tokens). Real KSampler graphs on the mini SDXL-layout UNet.
"""

from __future__ import annotations

import pytest
import torch

from tests.comfyui.conftest import APPLY_ARGS, random_identity

CLOSE = dict(rtol=1e-5, atol=1e-5)
NO_LIMIT = 999999999.9  # ComfyUI's percent_to_sigma(0): what such packs pass for start_at 0


def extra_attention(out, q, k, v, extra_options, weight, tokens_k, tokens_v, **kwargs):
    """The stand-in pack's term: attention of the layer's queries over its own tokens, weighted."""
    import comfy.ldm.modules.attention as comfy_attention

    batch = q.shape[0]
    keys = tokens_k.expand(batch, -1, -1).to(q)
    values = tokens_v.expand(batch, -1, -1).to(q)
    return weight * comfy_attention.optimized_attention(q, keys, values, extra_options["n_heads"])


def stand_in_tokens(layers, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {
        layer.key: (
            torch.randn(1, 4, layer.width, generator=gen),
            torch.randn(1, 4, layer.width, generator=gen),
        )
        for layer in layers
    }


def ipadapter_after(model, tokens: dict, weight: float, sigma_start=NO_LIMIT, sigma_end=0.0):
    """A pack applied after UniID, by the IPAdapter plus protocol: a clone whose existing attn2 patches
    are extended with ``add`` (the copied dicts are not written back, as in that pack)."""
    work = model.clone()
    for number, (key, (tokens_k, tokens_v)) in enumerate(tokens.items()):
        options = work.model_options["transformer_options"].copy()
        replaces = options["patches_replace"].copy()
        attn2 = replaces["attn2"].copy()
        assert key in attn2
        kwargs = dict(
            module_key=str(2 * number + 1),
            weight=weight,
            tokens_k=tokens_k,
            tokens_v=tokens_v,
            sigma_start=sigma_start,
            sigma_end=sigma_end,
        )
        attn2[key].add(extra_attention, **kwargs)
    return work


class WithTerm:
    """Reference: a layer's patch followed by the stand-in term, as a plain wrapping replace patch."""

    def __init__(self, patch, kwargs: dict) -> None:
        self.patch, self.kwargs = patch, kwargs

    def __call__(self, q, k, v, extra_options):
        out = self.patch(q, k, v, extra_options)
        return out + extra_attention(out, q, k, v, extra_options, **self.kwargs)

    def __deepcopy__(self, memo: dict):
        return self

    def models(self) -> list:
        return self.patch.models()


def _sample(cn, model, positive, negative) -> torch.Tensor:
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    return cn.nodes.common_ksampler(model, 0, 3, 4.0, "euler", "normal", positive, negative, latent)[0][
        "samples"
    ]


def _patches(model) -> dict:
    return model.model_options["transformer_options"]["patches_replace"]["attn2"]


def test_ipadapter_after_uniid_adds_its_term_to_its_own_clone(cn, pack, mini_sdxl, mini_uniid, conds):
    """The extended model gives UniID's output plus the pack's term in every layer (the same image as a
    wrapping reference patch); the model UniID Apply returned is not changed by it; a second pack on top
    adds a second term to its own clone only; a sigma range the run never reaches adds nothing."""
    from uniid_core.errors import UniIDError

    identity = random_identity(mini_uniid, 81)
    model, positive = pack.apply.UniIDApply.execute(mini_sdxl, conds[0], mini_uniid, identity, **APPLY_ARGS)
    layers = pack.base_model.cross_attn_layers(mini_sdxl)
    tokens = stand_in_tokens(layers, 82)
    uniid_only = _sample(cn, model, positive, conds[1])

    after = ipadapter_after(model, tokens, 0.7)
    reference = model.clone()
    for key, (tokens_k, tokens_v) in tokens.items():
        kwargs = dict(weight=0.7, tokens_k=tokens_k, tokens_v=tokens_v)
        reference.set_model_attn2_replace(WithTerm(_patches(model)[key], kwargs), *key)
    with_term = _sample(cn, after, positive, conds[1])
    torch.testing.assert_close(with_term, _sample(cn, reference, positive, conds[1]), **CLOSE)
    assert (with_term - uniid_only).abs().max() > 1e-2

    assert all(patch.added == () for patch in _patches(model).values())
    torch.testing.assert_close(_sample(cn, model, positive, conds[1]), uniid_only, rtol=0, atol=0)
    twice = ipadapter_after(after, stand_in_tokens(layers, 83), 0.5)
    assert [len(p.added) for p in _patches(twice).values()] == [2] * len(layers)
    assert [len(p.added) for p in _patches(after).values()] == [1] * len(layers)
    assert [len(p.added) for p in _patches(after.clone()).values()] == [1] * len(layers)

    outside = ipadapter_after(model, tokens, 0.7, sigma_start=1e-3, sigma_end=1e-4)
    torch.testing.assert_close(_sample(cn, outside, positive, conds[1]), uniid_only, **CLOSE)

    with pytest.raises(UniIDError, match="apply it before UniID Apply"):
        _patches(after)[layers[0].key].set_new_condition(weight=1.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_kv_cache_keys_cuda_and_cuda_0_alike(pack, mini_sdxl, mini_uniid, conds):
    """ "cuda" and "cuda:0" (the current device) are one cache entry, projected once."""
    import comfy.patcher_extension as ext

    identity = random_identity(mini_uniid, 84)
    model, _ = pack.apply.UniIDApply.execute(mini_sdxl, conds[0], mini_uniid, identity, **APPLY_ARGS)
    state = ext.get_wrappers_with_key(ext.WrappersMP.SAMPLER_SAMPLE, "uniid", model.model_options, True)[
        -1
    ].state
    index = torch.cuda.current_device()
    first = state.kv_stack(torch.device("cuda"), torch.float16)
    assert state.kv_stack(torch.device("cuda", index), torch.float16) is first
    assert state.kv_stack(f"cuda:{index}", torch.float16) is first
