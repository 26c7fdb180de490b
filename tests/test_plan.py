"""The plan: ASHA's rungs and the compute budget, before anything runs."""

from __future__ import annotations

import math

import pytest

from tests.conftest import TINY
from tuner.errors import UserError
from tuner.pipeline import check_plan
from tuner.plan import asha_rungs, data_warnings, make_plan
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


def test_a_train_split_smaller_than_the_grace_period_and_two_reports_is_warned(spec):
    """A 175-record instruction set: ASHA's first rung after an epoch, one report an epoch."""
    warnings = data_warnings(spec, make_plan(spec, 2150), 2150)
    assert len(warnings) == 2
    assert warnings[0].startswith("scheduler.grace_period: the train split holds 2150 tokens, fewer than the "
                                  f"grace period ({spec.scheduler.grace_period})")
    assert "set scheduler.grace_period to about 537" in warnings[0]
    assert warnings[1].startswith("train.report_every_tokens: the train split holds 2150 tokens, fewer than two "
                                  f"report intervals ({spec.train.report_every_tokens} each)")
    assert "set train.report_every_tokens to about 268" in warnings[1]
    assert "about 2150" in data_warnings(spec, make_plan(spec, 2150), 2150, estimated=True)[0]


def test_a_train_split_that_fits_the_plan_is_not_warned(spec):
    assert data_warnings(spec, make_plan(spec, 100_000), 100_000) == []


@pytest.fixture
def small_instruction_set(tmp_path):
    """175 question/answer records: a few thousand tokens, like a user's first instruction set."""
    import json

    rows = [{"question": f"What is {i} plus {i}?", "answer": f" It is {2 * i}."} for i in range(175)]
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return ["--set", f"storage={tmp_path / 'sweep'}", "--set", f"data.path={path}",
            "--set", "data.prompt_column=question", "--set", "data.completion_column=answer",
            "--set", "data.block_size=8"]


def test_validate_warns_when_the_data_is_small_for_the_plan(small_instruction_set, capsys):
    import launch

    assert launch.main(["validate", str(TINY), *small_instruction_set]) == 0
    err = capsys.readouterr().err
    assert "warning: scheduler.grace_period: the train split holds about" in err
    assert "warning: train.report_every_tokens: the train split holds about" in err


def test_sweep_warns_before_the_first_trial(small_instruction_set, caplog, monkeypatch):
    import launch
    from tuner import sweep, tracking

    def first_trial(*args, **kwargs):
        raise RuntimeError("the search was about to start")

    monkeypatch.setattr(sweep, "init_ray", first_trial)
    monkeypatch.setattr(tracking, "Tracker", first_trial)
    with caplog.at_level("WARNING", logger="tuner"), pytest.raises(RuntimeError, match="about to start"):
        # without a grace period of its own, ASHA's comes from max_t (two epochs): more than one epoch
        launch.main(["sweep", str(TINY), *small_instruction_set, "--set", "scheduler.grace_period=null"])
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(m.startswith("scheduler.grace_period: the train split holds ") for m in warned), warned
    assert any(m.startswith("train.report_every_tokens: the train split holds ") for m in warned), warned
