"""The plan: ASHA's rungs and the compute budget, before anything runs."""

from __future__ import annotations

import math

import pytest

from tests.conftest import TINY
from tuner.errors import UserError
from tuner.pipeline import check_plan
from tuner.plan import asha_rungs, make_plan
from tuner.spec import load_spec


@pytest.fixture
def spec():
    return load_spec(TINY)


def test_asha_rungs_match_rays_milestones():
    assert asha_rungs(16384, 200320, 2) == [16384, 32768, 65536, 131072]
    assert asha_rungs(100, 1000, 3) == [100, 300, 900]
    assert asha_rungs(1000, 1000, 2) == []


def test_plan_derives_max_t_from_the_largest_epoch_count(spec):
    plan = make_plan(spec, train_tokens=100_000)
    assert plan.max_t == 2 * 100_000  # num_train_epochs: int 1..2
    assert plan.grace_period == 16384
    assert plan.budget_tokens == 8 * 200_000
    assert plan.budget_reports == 8 * math.ceil(200_000 / 16384)
    assert "trial-reports" in plan.describe()


def test_plan_without_data_says_when_the_budget_is_known(spec):
    plan = make_plan(spec, train_tokens=None)
    assert plan.max_t is None and plan.budget_tokens is None
    assert "known once the data is prepared" in plan.describe()


def test_a_grace_period_past_the_derived_max_t_is_refused(spec):
    raw = spec.to_dict()
    raw.pop("origin")
    raw["scheduler"]["grace_period"] = 50_000
    spec = load_spec(raw)
    check_plan(spec, make_plan(spec, train_tokens=30_000))  # 2 epochs: max_t 60000
    with pytest.raises(UserError, match=r"scheduler.grace_period: got 50000, larger than max_t=40000 tokens"):
        check_plan(spec, make_plan(spec, train_tokens=20_000))
