"""Rescaling strategies and the rescaler every front end combines with: how the identity attention is added.

A *strategy* is a function registered by name that adds the identity attention to the text attention;
it may declare named float parameters. A ``Rescaler`` is one strategy with parameter values and,
optionally, a weight per attn2 layer (by block group or by layer position in the official order). The
ComfyUI patch, the diffusers processor and the trainer's validation all combine through a Rescaler.

Built-ins: "normalized" (the official per-row Frobenius rule with its epsilon rule) and "add" (the
official plain sum). Other code registers more with ``register_rescaler``; a module that cannot import
this package yet (a ComfyUI pack loaded before ours) declares them in a module-level list
``UNIID_RESCALERS`` instead, which ``collect_declared`` registers from every imported module.
"""

from __future__ import annotations

import logging
import math
import re
import sys
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from types import ModuleType

import torch
from torch import Tensor

from .errors import UniIDError
from .family import BLOCK_ORDER

LOG = logging.getLogger("UniID")

Scale = float | Tensor
RescaleFn = Callable[..., Tensor]
"""``fn(text_out, ip_out, scale, layer, **params) -> combined`` (see ``register_rescaler``)."""

NORM_EPS = 1e-6
BUILTIN_RESCALERS = ("normalized", "add")
DECLARATION = "UNIID_RESCALERS"
"""The module-level list a module fills to declare strategies without importing uniid_core."""
ALL_LAYERS = "all"
_NAME = re.compile(r"[A-Za-z0-9_.\-]+")
_PARAM = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class StrategyParam:
    """A named float parameter of a strategy: its default and the range a value must lie in."""

    name: str
    default: float
    minimum: float = -math.inf
    maximum: float = math.inf

    def describe(self) -> str:
        """'name=default' plus the range when there is one, for tooltips and errors."""
        bounds = []
        if self.minimum > -math.inf:
            bounds.append(f">= {self.minimum:g}")
        if self.maximum < math.inf:
            bounds.append(f"<= {self.maximum:g}")
        return f"{self.name}={self.default:g}" + (f" ({', '.join(bounds)})" if bounds else "")


@dataclass(frozen=True)
class Strategy:
    """A registered rescaling strategy."""

    name: str
    fn: RescaleFn
    any_layout: bool = False
    params: tuple[StrategyParam, ...] = ()

    def describe(self) -> str:
        """The name and its parameters, e.g. 'soft (strength=0.5 (>= 0))'."""
        if not self.params:
            return self.name
        return f"{self.name} ({', '.join(p.describe() for p in self.params)})"


_REGISTRY: dict[str, Strategy] = {}
_DECLARED_FROM: dict[str, str] = {}
_WARNED: set[tuple[str, str]] = set()


def _param(strategy: str, name: str, spec: object) -> StrategyParam:
    """A StrategyParam from a registration's ``params`` entry: a default, or (default, minimum, maximum)."""
    if not isinstance(name, str) or not _PARAM.fullmatch(name):
        raise UniIDError(f"rescaler {strategy!r}: parameter name {name!r} must be a Python identifier")
    values = spec if isinstance(spec, tuple | list) else (spec,)
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        numbers = []
    if len(numbers) not in (1, 3):
        raise UniIDError(
            f"rescaler {strategy!r}: parameter {name!r} must be given as a default number or as "
            f"(default, minimum, maximum), got {spec!r}"
        )
    param = StrategyParam(name, *numbers)
    if not math.isfinite(param.default) or not param.minimum <= param.default <= param.maximum:
        raise UniIDError(f"rescaler {strategy!r}: the default of {param.describe()} is outside its range")
    return param


def register_rescaler(
    name: str,
    fn: RescaleFn,
    *,
    any_layout: bool = False,
    params: Mapping[str, float | tuple[float, float, float]] | None = None,
) -> None:
    """Register the strategy ``fn(text_out, ip_out, scale, layer, **params) -> combined`` under ``name``.

    ``text_out``/``ip_out`` are (B, Lq, C); ``scale`` is a float or a float32 tensor (b, 1|Lq, 1)
    broadcasting against them: the adapter scale of each row in this layer (schedule, layer weight and
    region mask folded together). ``layer`` identifies the layer (the ComfyUI patch and the diffusers
    processor pass its position in the official order, 0-69 on SDXL). ``params`` declares named float
    parameters (name -> default, or name -> (default, minimum, maximum)); ``fn`` receives each as a
    float32 0-dim tensor on the outputs' device, so new values need no recompilation under
    torch.compile (use tensor operations on them, never ``float()`` or ``if``). ``any_layout=True``
    declares that ``fn`` only reduces per batch row (dim 0) over all other dims and is otherwise
    elementwise, so it may be given the (B, heads, Lq, C/heads) layout to save a copy. Registering a
    name again replaces that strategy; the built-ins cannot be replaced.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise UniIDError(f"rescaler name {name!r} must be letters, digits, '_', '-' or '.'")
    if not callable(fn):
        raise UniIDError(f"rescaler {name!r} must be callable")
    current = _REGISTRY.get(name)
    if name in BUILTIN_RESCALERS and current is not None and current.fn is not fn:
        raise UniIDError(
            f"the built-in rescaler {name!r} cannot be replaced; register yours under another name"
        )
    declared = tuple(_param(name, key, spec) for key, spec in (params or {}).items())
    _REGISTRY[name] = Strategy(name, fn, bool(any_layout), declared)
    _DECLARED_FROM.pop(name, None)


def unregister_rescaler(name: str) -> None:
    """Remove a custom strategy (the built-ins "normalized" and "add" stay)."""
    if name in BUILTIN_RESCALERS:
        raise UniIDError(f"the built-in rescaler {name!r} cannot be removed")
    _REGISTRY.pop(name, None)
    _DECLARED_FROM.pop(name, None)


def rescaler_names() -> list[str]:
    """Registered strategies: the official "normalized" first, then the others by name."""
    official = BUILTIN_RESCALERS[0]
    return [official, *sorted(name for name in _REGISTRY if name != official)]


def get_strategy(name: str) -> Strategy:
    """The strategy registered under ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UniIDError(f"unknown adapter rescaler {name!r}; registered: {sorted(_REGISTRY)}") from None


def get_rescaler(name: str) -> RescaleFn:
    """The function of the strategy registered under ``name``."""
    return get_strategy(name).fn


def _warn_once(source: str, message: str) -> None:
    if (source, message) not in _WARNED:
        _WARNED.add((source, message))
        LOG.warning("UniID: %s: %s", source, message)


def _register_declared(entry: object, source: str) -> str | None:
    """Register one ``UNIID_RESCALERS`` entry of module ``source``; the new name, or None (warned)."""
    keys = {"name", "fn", "params", "any_layout"}
    if not isinstance(entry, Mapping) or not {"name", "fn"} <= set(entry) or set(entry) - keys:
        _warn_once(
            source,
            f"{DECLARATION} entries must be dicts with 'name' and 'fn' (optional "
            f"'params', 'any_layout'); ignored {entry!r}",
        )
        return None
    name, fn = entry["name"], entry["fn"]
    current = _REGISTRY.get(name) if isinstance(name, str) else None
    if current is not None and current.fn is fn:
        return None
    if current is not None and _DECLARED_FROM.get(name) != source:
        owner = _DECLARED_FROM.get(name, "code that registered it directly")
        _warn_once(source, f"rescaler {name!r} is already registered by {owner}; this one is ignored")
        return None
    try:
        register_rescaler(name, fn, any_layout=entry.get("any_layout", False), params=entry.get("params"))
    except UniIDError as exc:
        _warn_once(source, f"{exc}; ignored")
        return None
    _DECLARED_FROM[name] = source
    return name


def collect_declared(modules: Iterable[object] | None = None) -> list[str]:
    """Register the strategies that imported modules declare in ``UNIID_RESCALERS``; the names added.

    Scans ``sys.modules`` by default (only module dictionaries are read, so no lazy module is
    triggered). A strategy already registered under the same name by other code keeps its place; a
    module that declares a name again (reloaded) replaces its own strategy.
    """
    added = []
    for module in list(sys.modules.values()) if modules is None else modules:
        if not isinstance(module, ModuleType):
            continue
        declared = module.__dict__.get(DECLARATION)
        if declared is None:
            continue
        source = module.__dict__.get("__name__", "?")
        if not isinstance(declared, list | tuple):
            _warn_once(source, f"{DECLARATION} must be a list of dicts")
            continue
        added += [name for name in (_register_declared(e, source) for e in declared) if name is not None]
    return added


def _row_norms(x: Tensor) -> Tensor:
    """Frobenius norm of each batch row over all other dims, in float32 (or wider), shaped to broadcast."""
    dims = tuple(range(1, x.ndim))
    return torch.linalg.vector_norm(
        x, dim=dims, keepdim=True, dtype=torch.promote_types(x.dtype, torch.float32)
    )


def normalized_rescale(
    text_out: Tensor, ip_out: Tensor, scale: Scale, layer: Hashable | None = None
) -> Tensor:
    """Official rule: O_txt + s * (||O_txt|| / ||O_ip||) * O_ip, norms per batch row; +1e-6 if any tiny.

    The scalar factor is formed on the (B, 1, 1) norms, so the big tensors see one multiply and one add
    (unfused, rounding like the official code).
    """
    norm_txt = _row_norms(text_out)
    norm_ip = _row_norms(ip_out)
    factor = norm_txt / (norm_ip + (norm_ip.amin() < NORM_EPS) * NORM_EPS)
    if isinstance(scale, Tensor):
        factor = factor * scale.to(device=factor.device, dtype=torch.float32)
    else:
        factor = factor * float(scale)
    return text_out + ip_out * factor.to(text_out.dtype)


def add_rescale(text_out: Tensor, ip_out: Tensor, scale: Scale, layer: Hashable | None = None) -> Tensor:
    """Official plain rule: O_txt + s * O_ip."""
    if isinstance(scale, Tensor):
        return text_out + ip_out * scale.to(device=text_out.device, dtype=text_out.dtype)
    return text_out + ip_out * float(scale)


register_rescaler("normalized", normalized_rescale, any_layout=True)
register_rescaler("add", add_rescale, any_layout=True)


@dataclass(frozen=True)
class WeightRule:
    """One entry of a layer-weight spec: a block group (or all layers) or a position range, and its weight."""

    group: str | None
    first: int
    last: int
    weight: float

    def covers(self, position: int, group: str) -> bool:
        """True when the layer at ``position`` in block group ``group`` takes this rule's weight."""
        if self.group is None:
            return self.first <= position <= self.last
        return self.group in (ALL_LAYERS, group)


@dataclass(frozen=True)
class LayerWeights:
    """Weights of the attn2 layers by block group or position; later rules win, unnamed layers get 1."""

    rules: tuple[WeightRule, ...] = ()

    def resolve(self, groups: Sequence[str]) -> list[float]:
        """One weight per layer, for layers whose block groups are ``groups`` (official order)."""
        count = len(groups)
        for rule in self.rules:
            if rule.group is None and rule.last >= count:
                raise UniIDError(
                    f"layer weights: position {rule.last} is past the last cross-attention layer; this model "
                    f"has {count} ({describe_positions(groups)})"
                )
        weights = []
        for position, group in enumerate(groups):
            weight = 1.0
            for rule in self.rules:
                if rule.covers(position, group):
                    weight = rule.weight
            weights.append(weight)
        return weights

    def describe(self) -> str:
        """The spec in its canonical text form, e.g. 'input:1, middle:0.5, 0-3:0'."""
        parts = []
        for rule in self.rules:
            span = str(rule.first) if rule.first == rule.last else f"{rule.first}-{rule.last}"
            where = rule.group or span
            parts.append(f"{where}:{rule.weight:g}")
        return ", ".join(parts)


def describe_positions(groups: Sequence[str]) -> str:
    """Which positions each block group holds, e.g. 'input 0-23, output 24-59, middle 60-69'."""
    spans = []
    for group in BLOCK_ORDER:
        positions = [i for i, g in enumerate(groups) if g == group]
        if positions:
            spans.append(f"{group} {positions[0]}-{positions[-1]}")
    return f"positions 0-{len(groups) - 1}: " + ", ".join(spans)


def _weight(text: str, entry: str) -> float:
    try:
        weight = float(text)
    except ValueError:
        raise UniIDError(f"layer weights: {entry!r}: {text.strip()!r} is not a number") from None
    if not math.isfinite(weight) or weight < 0:
        raise UniIDError(f"layer weights: {entry!r}: a weight must be a finite number >= 0")
    return weight


def _rule(entry: str) -> WeightRule:
    """One 'selector:weight' entry."""
    selector, sep, value = entry.replace("=", ":").partition(":")
    if not sep:
        raise UniIDError(
            f"layer weights: {entry!r}: write each entry as selector:weight, e.g. 'middle:0.5' or '0-9:0'"
        )
    weight = _weight(value, entry)
    where = selector.strip().lower()
    if where in (*BLOCK_ORDER, ALL_LAYERS):
        return WeightRule(where, 0, 0, weight)
    match = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", where)
    if match is None:
        raise UniIDError(
            f"layer weights: {entry!r}: {selector.strip()!r} is neither a block group "
            f"({', '.join((*BLOCK_ORDER, ALL_LAYERS))}) nor a layer position (12) or range (0-9)"
        )
    first = int(match.group(1))
    last = int(match.group(2)) if match.group(2) is not None else first
    if last < first:
        raise UniIDError(f"layer weights: {entry!r}: the range must go from the lower position to the higher")
    return WeightRule(None, first, last, weight)


def parse_layer_weights(text: str) -> LayerWeights:
    """A layer-weight spec such as 'input:1.0, middle:0.5, output:1.2' or '0-3:0.5, 40:0' (later wins).

    Entries are separated by commas, semicolons or new lines; a selector is a block group (input,
    middle, output), ``all``, a layer position in the official order or a range of them.
    """
    entries = [part.strip() for part in re.split(r"[,;\n]", text or "")]
    return LayerWeights(tuple(_rule(entry) for entry in entries if entry))


def parse_params(strategy: Strategy, text: str | Mapping[str, float]) -> tuple[tuple[str, float], ...]:
    """Every declared parameter of ``strategy`` with its value: given as 'name=value, ...' or a mapping.

    Unnamed parameters take their defaults; unknown names, numbers that are not numbers and values out
    of range are errors that say what the strategy accepts.
    """
    accepted = ", ".join(p.describe() for p in strategy.params) or "none"
    given: dict[str, float] = {}
    if isinstance(text, Mapping):
        items = [(str(k), v) for k, v in text.items()]
    else:
        items = []
        for entry in (part.strip() for part in re.split(r"[,;\n]", text or "")):
            if not entry:
                continue
            name, sep, value = entry.replace(":", "=").partition("=")
            if not sep:
                raise UniIDError(
                    f"rescaler {strategy.name!r}: {entry!r}: write parameters as name=value "
                    f"(parameters: {accepted})"
                )
            items.append((name.strip(), value.strip()))
    known = {p.name: p for p in strategy.params}
    for name, value in items:
        if name not in known:
            raise UniIDError(f"rescaler {strategy.name!r} has no parameter {name!r} (parameters: {accepted})")
        if name in given:
            raise UniIDError(f"rescaler {strategy.name!r}: parameter {name!r} is given twice")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise UniIDError(f"rescaler {strategy.name!r}: {name}={value!r} is not a number") from None
        param = known[name]
        if not math.isfinite(number) or not param.minimum <= number <= param.maximum:
            raise UniIDError(f"rescaler {strategy.name!r}: {name}={value} is outside {param.describe()}")
        given[name] = number
    return tuple((p.name, given.get(p.name, p.default)) for p in strategy.params)


@dataclass(frozen=True)
class Rescaler:
    """A strategy with its parameter values and per-layer weights: what UniID combines the identity with.

    Build one with ``make_rescaler`` (it checks the parameters); ``with_layer_weights`` adds weights,
    which multiply with those already there.
    """

    strategy: str = BUILTIN_RESCALERS[0]
    params: tuple[tuple[str, float], ...] = ()
    weights: tuple[LayerWeights, ...] = ()

    def with_layer_weights(self, weights: LayerWeights) -> Rescaler:
        """A copy whose per-layer weights are also multiplied by ``weights``."""
        return replace(self, weights=self.weights + (weights,))

    def layer_weights(self, groups: Sequence[str]) -> list[float]:
        """The weight of every layer, given the layers' block groups in official order (1 where unset)."""
        combined = [1.0] * len(groups)
        for weights in self.weights:
            combined = [a * b for a, b in zip(combined, weights.resolve(groups), strict=True)]
        return combined

    def param_tensors(self, device: torch.device | str | None = None) -> dict[str, Tensor]:
        """The parameter values as float32 0-dim tensors on ``device`` (what the strategy receives)."""
        return {name: torch.tensor(value, dtype=torch.float32, device=device) for name, value in self.params}

    def describe(self) -> str:
        """A one-line summary, e.g. 'normalized, layer weights middle:0.5'."""
        text = self.strategy
        if self.params:
            text += " (" + ", ".join(f"{name}={value:g}" for name, value in self.params) + ")"
        specs = [w.describe() for w in self.weights if w.rules]
        if specs:
            text += ", layer weights " + " x ".join(specs)
        return text


def make_rescaler(strategy: str, params: str | Mapping[str, float] = "") -> Rescaler:
    """A Rescaler for the registered ``strategy`` with ``params`` ('name=value, ...' or a mapping)."""
    return Rescaler(strategy, parse_params(get_strategy(strategy), params))


def as_rescaler(rescale: str | Rescaler) -> Rescaler:
    """``rescale`` as a Rescaler: a strategy name gets its default parameters."""
    return rescale if isinstance(rescale, Rescaler) else make_rescaler(rescale)


def rescaler_from_text(strategy: str, params: str = "", layer_weights: str = "") -> Rescaler:
    """A Rescaler from the three texts a command line or config gives: strategy, params, layer weights."""
    rescaler = make_rescaler(strategy, params)
    weights = parse_layer_weights(layer_weights)
    return rescaler.with_layer_weights(weights) if weights.rules else rescaler
