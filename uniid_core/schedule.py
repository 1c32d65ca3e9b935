"""Merge schedule: identity scales before and after the merge point, decided once per sampling step.

Official rule: step i < merge_step uses the "before" scales, later steps the "after" scales;
merge_step <= 0 means "after" from the first step. The rule is per step: every model evaluation of
step i uses step i's scales (a second-order sampler's extra evaluations included). Optionally the merge
point is a noise level (``merge_sigma``): step i is "before" while the sigma it starts from is above
it, which stays exact when a run is split into segments. Samplers without a step structure (adaptive
solvers) can only be placed by the sigma of each evaluation (``before_merge_at_sigma``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

SIGMA_RTOL = 1e-5


@dataclass(frozen=True)
class MergeSchedule:
    """Text-token and adapter scales before/after the merge point (official defaults)."""

    merge_step: int = 5
    text_before: float = 0.5
    text_after: float = 1.8
    adapter_before: float = 0.8
    adapter_after: float = 1.2
    merge_sigma: float | None = None

    def before_merge_at_step(self, i: int) -> bool:
        """True while step ``i`` (0-based, counted over the whole schedule) comes before the merge step."""
        return self.merge_step > 0 and i < self.merge_step

    def before_merge(self, step: int, step_sigma: float) -> bool:
        """The per-step rule: by step index, or by the step's starting sigma when ``merge_sigma`` is set."""
        if self.merge_sigma is None:
            return self.before_merge_at_step(step)
        return _above(step_sigma, self.merge_sigma)

    def before_merge_at_sigma(self, sigma: float, sigmas: Sequence[float], offset: int = 0) -> bool:
        """The rule for one evaluation at ``sigma`` when steps cannot be told apart.

        ``sigmas`` is the run's schedule and ``offset`` the number of steps run before it (split runs):
        "before" while sigma > the sigma at the merge step (or above ``merge_sigma``), with a relative
        tolerance of 1e-5 so that float rounding of the same sigma does not flip the decision.
        """
        if self.merge_sigma is not None:
            return _above(sigma, self.merge_sigma)
        local = self.merge_step - offset
        if self.merge_step <= 0 or local <= 0:
            return False
        if local >= len(sigmas) - 1:
            return True
        return _above(sigma, sigmas[local])

    def text_scale(self, before: bool) -> float:
        """Scale of the spliced text tokens for a before/after flag."""
        return self.text_before if before else self.text_after

    def adapter_scale(self, before: bool) -> float:
        """Adapter-attention scale for a before/after flag."""
        return self.adapter_before if before else self.adapter_after

    def text_scale_at_step(self, i: int) -> float:
        """Text-token scale at step ``i``."""
        return self.text_scale(self.before_merge_at_step(i))

    def adapter_scale_at_step(self, i: int) -> float:
        """Adapter scale at step ``i``."""
        return self.adapter_scale(self.before_merge_at_step(i))


def _above(sigma: float, threshold: float) -> bool:
    return float(sigma) > float(threshold) * (1.0 + SIGMA_RTOL)
