"""Merge schedule: the per-step rule by step index or by noise level, edge cases, split runs."""

from __future__ import annotations

import pytest

from uniid_core.schedule import MergeSchedule

SIGMAS = [14.6, 7.1, 4.1, 2.3, 1.6, 0.9, 0.45, 0.03, 0.0]


def test_official_defaults():
    s = MergeSchedule()
    assert (s.merge_step, s.text_before, s.text_after, s.adapter_before, s.adapter_after) == (
        5,
        0.5,
        1.8,
        0.8,
        1.2,
    )
    assert s.merge_sigma is None
    with pytest.raises(AttributeError):
        s.merge_step = 3


def test_step_rule_and_the_sigma_of_each_steps_start_agree():
    for merge in range(-1, len(SIGMAS) + 2):
        s = MergeSchedule(merge_step=merge)
        by_step = [s.before_merge(i, SIGMAS[i]) for i in range(len(SIGMAS) - 1)]
        by_sigma = [s.before_merge_at_sigma(SIGMAS[i], SIGMAS) for i in range(len(SIGMAS) - 1)]
        assert by_step == by_sigma == [s.before_merge_at_step(i) for i in range(len(SIGMAS) - 1)], merge


def test_merge_step_zero_or_negative_is_after_from_the_start():
    for merge in (0, -3):
        s = MergeSchedule(merge_step=merge)
        assert not s.before_merge(0, SIGMAS[0])
        assert s.adapter_scale_at_step(0) == 1.2 and s.text_scale_at_step(0) == 1.8
        assert s.before_merge_at_sigma(SIGMAS[0], SIGMAS) is False


def test_merge_step_beyond_last_step_is_before_for_all_steps():
    for merge in (8, 9, 100):
        s = MergeSchedule(merge_step=merge)
        assert all(s.before_merge(i, SIGMAS[i]) for i in range(8))
        assert all(s.before_merge_at_sigma(sigma, SIGMAS) for sigma in SIGMAS[:-1])
        assert s.text_scale(True) == 0.5 and s.adapter_scale(True) == 0.8


def test_second_evaluations_of_a_step_keep_its_scales():
    """The rule takes the step, not the sigma of each call: heun's second call of step 2 runs at
    sigma_3, which by sigma alone would already be 'after' for merge step 3."""
    s = MergeSchedule(merge_step=3)
    assert s.before_merge(2, SIGMAS[2])
    assert not s.before_merge_at_sigma(SIGMAS[3], SIGMAS)
    assert not s.before_merge(3, SIGMAS[3])


def test_sigma_rule_for_split_runs_and_float_rounding():
    s = MergeSchedule(merge_step=5)
    second_part = SIGMAS[3:]
    assert s.before_merge_at_sigma(second_part[1], second_part, offset=3)
    assert not s.before_merge_at_sigma(second_part[2], second_part, offset=3)
    assert not s.before_merge_at_sigma(second_part[0], second_part, offset=6)
    assert not s.before_merge_at_sigma(SIGMAS[5] * (1 + 1e-7), SIGMAS)


def test_merge_at_a_noise_level():
    """merge_sigma: step i is 'before' while the sigma it starts from is above the merge sigma, the same
    for any split of the run (no step count needed)."""
    s = MergeSchedule(merge_step=1, merge_sigma=1.0)
    assert [s.before_merge(i, SIGMAS[i]) for i in range(8)] == [True] * 5 + [False] * 3
    assert [s.before_merge(0, sigma) for sigma in SIGMAS[3:-1]] == [True, True, False, False, False]
    assert s.before_merge_at_sigma(1.6, SIGMAS, offset=7) and not s.before_merge_at_sigma(0.9, SIGMAS)
    assert not MergeSchedule(merge_sigma=1.6).before_merge(4, 1.6 * (1 + 1e-7))
