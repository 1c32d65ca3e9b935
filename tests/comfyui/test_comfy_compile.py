"""torch.compile through ComfyUI's compile helper (what TorchCompileModel uses) with a counting backend.

A freshly applied identity compiles to the same single graph, with no graph breaks, as the plain
model; another identity with other scales (a new UniID Apply) reuses it; stacked Applies, a mask and
a start/end range still give one graph; compiled and eager outputs agree.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from tests.comfyui.conftest import APPLY_ARGS, random_conditioning, random_identity


class CountingBackend:
    """A dynamo backend that counts the graphs it is given and runs them as traced."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, graph_module, example_inputs):
        self.graphs += 1
        return graph_module.forward


@pytest.fixture()
def dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield counters
    torch._dynamo.reset()


def test_uniid_compiles_like_the_plain_model(comfy, pack, mini_sdxl, mini_uniid, dynamo):
    from comfy_api.torch_helpers import set_torch_compile_wrapper

    positive, negative = random_conditioning(1), random_conditioning(2)
    backend = CountingBackend()

    def compiled(model):
        model = model.clone()
        set_torch_compile_wrapper(model, backend=backend)
        return model

    def run(model, cond):
        with torch.inference_mode():
            latent = {"samples": torch.zeros(1, 4, 8, 8)}
            return comfy.nodes.common_ksampler(model, 0, 2, 4.0, "euler", "normal", cond, negative, latent)[0]

    def breaks() -> int:
        return sum(dynamo["graph_break"].values())

    run(compiled(mini_sdxl), positive)
    assert (backend.graphs, breaks()) == (1, 0)

    torch._dynamo.reset()
    backend.graphs = 0
    model, cond = pack.apply.UniIDApply.execute(
        mini_sdxl, positive, mini_uniid, random_identity(mini_uniid, 1), **APPLY_ARGS
    )
    out = run(compiled(model), cond)["samples"]
    assert (backend.graphs, breaks()) == (1, 0), dict(dynamo["graph_break"])
    torch.testing.assert_close(out, run(model, cond)["samples"], rtol=0, atol=0)

    other = {**APPLY_ARGS, "merge_step": 2, "adapter_scale_after": 1.0, "text_scale_after": 1.5}
    model, cond = pack.apply.UniIDApply.execute(
        mini_sdxl, positive, mini_uniid, random_identity(mini_uniid, 2), **other
    )
    run(compiled(model), cond)
    assert (backend.graphs, breaks()) == (1, 0), "a new identity recompiled the UNet"

    compiled_first = compiled(mini_sdxl)
    model, cond = pack.apply.UniIDApply.execute(
        compiled_first, positive, mini_uniid, random_identity(mini_uniid, 3), **APPLY_ARGS
    )
    run(model, cond)
    assert (backend.graphs, breaks()) == (1, 0), "Apply after TorchCompileModel recompiled"

    torch._dynamo.reset()
    backend.graphs = 0
    half = torch.zeros(1, 64, 64)
    half[:, :, :32] = 1.0
    first, cond = pack.apply.UniIDApply.execute(
        mini_sdxl,
        positive,
        mini_uniid,
        random_identity(mini_uniid, 4),
        **{**APPLY_ARGS, "start_percent": 0.2},
        mask=half,
    )
    model, cond = pack.apply.UniIDApply.execute(
        first, cond, mini_uniid, random_identity(mini_uniid, 5), **APPLY_ARGS
    )
    out = run(compiled(model), cond)["samples"]
    assert (backend.graphs, breaks()) == (1, 0), dict(dynamo["graph_break"])
    torch.testing.assert_close(out, run(model, cond)["samples"], rtol=0, atol=0)


def test_per_block_rescaler_reuses_the_compiled_graph(comfy, pack, mini_sdxl, mini_uniid, dynamo):
    """Layer weights are a tensor the layers index: a per-block rescaler, and new weights for it, add no
    graph or break to the graph of the plain UniID model (a recompile would hand the backend another
    graph); compiled and eager outputs agree."""
    from comfy_api.torch_helpers import set_torch_compile_wrapper

    positive, negative = random_conditioning(1), random_conditioning(2)
    backend = CountingBackend()
    per_block = pack.rescaler.UniIDRescalerPerBlock

    def run(model, cond, compile_it: bool = True):
        if compile_it:
            model = model.clone()
            set_torch_compile_wrapper(model, backend=backend)
        with torch.inference_mode():
            latent = {"samples": torch.zeros(1, 4, 8, 8)}
            out = comfy.nodes.common_ksampler(model, 0, 2, 4.0, "euler", "normal", cond, negative, latent)
        return out[0]["samples"]

    model, cond = pack.apply.UniIDApply.execute(
        mini_sdxl, positive, mini_uniid, random_identity(mini_uniid, 1), **APPLY_ARGS
    )
    run(model, cond)
    assert (backend.graphs, sum(dynamo["graph_break"].values())) == (1, 0)
    for seed, weights in enumerate([(1.0, 0.5, 1.2, "0-1:0"), (0.0, 2.0, 0.7, "all:0.3, 9:1")], start=2):
        (rescaler,) = per_block.execute(*weights)
        identity = random_identity(mini_uniid, seed)
        model, cond = pack.apply.UniIDApply.execute(
            mini_sdxl, positive, mini_uniid, identity, **APPLY_ARGS, rescaler=rescaler
        )
        out = run(model, cond)
        assert (backend.graphs, sum(dynamo["graph_break"].values())) == (1, 0), weights
        torch.testing.assert_close(out, run(model, cond, compile_it=False), rtol=0, atol=0)


def test_identity_batches_and_negative_identities_reuse_the_graph(comfy, pack, mini_sdxl, mini_uniid, dynamo):
    """Latent batch 2: an identity batch compiles to one graph; other identities, a single identity for
    both latents, a negative identity or a negative identity batch reuse it (same batch size, no break)."""
    from comfy_api.torch_helpers import set_torch_compile_wrapper

    positive, negative = random_conditioning(1), random_conditioning(2)
    backend = CountingBackend()
    batch = pack.identity_batch.UniIDIdentityBatch.execute

    def run(identity, **kw):
        model, cond = pack.apply.UniIDApply.execute(
            mini_sdxl, positive, mini_uniid, identity, **APPLY_ARGS, **kw
        )
        compiled = model.clone()
        set_torch_compile_wrapper(compiled, backend=backend)
        with torch.inference_mode():
            latent = {"samples": torch.zeros(2, 4, 8, 8)}
            sample = comfy.nodes.common_ksampler
            out = sample(compiled, 0, 2, 4.0, "euler", "normal", cond, negative, latent)[0]["samples"]
            eager = sample(model, 0, 2, 4.0, "euler", "normal", cond, negative, latent)[0]["samples"]
        torch.testing.assert_close(out, eager, rtol=0, atol=0)
        return backend.graphs, sum(dynamo["graph_break"].values())

    identity = [random_identity(mini_uniid, seed) for seed in range(20, 25)]
    assert run(batch(identity[0], identity[1])[0]) == (1, 0), dict(dynamo["graph_break"])
    assert run(batch(identity[2], identity[3])[0]) == (1, 0), "another identity batch recompiled"
    assert run(identity[4]) == (1, 0), "one identity for both latents recompiled"
    assert run(identity[0], negative_identity=identity[1]) == (1, 0), "a negative identity recompiled"
    pair = batch(identity[2], identity[3])[0]
    assert run(batch(identity[0], identity[1])[0], negative_identity=pair) == (1, 0)
