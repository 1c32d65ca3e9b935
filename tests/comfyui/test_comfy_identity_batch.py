"""Identity batches (identity i for latent i) and a negative identity, through real ComfyUI sampling.

KSampler and SamplerCustomAdvanced graphs on the mini SDXL-layout UNet (8x8 latents, 3 steps), with the
same batch noise on both sides of every comparison, and an instrumented record of what each UNet call
got: per row the adapter token set and keys, the spliced text rows, and the output.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.comfyui.conftest import guiders_equal_to_cfg, random_conditioning, random_identity
from tests.comfyui.recording import SCALES, Recorder, text_scale

MERGE, STEPS = 1, 3
CLOSE = dict(rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def people(mini_uniid):
    """Identities A and B (for latents) and N (a face to steer away from)."""
    return random_identity(mini_uniid, 31), random_identity(mini_uniid, 32), random_identity(mini_uniid, 33)


def apply(pack, model, positive, weights, identity, **kw):
    """UniID Apply with the official scales (merge after step 1); returns (model, positive, state)."""
    import comfy.patcher_extension as ext

    args = dict(merge_step=MERGE, **SCALES, rescale="normalized", start_percent=0.0, end_percent=1.0)
    args.update(kw)
    model, positive = pack.apply.UniIDApply.execute(model, positive, weights, identity, **args)
    wrappers = ext.get_wrappers_with_key(ext.WrappersMP.SAMPLER_SAMPLE, "uniid", model.model_options, True)
    return model, positive, wrappers[-1].state


def stack(pack, *identities):
    """The identities joined by the UniID Identity Batch node (chained for more than two)."""
    batch = identities[0]
    for identity in identities[1:]:
        batch, _, count = pack.identity_batch.UniIDIdentityBatch.execute(batch, identity)
        assert count == batch.count
    return batch


def ksampler(cn, model, positive, negative, *, batch=2, cfg=4.0, seed=0):
    latent = {"samples": torch.zeros(batch, 4, 8, 8)}
    return cn.nodes.common_ksampler(model, seed, STEPS, cfg, "euler", "normal", positive, negative, latent)[
        0
    ]["samples"]


def first_layer_keys(state, tokens: torch.Tensor) -> torch.Tensor:
    """The first attn2 layer's adapter keys of ``tokens`` (M, width), projected here from the ip weights."""
    weight = state.ip_patcher.model.to_k_ip[0]
    return tokens.float() @ weight.float().t()


@pytest.mark.parametrize("cfg", [4.0, 1.0])
def test_identity_i_goes_to_latent_i(cn, pack, mini_sdxl, mini_uniid, conds, people, cfg):
    """Row 0 of a batch of 2 with identities [A, B] equals row 0 of [A, A], row 1 equals row 1 of [B, B];
    one identity A equals [A, A] (one identity = every latent). KSampler, same batch noise throughout."""
    a, b, _ = people

    def run(identity):
        model, positive, _ = apply(pack, mini_sdxl, conds[0], mini_uniid, identity)
        return ksampler(cn, model, positive, conds[1], cfg=cfg)

    ab, aa, bb = run(stack(pack, a, b)), run(stack(pack, a, a)), run(stack(pack, b, b))
    torch.testing.assert_close(ab[0], aa[0], **CLOSE)
    torch.testing.assert_close(ab[1], bb[1], **CLOSE)
    torch.testing.assert_close(run(a), aa, **CLOSE)
    assert not torch.allclose(aa[1], bb[1], **CLOSE), "the identities made no difference"


def test_record_of_an_identity_batch(cn, pack, mini_sdxl, mini_uniid, conds, people):
    """Batch of 2 with CFG: positive row i has identity i's adapter keys and spliced text rows at the
    step's scale; both negative rows have the zero-face set. cfg 1 runs only the positive rows."""
    a, b, _ = people
    model, positive, state = apply(pack, mini_sdxl, conds[0], mini_uniid, stack(pack, a, b))
    assert positive[0][0].shape[0] == 2 and state.token_sets.shape[0] == 3
    for cfg in (4.0, 1.0):
        recorder = Recorder(model, [state])
        ksampler(cn, recorder.model, positive, conds[1], cfg=cfg)
        assert len(recorder.calls) == STEPS
        for step, call in enumerate(recorder.calls):
            assert sorted(call.chunks) == ([0, 1] if cfg != 1.0 else [0])
            positive_rows, negative_rows = call.rows_of(0), call.rows_of(1)
            token_sets = call.token_sets[0]
            assert [token_sets[r] for r in positive_rows] == [0, 1]
            assert [token_sets[r] for r in negative_rows] == [2] * len(negative_rows)
            want = SCALES["text_scale_before"] if step < MERGE else SCALES["text_scale_after"]
            for latent, (row, identity) in enumerate(zip(positive_rows, (a, b), strict=True)):
                tokens = identity.text_tokens_rescaled[0]
                assert text_scale(call.context[row, 1:4], tokens) == pytest.approx(want, rel=1e-5), latent
                keys = first_layer_keys(state, identity.adapter_tokens[0])
                torch.testing.assert_close(call.keys[0][row, :, : keys.shape[-1]], keys, **CLOSE)


def test_identity_batch_through_dual_cfg_and_perpneg(cn, pack, mini_sdxl, mini_uniid, conds, people):
    """DualCFG and PerpNeg batch their conds in their own order; every positive row still gets its own
    identity, every other row (negative, middle, empty prompt) the zero-face set."""
    a, b, _ = people
    model, positive, state = apply(pack, mini_sdxl, conds[0], mini_uniid, stack(pack, a, b))
    custom, negative = cn.custom, conds[1]
    sigmas = custom.BasicScheduler().get_sigmas(model, "normal", STEPS, 1.0)[0]
    sampler = custom.KSamplerSelect().get_sampler("euler")[0]

    def perpneg(m):
        guider = cn.perpneg.Guider_PerpNeg(m)
        guider.set_conds(positive, negative, random_conditioning(5))
        guider.set_cfg(4.0, 1.0)
        return guider

    dual = custom.DualCFGGuider().get_guider
    guiders = {  # name: (guider factory, cond list index of the positive)
        "dual": (lambda m: dual(m, positive, random_conditioning(5), negative, 4.0, 2.0, "regular")[0], 2),
        "perpneg": (perpneg, 0),
    }
    for name, (make, positive_index) in guiders.items():
        recorder = Recorder(model, [state])
        latent = {"samples": torch.zeros(2, 4, 8, 8)}
        custom.SamplerCustomAdvanced().sample(
            custom.Noise_RandomNoise(0), make(recorder.model), sampler, sigmas, latent
        )
        assert len(recorder.calls) == STEPS, name
        for call in recorder.calls:
            for chunk in set(call.chunks):
                want = [0, 1] if chunk == positive_index else [2, 2]
                assert [call.token_sets[0][r] for r in call.rows_of(chunk)] == want, (name, chunk)


def test_counts_that_do_not_fit_are_refused(cn, pack, mini_sdxl, mini_uniid, conds, people):
    """3 identities for 2 latents, a 3-identity negative, or 2 prompts for 3 identities: clear errors."""
    from uniid_core.errors import UniIDError

    a, b, n = people
    three = stack(pack, a, b, a)
    model, positive, _ = apply(pack, mini_sdxl, conds[0], mini_uniid, three)
    with pytest.raises(UniIDError, match="identity is a batch of 3 identities but the latent batch is 2"):
        ksampler(cn, model, positive, conds[1])
    ksampler(cn, model, positive, conds[1], batch=3)
    model, positive, _ = apply(
        pack, mini_sdxl, conds[0], mini_uniid, a, negative_identity=stack(pack, n, n, n)
    )
    with pytest.raises(UniIDError, match="negative_identity is a batch of 3 identities but the latent batch"):
        ksampler(cn, model, positive, conds[1])
    with pytest.raises(UniIDError, match="a batch of 2 prompts but the identity batch holds 3"):
        apply(pack, mini_sdxl, random_conditioning(1, batch=2), mini_uniid, three)


def test_no_negative_identity_is_the_official_zero_face_negative(
    cn, pack, mini_sdxl, mini_uniid, conds, people
):
    """Not connected, the negative rows get the zero-face tokens exactly as before: the same token sets
    (identity, then zero-face) and bit for bit the latent of a negative identity made of those tokens."""
    a, _, _ = people
    zero_face = mini_uniid.model.negative_adapter_tokens().detach().float().cpu()
    model, positive, state = apply(pack, mini_sdxl, conds[0], mini_uniid, a)
    assert torch.equal(state.token_sets, torch.cat([a.adapter_tokens, zero_face]))
    explicit = dataclasses.replace(a, adapter_tokens=zero_face)
    other, other_positive, _ = apply(pack, mini_sdxl, conds[0], mini_uniid, a, negative_identity=explicit)
    for cfg in (4.0, 1.0):
        default = ksampler(cn, model, positive, conds[1], cfg=cfg)
        torch.testing.assert_close(
            ksampler(cn, other, other_positive, conds[1], cfg=cfg), default, rtol=0, atol=0
        )


def test_negative_identity_goes_on_the_negative_rows(cn, pack, mini_sdxl, mini_uniid, conds, people):
    """The negative rows' adapter keys are the negative identity's (projected here independently), the
    positive rows' keys, contexts and UNet outputs are those of the run without it, the image changes."""
    a, _, n = people
    plain, plain_positive, plain_state = apply(pack, mini_sdxl, conds[0], mini_uniid, a)
    model, positive, state = apply(pack, mini_sdxl, conds[0], mini_uniid, a, negative_identity=n)
    before, after = Recorder(plain, [plain_state]), Recorder(model, [state])
    default = ksampler(cn, before.model, plain_positive, conds[1])
    steered = ksampler(cn, after.model, positive, conds[1])
    assert not torch.allclose(steered, default, **CLOSE)
    negative_keys = first_layer_keys(state, n.adapter_tokens[0])
    zero_keys = first_layer_keys(state, mini_uniid.model.negative_adapter_tokens()[0])
    width = negative_keys.shape[-1]
    for old, new in zip(before.calls, after.calls, strict=True):
        pos, neg = new.rows_of(0), new.rows_of(1)
        assert [new.token_sets[0][r] for r in pos + neg] == [0] * len(pos) + [1] * len(neg)
        for row in neg:
            torch.testing.assert_close(new.keys[0][row, :, :width], negative_keys, **CLOSE)
            torch.testing.assert_close(old.keys[0][row, :, :width], zero_keys, **CLOSE)
        torch.testing.assert_close(new.keys[0][pos], old.keys[0][pos], rtol=0, atol=0)
        torch.testing.assert_close(new.context, old.context, rtol=0, atol=0)
    first_old, first_new = before.calls[0], after.calls[0]
    pos, neg = first_new.rows_of(0), first_new.rows_of(1)
    torch.testing.assert_close(first_new.output[pos], first_old.output[pos], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(first_new.output[neg], first_old.output[neg], rtol=1e-5, atol=1e-6)


def test_negative_identity_with_dual_cfg_and_perpneg(cn, pack, mini_sdxl, mini_uniid, conds, people):
    """Every row that is not this Apply's positive gets the negative identity: DualCFG's middle prompt
    and PerpNeg's empty prompt too, so DualCFG with cond2 = the negative (regular and nested) and PerpNeg
    with neg_scale 0 and empty = the negative still give plain CFG's image."""
    a, _, n = people
    model, positive, state = apply(pack, mini_sdxl, conds[0], mini_uniid, a, negative_identity=n)
    negative, custom = conds[1], cn.custom
    sigmas = custom.BasicScheduler().get_sigmas(model, "normal", STEPS, 1.0)[0]
    sampler = custom.KSamplerSelect().get_sampler("euler")[0]

    guiders = guiders_equal_to_cfg(cn, positive, negative)
    reference = ksampler(cn, model, positive, negative, batch=1)
    for name, (make, positive_index) in guiders.items():
        recorder = Recorder(model, [state])
        latent = {"samples": torch.zeros(1, 4, 8, 8)}
        noise = custom.Noise_RandomNoise(0)
        out = custom.SamplerCustomAdvanced().sample(noise, make(recorder.model), sampler, sigmas, latent)[0]
        torch.testing.assert_close(out["samples"], reference, rtol=1e-4, atol=1e-4, msg=name)
        for call in recorder.calls:
            assert call.token_sets[0] == [0 if c == positive_index else 1 for c in call.chunks], name


def test_negative_identity_batch(cn, pack, mini_sdxl, mini_uniid, conds, people):
    """A negative identity batch of 2 for 2 latents: negative row i gets negative identity i."""
    a, b, n = people
    model, positive, state = apply(
        pack, mini_sdxl, conds[0], mini_uniid, a, negative_identity=stack(pack, n, b)
    )
    recorder = Recorder(model, [state])
    ksampler(cn, recorder.model, positive, conds[1])
    for call in recorder.calls:
        assert [call.token_sets[0][r] for r in call.rows_of(0) + call.rows_of(1)] == [0, 0, 1, 2]


def test_negative_identity_errors(pack, mini_sdxl, mini_uniid, conds, people):
    """A negative identity from other weights, or with weights that have no adapter branch, is refused."""
    from uniid_core.errors import IdentityMismatchError, UniIDError
    from uniid_core.identity import Identity
    from uniid_core.models.uniid import UniIDConfig, UniIDModel

    a, _, n = people
    foreign = dataclasses.replace(n, model_fingerprint="0123456789abcdef")
    with pytest.raises(
        IdentityMismatchError, match="^negative_identity: this identity was encoded with other"
    ):
        apply(pack, mini_sdxl, conds[0], mini_uniid, a, negative_identity=foreign)
    config = UniIDConfig(
        num_text_tokens=3, num_adapter_tokens=None, adapter_hidden_dim=None, layer_widths={}, text_depth=1
    )
    text_only = UniIDModel(config).eval()
    text_only.refresh_fingerprint()
    weights = pack.sockets.UniIDWeights(model=text_only, source="text-only weights")
    identity = Identity(
        text_tokens=a.text_tokens,
        text_tokens_rescaled=a.text_tokens_rescaled,
        model_fingerprint=text_only.fingerprint,
    )
    with pytest.raises(UniIDError, match="negative_identity acts through the adapter branch"):
        apply(pack, mini_sdxl, conds[0], weights, identity, negative_identity=identity)
