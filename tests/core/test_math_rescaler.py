"""Rescalers: strategy parameters, layer-weight specs, declared strategies, one combine path in diffusers."""

from __future__ import annotations

import logging
import sys
import types
from pathlib import Path

import pytest
import torch

from tests.core.test_math_processor import _cross_widths, _inputs, _Model, _tiny_unet
from uniid_core.attention import combine_identity, decoupled_attention, normalized_rescale
from uniid_core.diffusers_processor import (
    install_uniid_processors,
    set_adapter_scale,
    set_rescaler,
    uniid_processors,
)
from uniid_core.errors import UniIDError
from uniid_core.family import SDXL
from uniid_core.rescaler import (
    DECLARATION,
    Rescaler,
    collect_declared,
    get_strategy,
    make_rescaler,
    parse_layer_weights,
    register_rescaler,
    rescaler_from_text,
    rescaler_names,
    unregister_rescaler,
)

SDXL_GROUPS = [layer.group for layer in SDXL.cross_attn_layers]


def _blend(text_out, ip_out, scale, layer, *, strength):
    """text + scale * strength * ip: a parameterised "add"."""
    return text_out + ip_out * (scale * strength).to(text_out.dtype)


@pytest.fixture()
def blend():
    register_rescaler("test_blend", _blend, params={"strength": (0.5, 0.0, 2.0)})
    yield get_strategy("test_blend")
    unregister_rescaler("test_blend")


def test_sdxl_groups_follow_the_official_order():
    assert len(SDXL_GROUPS) == 70
    assert SDXL_GROUPS == ["input"] * 24 + ["output"] * 36 + ["middle"] * 10


def test_layer_weight_spec_groups_positions_and_later_entries_win():
    weights = parse_layer_weights("input:1.0, middle:0.5; output=1.2\n0-3:0, 65:2").resolve(SDXL_GROUPS)
    assert weights[:4] == [0.0] * 4 and weights[4:24] == [1.0] * 20
    assert weights[24:60] == [1.2] * 36
    assert weights[60:70] == [0.5] * 5 + [2.0] + [0.5] * 4
    assert parse_layer_weights("all:0.3, output:1").resolve(["input", "output"]) == [0.3, 1.0]
    assert parse_layer_weights("").resolve(SDXL_GROUPS) == [1.0] * 70


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("middle 0.5", "write each entry as selector:weight"),
        ("inptu:1", "'inptu' is neither a block group"),
        ("middle:half", "'half' is not a number"),
        ("middle:-1", "finite number >= 0"),
        ("middle:inf", "finite number >= 0"),
        ("9-3:1", "from the lower position to the higher"),
    ],
)
def test_layer_weight_spec_errors_say_what_to_write(spec, message):
    with pytest.raises(UniIDError, match=message):
        parse_layer_weights(spec)


def test_positions_past_the_model_name_the_model_positions():
    with pytest.raises(UniIDError, match=r"position 70 .* has 70 .*input 0-23, output 24-59, middle 60-69"):
        parse_layer_weights("68-70:0").resolve(SDXL_GROUPS)


def test_weights_multiply_when_stacked():
    rescaler = Rescaler().with_layer_weights(parse_layer_weights("input:0.5"))
    rescaler = rescaler.with_layer_weights(parse_layer_weights("0:3, middle:0"))
    weights = rescaler.layer_weights(SDXL_GROUPS)
    assert weights[0] == 1.5 and weights[1:24] == [0.5] * 23 and weights[24:60] == [1.0] * 36
    assert weights[60:] == [0.0] * 10
    assert rescaler.describe() == "normalized, layer weights input:0.5 x 0:3, middle:0"


def test_params_take_defaults_and_are_checked(blend):
    assert make_rescaler("test_blend").params == (("strength", 0.5),)
    assert make_rescaler("test_blend", "strength = 1.5").params == (("strength", 1.5),)
    assert make_rescaler("test_blend", {"strength": 0}).params == (("strength", 0.0),)
    for text, message in [
        ("power=1", r"has no parameter 'power' \(parameters: strength=0.5 \(>= 0, <= 2\)\)"),
        ("strength=3", "strength=3 is outside"),
        ("strength=abc", "is not a number"),
        ("strength", "write parameters as name=value"),
        ("strength=1, strength=2", "given twice"),
    ]:
        with pytest.raises(UniIDError, match=message):
            make_rescaler("test_blend", text)
    with pytest.raises(UniIDError, match=r"'normalized' has no parameter 'x' \(parameters: none\)"):
        make_rescaler("normalized", "x=1")
    with pytest.raises(UniIDError, match="unknown adapter rescaler 'nope'"):
        rescaler_from_text("nope")


def test_registration_checks_names_params_and_keeps_the_builtins():
    with pytest.raises(UniIDError, match="cannot be replaced"):
        register_rescaler("normalized", _blend)
    with pytest.raises(UniIDError, match="letters, digits"):
        register_rescaler("has space", _blend)
    with pytest.raises(UniIDError, match="must be a Python identifier"):
        register_rescaler("test_bad", _blend, params={"not-a-name": 1.0})
    with pytest.raises(UniIDError, match=r"\(default, minimum, maximum\)"):
        register_rescaler("test_bad", _blend, params={"strength": (1.0, 2.0)})
    with pytest.raises(UniIDError, match="outside its range"):
        register_rescaler("test_bad", _blend, params={"strength": (3.0, 0.0, 2.0)})
    assert "test_bad" not in rescaler_names()


def test_params_reach_the_strategy_as_tensors(blend):
    gen = torch.Generator().manual_seed(0)
    text, ip = torch.randn(2, 6, 8, generator=gen), torch.randn(2, 6, 8, generator=gen)
    scale = torch.tensor([[[0.8]], [[1.2]]])
    out = combine_identity(text, ip, scale, make_rescaler("test_blend", "strength=0.25"))
    assert torch.equal(out, combine_identity(text, ip, scale * 0.25, "add"))
    defaults = combine_identity(text, ip, scale, "test_blend")
    assert torch.equal(defaults, combine_identity(text, ip, scale * 0.5, "add"))


def test_strategies_declared_by_a_module_are_registered(caplog):
    declaring = types.ModuleType("test_declaring_pack")
    setattr(
        declaring,
        DECLARATION,
        [
            {"name": "test_declared_blend", "fn": _blend, "params": {"strength": 0.5}},
            {"name": "test_declared_broken"},
            {"name": "add", "fn": _blend},
        ],
    )
    try:
        with caplog.at_level(logging.WARNING, logger="UniID"):
            assert collect_declared([declaring]) == ["test_declared_blend"]
            assert collect_declared([declaring]) == []
        assert "test_declared_blend" in rescaler_names()
        assert get_strategy("test_declared_blend").params[0].default == 0.5
        assert get_strategy("add").fn is not _blend
        messages = [record.getMessage() for record in caplog.records]
        assert sum("entries must be dicts with 'name' and 'fn'" in m for m in messages) == 1
        assert sum("'add' is already registered" in m for m in messages) == 1
    finally:
        unregister_rescaler("test_declared_blend")


def test_declaration_in_an_imported_module_is_found_in_sys_modules(monkeypatch):
    declaring = types.ModuleType("test_imported_pack")
    setattr(declaring, DECLARATION, [{"name": "test_imported_blend", "fn": _blend}])
    monkeypatch.setitem(sys.modules, "test_imported_pack", declaring)
    try:
        assert "test_imported_blend" in collect_declared()
    finally:
        unregister_rescaler("test_imported_blend")


def test_diffusers_processors_take_the_same_rescaler_objects():
    """All-ones weights give the plain run exactly; a zero weight leaves that group's layers text-only."""
    unet = _tiny_unet()
    model = _Model(_cross_widths(unet))
    install_uniid_processors(unet, model, rescale="normalized", scale=0.8)
    sample, context = _inputs()
    timestep = torch.tensor(10)
    with torch.no_grad():
        plain = unet(sample, timestep, encoder_hidden_states=context).sample
        set_rescaler(unet, Rescaler().with_layer_weights(parse_layer_weights("input:1, middle:1, output:1")))
        ones = unet(sample, timestep, encoder_hidden_states=context).sample
        set_rescaler(unet, Rescaler().with_layer_weights(parse_layer_weights("output:0")))
        weights = {p.layer: p.layer_weight for p in uniid_processors(unet)}
        no_output = unet(sample, timestep, encoder_hidden_states=context).sample
        set_rescaler(unet, Rescaler().with_layer_weights(parse_layer_weights("all:0")))
        none = unet(sample, timestep, encoder_hidden_states=context).sample
        set_rescaler(unet, "normalized")
        set_adapter_scale(unet, 0.0)
        text_only = unet(sample, timestep, encoder_hidden_states=context).sample
    assert torch.equal(ones, plain)
    by_block = {name.split(".")[0]: w for name, w in weights.items()}
    assert by_block == {"down_blocks": 1.0, "up_blocks": 0.0, "mid_block": 1.0}
    assert torch.equal(none, text_only) and not torch.equal(no_output, plain)
    assert not torch.equal(no_output, none)


def test_decoupled_attention_passes_the_layer_and_params():
    seen = []

    def spy(text_out, ip_out, scale, layer, *, strength):
        seen.append((layer, float(strength)))
        return text_out

    register_rescaler("test_spy", spy, params={"strength": 1.0})
    try:
        q, k, v = (torch.randn(1, 4, 8) for _ in range(3))
        decoupled_attention(q, k, v, k, v, 2, 1.0, make_rescaler("test_spy", "strength=0.3"), layer=7)
    finally:
        unregister_rescaler("test_spy")
    assert seen == [(7, pytest.approx(0.3))]


def test_readme_registration_example_declares_a_working_strategy():
    """The README's example pack, run as a module: collected, listed, parameters checked and used."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("#### A strategy from another node pack", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    example = types.ModuleType("readme_example_pack")
    exec(compile(code, "README.md", "exec"), example.__dict__)
    try:
        assert collect_declared([example]) == ["capped_normalized"]
        assert get_strategy("capped_normalized").any_layout
        with pytest.raises(UniIDError, match="cap=-1 is outside"):
            make_rescaler("capped_normalized", "cap=-1")
        gen = torch.Generator().manual_seed(1)
        text, ip = torch.randn(2, 6, 8, generator=gen), torch.randn(2, 6, 8, generator=gen) * 0.01
        scale = torch.tensor([[[0.8]], [[1.2]]])
        uncapped = combine_identity(text, ip, scale, make_rescaler("capped_normalized", "cap=100"))
        official = combine_identity(text, ip, scale, "normalized")
        torch.testing.assert_close(uncapped, official, rtol=1e-4, atol=1e-4)  # its epsilon is always added
        capped = combine_identity(text, ip, scale, make_rescaler("capped_normalized", "cap=2"))
        torch.testing.assert_close(capped, combine_identity(text, ip, scale * 2, "add"))
    finally:
        unregister_rescaler("capped_normalized")


def test_a_reloaded_module_replaces_its_own_declaration():
    first, second = types.ModuleType("test_reloaded_pack"), types.ModuleType("test_reloaded_pack")
    setattr(first, DECLARATION, [{"name": "test_reloaded", "fn": _blend, "params": {"strength": 0.5}}])
    setattr(second, DECLARATION, [{"name": "test_reloaded", "fn": normalized_rescale}])
    try:
        assert collect_declared([first]) == ["test_reloaded"]
        assert collect_declared([second]) == ["test_reloaded"]
        assert get_strategy("test_reloaded").fn is normalized_rescale
    finally:
        unregister_rescaler("test_reloaded")
