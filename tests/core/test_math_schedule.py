"""Merge schedule: step-index and sigma rules, edge cases, tensor outputs without host sync."""

from __future__ import annotations

import pytest
import torch

from uniid_core.schedule import MergeSchedule

SIGMAS = torch.tensor([14.6, 7.1, 4.1, 2.3, 1.6, 0.9, 0.45, 0.03, 0.0])


def test_official_defaults():
    s = MergeSchedule()
    assert (s.merge_step, s.text_before, s.text_after, s.adapter_before, s.adapter_after) == (
        5,
        0.5,
        1.8,
        0.8,
        1.2,
    )
    with pytest.raises(AttributeError):
        s.merge_step = 3


def test_step_rule_matches_sigma_rule():
    for merge in range(-1, len(SIGMAS) + 2):
        s = MergeSchedule(merge_step=merge)
        by_step = [s.before_merge_at_step(i) for i in range(len(SIGMAS) - 1)]
        by_sigma = [bool(s.before_merge_at_sigma(SIGMAS[i], SIGMAS)) for i in range(len(SIGMAS) - 1)]
        assert by_step == by_sigma, merge


def test_merge_step_zero_or_negative_is_after_from_the_start():
    for merge in (0, -3):
        s = MergeSchedule(merge_step=merge)
        assert not s.before_merge_at_step(0)
        assert s.adapter_scale_at_step(0) == 1.2 and s.text_scale_at_step(0) == 1.8
        assert s.before_merge_at_sigma(float(SIGMAS[0]), SIGMAS) is False
        torch.testing.assert_close(s.adapter_scale_at_sigma(SIGMAS[:-1], SIGMAS), torch.full((8,), 1.2))


def test_merge_step_beyond_last_step_is_before_for_all_steps():
    for merge in (8, 9, 100):
        s = MergeSchedule(merge_step=merge)
        assert all(s.before_merge_at_step(i) for i in range(8))
        torch.testing.assert_close(s.text_scale_at_sigma(SIGMAS[:-1], SIGMAS), torch.full((8,), 0.5))
        torch.testing.assert_close(s.adapter_scale_at_sigma(SIGMAS[:-1], SIGMAS), torch.full((8,), 0.8))


def test_multi_evaluation_samplers_use_sigma():
    s = MergeSchedule(merge_step=3)
    # a second-order sampler evaluates step i at sigma_i and at a sigma between sigma_i and sigma_{i+1}
    mid = (SIGMAS[2] * SIGMAS[3]).sqrt()
    assert bool(s.before_merge_at_sigma(mid, SIGMAS))
    assert not bool(s.before_merge_at_sigma(SIGMAS[3], SIGMAS))
    assert not bool(s.before_merge_at_sigma((SIGMAS[3] * SIGMAS[4]).sqrt(), SIGMAS))
    # float rounding of the same sigma does not flip the decision
    assert not bool(s.before_merge_at_sigma(SIGMAS[3].double() * (1 + 1e-7), SIGMAS))
    assert s.before_merge_at_sigma(float(SIGMAS[2]), SIGMAS) is True


def test_per_row_sigmas_give_per_row_scales():
    s = MergeSchedule(merge_step=2)
    sigma = torch.tensor([SIGMAS[0], SIGMAS[5]])
    torch.testing.assert_close(s.adapter_scale_at_sigma(sigma, SIGMAS), torch.tensor([0.8, 1.2]))
    torch.testing.assert_close(s.text_scale_at_sigma(sigma, SIGMAS), torch.tensor([0.5, 1.8]))
    assert s.adapter_scale_at_sigma(sigma, SIGMAS).dtype == torch.float32


def test_tensor_versions_do_not_sync(monkeypatch):
    s = MergeSchedule(merge_step=2)

    def forbidden(*args, **kwargs):
        raise AssertionError("host sync")

    for name in ("item", "cpu", "tolist", "__bool__", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    s.adapter_scale_at_sigma(SIGMAS[1], SIGMAS)
    s.text_scale_at_sigma(SIGMAS[:4], SIGMAS)
    s.adapter_scale(torch.tensor([True, False]))
