"""Which sampling step each model evaluation belongs to, tracked on the host from the sampler's step callback.

ComfyUI's samplers evaluate the model for step i first (at sigma_i), then call the step callback with
i, and some then make further evaluations that still belong to step i (heun's at sigma_{i+1}, the
midpoints of dpm_2, dpmpp_2s_ancestral, dpmpp_sde, seeds, sa_solver's PECE correction). How many is
known for every built-in sampler (``EXTRA_CALLS``); for a sampler from another pack, every evaluation
after callback(i) counts toward step i+1. dpm_fast and dpm_adaptive have no fixed steps: their
evaluations are placed by their own sigma (``BY_SIGMA``), as are those of a sampler that evaluates the
model twice without reporting a step. Nothing here touches a device tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import comfy.extra_samplers.uni_pc as uni_pc
import comfy.k_diffusion.sampling as k_sampling

ExtraCalls = Callable[[int, Sequence[float], dict], int]
BY_SIGMA = "by_sigma"


def _none(i: int, sigmas: Sequence[float], options: dict) -> int:
    return 0


def _one_unless_last(i: int, sigmas: Sequence[float], options: dict) -> int:
    """heun, dpm_2, dpmpp_sde, seeds_2: one more evaluation unless the step goes to sigma 0."""
    return int(sigmas[i + 1] != 0)


def _two_unless_last(i: int, sigmas: Sequence[float], options: dict) -> int:
    """seeds_3: two more evaluations unless the step goes to sigma 0."""
    return 2 * int(sigmas[i + 1] != 0)


def _ancestral_midpoint(i: int, sigmas: Sequence[float], options: dict) -> int:
    """dpm_2_ancestral, dpmpp_2s_ancestral: a midpoint evaluation unless the step's sigma_down is 0."""
    eta = float(options.get("eta", 1.0))
    sigma_from, sigma_to = sigmas[i], sigmas[i + 1]
    if not eta:
        return int(sigma_to != 0)
    sigma_up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    return int((sigma_to**2 - sigma_up**2) ** 0.5 != 0)


def _heunpp2(i: int, sigmas: Sequence[float], options: dict) -> int:
    """heunpp2: Euler into the last sigma, Heun one step before it, Heun++ (two more) otherwise."""
    if sigmas[i + 1] == sigmas[-1]:
        return 0
    return 1 if sigmas[i + 2] == sigmas[-1] else 2


def _sa_solver(i: int, sigmas: Sequence[float], options: dict) -> int:
    """sa_solver in PECE mode re-evaluates the corrected state of every step after the first."""
    return int(bool(options.get("use_pece")) and i > 0 and int(options.get("corrector_order", 4)) > 0)


def _sa_solver_pece(i: int, sigmas: Sequence[float], options: dict) -> int:
    return _sa_solver(i, sigmas, {**options, "use_pece": True})


EXTRA_CALLS: dict[str, ExtraCalls] = {
    "sample_heun": _one_unless_last,
    "sample_dpm_2": _one_unless_last,
    "sample_dpmpp_sde": _one_unless_last,
    "sample_dpmpp_sde_gpu": _one_unless_last,
    "sample_seeds_2": _one_unless_last,
    "sample_seeds_3": _two_unless_last,
    "sample_dpm_2_ancestral": _ancestral_midpoint,
    "sample_dpmpp_2s_ancestral": _ancestral_midpoint,
    "sample_dpmpp_2s_ancestral_cfg_pp": _ancestral_midpoint,
    "sample_heunpp2": _heunpp2,
    "sample_sa_solver": _sa_solver,
    "sample_sa_solver_pece": _sa_solver_pece,
}
SIGMA_PLACED = {"ksampler.<locals>.dpm_fast_function", "ksampler.<locals>.dpm_adaptive_function"}


def step_rule(sampler: object) -> ExtraCalls | str:
    """The extra-evaluation rule of a ComfyUI sampler object, or ``BY_SIGMA`` for adaptive solvers."""
    function = getattr(sampler, "sampler_function", None)
    name = getattr(function, "__name__", "")
    if getattr(function, "__module__", "") == "comfy.samplers" and function.__qualname__ in SIGMA_PLACED:
        return BY_SIGMA
    if name in EXTRA_CALLS and getattr(k_sampling, name, None) is function:
        return EXTRA_CALLS[name]
    return _none


def is_known(sampler: object) -> bool:
    """True for ComfyUI's own samplers (whose step structure this module knows exactly)."""
    function = getattr(sampler, "sampler_function", None)
    name = getattr(function, "__name__", "")
    if getattr(k_sampling, name, None) is function or getattr(uni_pc, name, None) is function:
        return True
    return getattr(function, "__qualname__", "") in SIGMA_PLACED


class StepClock:
    """Host-side step counter of one sampler run, advanced by the step callback and each evaluation."""

    def __init__(self, rule: ExtraCalls, sigmas: Sequence[float], options: dict) -> None:
        self.rule = rule
        self.sigmas = list(sigmas)
        self.options = dict(options)
        self.step = 0
        self.head_done = False
        self.pending = 0
        self.evaluations = 0
        self.reported = False

    def silent(self) -> bool:
        """True when the sampler evaluated the model again without ever reporting a step."""
        return self.evaluations > 0 and not self.reported

    def on_step(self, i: int) -> None:
        """The sampler reports step ``i``: its first evaluation is done, ``rule`` more may follow."""
        self.step = int(i)
        self.head_done = True
        self.reported = True
        self.pending = self.rule(self.step, self.sigmas, self.options)

    def next_evaluation(self) -> int:
        """The run-local step index of the evaluation about to happen."""
        self.evaluations += 1
        if self.head_done:
            if self.pending > 0:
                self.pending -= 1
                return self.step
            self.step += 1
            self.head_done = False
        return self.step
