"""The rescaler slot through real KSampler runs: per-block weights, strategies with parameters, and a
strategy declared by another pack, loaded after ours (in this process) or before it (a fresh ComfyUI)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.comfyui.conftest import APPLY_ARGS, REPO, combo_choices, random_conditioning, random_identity
from tests.comfyui.recording import LayerRecorder

STRATEGY_PACK = Path(__file__).parent / "data" / "uniid_strategy_pack"


def _apply(pack, model, weights, identity, positive, **kw):
    return pack.apply.UniIDApply.execute(model, positive, weights, identity, **{**APPLY_ARGS, **kw})


def _sample(comfy, model, positive, steps: int = 2) -> torch.Tensor:
    negative = random_conditioning(2)
    with torch.inference_mode():
        latent = {"samples": torch.zeros(1, 4, 8, 8)}
        out = comfy.nodes.common_ksampler(model, 3, steps, 4.0, "euler", "normal", positive, negative, latent)
    return out[0]["samples"]


def _runner(comfy, pack, model, weights, seed: int):
    """A function that samples with UniID Apply on ``model`` (one identity and prompt), given Apply's
    keyword arguments."""
    identity, positive = random_identity(weights, seed), random_conditioning(seed)
    return lambda **kw: _sample(comfy, *_apply(pack, model, weights, identity, positive, **kw))


def _per_block(pack, input_blocks=1.0, middle_block=1.0, output_blocks=1.0, layers="", rescaler=None):
    node = pack.rescaler.UniIDRescalerPerBlock
    (chosen,) = node.execute(input_blocks, middle_block, output_blocks, layers, rescaler)
    return chosen


def test_all_ones_per_block_reproduces_the_plain_run_exactly(comfy, pack, mini_sdxl, mini_uniid):
    run = _runner(comfy, pack, mini_sdxl, mini_uniid, 1)
    plain = run()
    assert torch.equal(run(rescaler=_per_block(pack, layers="all:1")), plain)
    (named,) = pack.rescaler.UniIDRescaler.execute("normalized", "")
    assert torch.equal(run(rescaler=named), plain)

    add = run(rescale="add")
    (add_rescaler,) = pack.rescaler.UniIDRescaler.execute("add", "")
    assert torch.equal(run(rescaler=_per_block(pack, rescaler=add_rescaler)), add)
    assert not torch.equal(add, plain)


def test_weights_fold_into_the_adapter_scale(comfy, pack, mini_sdxl, mini_uniid):
    """Every layer at weight 0.5 is the same run as halved adapter scales (0.8 -> 0.4, 1.2 -> 0.6)."""
    run = _runner(comfy, pack, mini_sdxl, mini_uniid, 2)
    halved = run(rescaler=_per_block(pack, 0.5, 0.5, 0.5))
    assert torch.equal(halved, run(adapter_scale_before=0.4, adapter_scale_after=0.6))


@pytest.mark.parametrize(
    ("weights", "silent"),
    [
        (dict(middle_block=0.0), lambda key, position: key[0] == "middle"),
        (dict(input_blocks=0.0, output_blocks=2.0), lambda key, position: key[0] == "input"),
        (dict(layers="0-1:0, 9:0"), lambda key, position: position in (0, 1, 9)),
    ],
)
def test_zero_weight_removes_the_identity_term_there(comfy, pack, mini_sdxl, mini_uniid, weights, silent):
    """Recorded per-layer outputs of a real KSampler run: exactly the text attention where the weight is
    0, an identity term everywhere else."""
    identity, positive = random_identity(mini_uniid, 4), random_conditioning(5)
    chosen = _per_block(pack, **weights)
    model, cond = _apply(pack, mini_sdxl, mini_uniid, identity, positive, rescaler=chosen)
    recorder = LayerRecorder(model)
    _sample(comfy, recorder.model, cond)
    layers = pack.base_model.cross_attn_layers(mini_sdxl)
    assert set(recorder.terms) == {layer.key for layer in layers}
    for position, layer in enumerate(layers):
        terms = recorder.terms[layer.key]
        assert len(terms) == 2, "one call per step (CFG batched)"
        if silent(layer.key, position):
            assert terms == [0.0, 0.0], layer.key
        else:
            assert min(terms) > 1e-4, layer.key
    assert set(recorder.by_group()) == {"input", "middle", "output"}


def test_positions_past_the_model_are_refused_when_applied(pack, mini_sdxl, mini_uniid):
    from uniid_core.errors import UniIDError

    identity, positive = random_identity(mini_uniid, 6), random_conditioning(6)
    with pytest.raises(UniIDError, match=r"position 11 .* has 11 \(positions 0-10: input 0-3, output 4-9"):
        _apply(pack, mini_sdxl, mini_uniid, identity, positive, rescaler=_per_block(pack, layers="11:0"))


@pytest.fixture()
def strategy_pack(comfy):
    """The stand-in pack, loaded by ComfyUI's loader after ours; unloaded and unregistered afterwards."""
    from uniid_core.rescaler import unregister_rescaler

    assert asyncio.run(comfy.nodes.load_custom_node(str(STRATEGY_PACK)))
    yield
    sys.modules.pop(str(STRATEGY_PACK).replace(".", "_x_"), None)
    unregister_rescaler("test_pack_blend")


def test_strategy_declared_by_a_pack_loaded_after_ours(comfy, pack, mini_sdxl, mini_uniid, strategy_pack):
    """It is listed in both dropdowns, its parameters are checked and reach it (strength 0.25 on "add" is
    the same run as "add" at a quarter of the adapter scales)."""
    nodes = comfy.nodes.NODE_CLASS_MAPPINGS
    assert "test_pack_blend" in combo_choices(nodes["UniIDApply"], "rescale")
    assert "test_pack_blend" in combo_choices(nodes["UniIDRescaler"], "strategy")
    params = nodes["UniIDRescaler"].INPUT_TYPES()["required"]["params"][1]
    assert "test_pack_blend (strength=0.5 (>= 0, <= 2))" in params["tooltip"]

    run = _runner(comfy, pack, mini_sdxl, mini_uniid, 7)
    (blend,) = nodes["UniIDRescaler"].execute("test_pack_blend", "strength=0.25")
    quarter = run(rescale="add", adapter_scale_before=0.2, adapter_scale_after=0.3)
    assert torch.equal(run(rescaler=blend), quarter)
    (default,) = nodes["UniIDRescaler"].execute("test_pack_blend", "")
    assert torch.equal(run(rescale="test_pack_blend"), run(rescaler=default))

    rescaler_problem = nodes["UniIDRescaler"].validate_inputs(strategy="test_pack_blend", params="strength=3")
    assert "strength=3 is outside strength=0.5 (>= 0, <= 2)" in rescaler_problem
    assert nodes["UniIDRescaler"].validate_inputs(strategy="test_pack_blend", params="strength=2") is True


FRESH_COMFYUI = """
import asyncio, importlib.util, json, sys
comfyui, strategy_pack, ours = sys.argv[1:4]
sys.path.insert(0, comfyui)
import comfy.cli_args
comfy.cli_args.args.cpu = True
import utils.extra_config
import nodes
assert asyncio.run(nodes.load_custom_node(strategy_pack))
importable_before = importlib.util.find_spec("uniid_core") is not None
assert asyncio.run(nodes.load_custom_node(ours))
apply, rescaler = nodes.NODE_CLASS_MAPPINGS["UniIDApply"], nodes.NODE_CLASS_MAPPINGS["UniIDRescaler"]
print(json.dumps({
    "uniid_core_importable_before_ours": importable_before,
    "apply": apply.INPUT_TYPES()["required"]["rescale"][1]["options"],
    "rescaler": rescaler.INPUT_TYPES()["required"]["strategy"][1]["options"],
    "made": rescaler.execute("test_pack_blend", "strength=1.5")[0].describe(),
}))
"""


def test_strategy_declared_by_a_pack_loaded_before_ours(comfy, tmp_path):
    """A fresh ComfyUI that loads the declaring pack first, when uniid_core cannot be imported yet."""
    (tmp_path / "custom_nodes").mkdir()
    theirs = tmp_path / "custom_nodes" / "aaa_strategy_pack"
    ours = tmp_path / "custom_nodes" / "comfyui-uniid"
    theirs.symlink_to(STRATEGY_PACK, target_is_directory=True)
    ours.symlink_to(REPO, target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", FRESH_COMFYUI, str(comfy.root), str(theirs), str(ours)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["uniid_core_importable_before_ours"] is False
    assert report["apply"][0] == "normalized"
    assert "test_pack_blend" in report["apply"] and "test_pack_blend" in report["rescaler"]
    assert report["made"] == "test_pack_blend (strength=1.5)"
