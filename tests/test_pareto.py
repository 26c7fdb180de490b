"""Several objectives (`search.metrics`), without a sweep: the Pareto front on hand-made points, each
trial's values, `promote.pick`, the leaderboard's column, the front's drawing, what the searcher
tells Optuna and what `--restart-search` rebuilds, and the spec's rules."""

from __future__ import annotations

import csv
import math
import re

import optuna
import pytest

from tests.conftest import TINY
from tuner import constants as C
from tuner import pareto, report, results, retention, searcher, study
from tuner.records import TrialRecord
from tuner.spec import PickSpec, SpecError, load_spec, tolerance

MIN_MIN = ["min", "min"]
TWO = [(C.EVAL_LOSS, "min"), (C.TRAINABLE_PARAMS, "min")]
METRICS = "search.metrics=[{name: eval_loss, mode: min}, {name: trainable_params, mode: min}]"
SWEEP_ID = "sweep0000001"


# ---------------------------------------------------------------------------------------------
# The front, exact on hand-made points.


def test_a_point_dominates_when_no_worse_anywhere_and_better_somewhere():
    assert pareto.dominates((1.0, 1.0), (2.0, 1.0), MIN_MIN)
    assert not pareto.dominates((1.0, 1.0), (1.0, 1.0), MIN_MIN)  # equal: neither
    assert not pareto.dominates((1.0, 3.0), (2.0, 1.0), MIN_MIN)  # a trade
    assert pareto.dominates((1.0, 5.0), (2.0, 4.0), ["min", "max"])  # higher is better on the second


def test_the_front_of_two_minimised_objectives():
    points = {"a": (1.0, 9.0), "b": (2.0, 4.0), "c": (3.0, 4.0), "d": (4.0, 1.0), "e": (5.0, 5.0), "f": (2.5, 3.0)}
    # c is beaten by b (same cost, lower loss), e by b, d, f; f trades with b and d
    assert pareto.front(points, MIN_MIN) == {"a", "b", "d", "f"}


def test_equal_points_are_all_on_the_front_and_a_tie_on_one_axis_is_decided_by_the_other():
    points = {"a": (1.0, 2.0), "b": (1.0, 2.0), "c": (1.0, 3.0), "d": (0.5, 3.0)}
    assert pareto.front(points, MIN_MIN) == {"a", "b", "d"}


def test_a_min_max_mix_flips_the_second_axis():
    points = {"a": (1.0, 100.0), "b": (2.0, 300.0), "c": (3.0, 200.0), "d": (1.5, 50.0)}
    assert pareto.front(points, ["min", "max"]) == {"a", "b"}
    assert pareto.front(points, MIN_MIN) == {"a", "d"}
    assert pareto.front(points, ["max", "max"]) == {"b", "c"}


def test_one_point_and_none():
    assert pareto.front({"a": (1.0, 1.0)}, MIN_MIN) == {"a"}
    assert pareto.front({}, MIN_MIN) == set()


# ---------------------------------------------------------------------------------------------
# A trial's values: its best report on the first objective, the others from that report.


def record(trial_id: str, reports: list[tuple[float, float]], status: str = C.COMPLETED, **fields) -> TrialRecord:
    """A trial whose reports carry (eval_loss, trainable_params), 1,000 tokens and one step apart."""
    history = [{C.STEP: k, C.TOKENS_SEEN: 1000 * k, C.EVAL_LOSS: loss, C.TRAINABLE_PARAMS: params}
               for k, (loss, params) in enumerate(reports, 1)]
    finite = [(h[C.EVAL_LOSS], h[C.STEP]) for h in history if math.isfinite(h[C.EVAL_LOSS])]
    best, step = min(finite) if finite else (None, None)
    return TrialRecord(trial_id, status=status, history=history, reports=len(history), best_metric=best,
                       best_step=step, best_checkpoint=f"{trial_id}/checkpoint_000001", tokens_seen=1000 * len(history),
                       **fields)


def test_a_trials_values_come_from_its_best_report_on_the_first_objective():
    trial = record("t", [(5.0, 100.0), (4.0, 200.0), (4.5, 50.0)])
    assert pareto.values(trial, TWO) == (4.0, 200.0)  # not the lowest params, which came with a worse loss


def test_a_trial_without_a_finite_value_has_none():
    assert pareto.values(record("t", [(math.nan, 100.0)], status=C.DIVERGED), TWO) is None
    assert pareto.values(record("t", [(4.0, math.nan)]), TWO) is None
    assert pareto.values(record("t", [(4.0, 10.0)]), []) is None


def test_only_completed_trials_feed_the_front():
    found = [record("a", [(4.0, 100.0)]), record("b", [(3.0, 500.0)]),
             record("cheap", [(6.0, 10.0)], status=C.STOPPED_ASHA, rung=1000),
             record("nan", [(math.nan, 1.0)], status=C.DIVERGED)]
    assert pareto.front_ids(found, TWO) == {"a", "b"}


# ---------------------------------------------------------------------------------------------
# promote.pick.


FRONT = [record("best", [(2.00, 800.0)]), record("near", [(2.015, 200.0)]), record("nearer", [(2.01, 400.0)]),
         record("far", [(2.10, 50.0)])]


def pick(found, **settings) -> list[str]:
    ordered = pareto.pick(results_order(found), found, TWO, PickSpec(**settings))
    return [r.trial_id for r in ordered]


def results_order(found):
    return sorted(found, key=lambda r: r.best_metric)


def test_pick_takes_the_cheapest_within_one_percent_of_the_best_loss():
    assert pick(FRONT, then=C.TRAINABLE_PARAMS, within="1%") == ["near", "nearer", "best", "far"]


def test_pick_within_an_absolute_amount_and_within_nothing():
    assert pick(FRONT, then=C.TRAINABLE_PARAMS, within=0.2)[0] == "far"
    assert pick(FRONT, then=C.TRAINABLE_PARAMS, within=0.012)[0] == "nearer"
    assert pick(FRONT, then=C.TRAINABLE_PARAMS, within="0%")[0] == "best"


def test_pick_among_the_front_leaves_out_dominated_trials_unless_asked_for_all():
    dominated = record("dominated", [(2.005, 900.0)])  # near the best loss, but beaten by `best` on both
    cheap_stopped = record("stopped", [(2.012, 100.0)], status=C.STOPPED_PATIENCE)  # not completed: off the front
    found = [*FRONT, dominated, cheap_stopped]
    assert pick(found, then=C.TRAINABLE_PARAMS)[0] == "near"
    assert pick(found, then=C.TRAINABLE_PARAMS, among="all")[0] == "stopped"


def test_pick_then_a_maximised_cost_in_its_own_mode():
    objectives = [(C.EVAL_LOSS, "min"), (C.TRAIN_TOKENS_PER_S, "max")]
    fast = TrialRecord("fast", status=C.COMPLETED, best_metric=2.01, best_step=1, best_checkpoint="x", history=[
        {C.STEP: 1, C.EVAL_LOSS: 2.01, C.TRAIN_TOKENS_PER_S: 900.0}])
    slow = TrialRecord("slow", status=C.COMPLETED, best_metric=2.0, best_step=1, best_checkpoint="x", history=[
        {C.STEP: 1, C.EVAL_LOSS: 2.0, C.TRAIN_TOKENS_PER_S: 300.0}])
    ordered = pareto.pick([slow, fast], [slow, fast], objectives, PickSpec(then=C.TRAIN_TOKENS_PER_S))
    assert [r.trial_id for r in ordered] == ["fast", "slow"]


def test_tolerance_reads_percentages_and_amounts():
    assert tolerance("1%") == (0.01, True) and tolerance("2.5 %") == (0.025, True)
    assert tolerance(0.05) == (0.05, False) and tolerance("0") == (0.0, False)
    assert tolerance("-1%") is None and tolerance("abc") is None and tolerance(-0.1) is None


# ---------------------------------------------------------------------------------------------
# The leaderboard, the checkpoints kept, the report.


def test_the_leaderboard_marks_the_front_and_gives_each_objective(tmp_path):
    found = [*FRONT, record("dominated", [(2.5, 900.0)]), record("stopped", [(2.2, 10.0)], status=C.STOPPED_ASHA)]
    rows = results.leaderboard(tmp_path, "min", None, found, TWO)
    results.write_csv(rows, tmp_path / "leaderboard.csv")
    with open(tmp_path / "leaderboard.csv") as f:
        written = {row["trial_id"]: row for row in csv.DictReader(f)}
    assert {t for t, row in written.items() if row["pareto"] == "True"} == {"best", "near", "nearer", "far"}
    assert written["near"]["objective_trainable_params"] == "200.0"
    assert "pareto" not in results.leaderboard(tmp_path, "min", None, found)[0]  # one objective: as before


def test_the_fronts_checkpoints_are_kept_beyond_keep_best():
    found = [*FRONT, record("dominated", [(2.5, 900.0)]), record("worse", [(2.6, 950.0)])]
    dropped = retention.beyond_keep(found, 2, "min", None)
    assert {r.trial_id for r in dropped} == {"near", "far", "dominated", "worse"}  # keeps best and nearer
    spared = retention.beyond_keep(found, 2, "min", None, pareto.front_ids(found, TWO))
    assert [r.trial_id for r in spared] == ["dominated", "worse"]


def test_the_report_draws_the_front_highlighted(tmp_path):
    spec = load_spec(TINY, [f"storage={tmp_path}", METRICS, "promote.top_k=1"])
    found = [*FRONT, record("dominated", [(2.5, 900.0)])]
    html = report.pareto_front(found, spec)
    assert 'data-plot="pareto"' in html
    assert sorted(re.findall(r'class="front-point" data-trial="(\w+)"', html)) == ["best", "far", "near", "nearer"]
    assert re.findall(r'class="trial-point" data-trial="(\w+)"', html) == ["dominated"]
    assert html.count('class="front-line"') == 1
    assert "No trial has completed" in report.pareto_front([record("s", [(1.0, 1.0)], status=C.STOPPED_ASHA)], spec)


# ---------------------------------------------------------------------------------------------
# What Optuna is told, and what --restart-search rebuilds.


def _report(tokens, loss, params, status=C.RUNNING, final=False):
    return {C.EVAL_LOSS: loss, C.TRAINABLE_PARAMS: params, C.TOKENS_SEEN: tokens, C.TRIAL_STATUS: status,
            C.FINAL: final}


@pytest.fixture
def multi(tmp_path):
    return load_spec(TINY, [f"storage={tmp_path}", "search.baseline=null", METRICS, "promote.top_k=1"])


def test_a_completed_trial_tells_its_best_reports_values_on_two_directions(multi, tmp_path):
    search = searcher.make(multi, tmp_path / "live.db", SWEEP_ID, queue_baseline=False).searcher
    search.suggest("t1")
    for tokens, loss, params in [(1000, 5.0, 100.0), (2000, 4.2, 300.0)]:
        search.on_trial_result("t1", _report(tokens, loss, params))
    search.on_trial_complete("t1", result=_report(3000, 4.4, 50.0, C.COMPLETED, final=True))
    found = optuna.load_study(study_name=multi.name, storage=study.url(tmp_path / "live.db"))
    assert [d.name for d in found.directions] == ["MINIMIZE", "MINIMIZE"]
    trial, = found.trials
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.values == [4.2, 300.0]
    assert trial.intermediate_values == {}  # Optuna keeps none for several objectives


def test_a_stopped_trial_is_pruned_and_a_failed_one_fails_with_no_values(multi, tmp_path):
    search = searcher.make(multi, tmp_path / "live.db", SWEEP_ID, queue_baseline=False).searcher
    for trial_id in ("t1", "t2"):
        search.suggest(trial_id)
        search.on_trial_result(trial_id, _report(1000, 5.0, 100.0))
    search.on_trial_complete("t1", result=_report(2000, 4.8, 100.0, C.STOPPED_ASHA))
    search.on_trial_complete("t2", error=True)
    found = optuna.load_study(study_name=multi.name, storage=study.url(tmp_path / "live.db")).trials
    assert [(t.state, t.values) for t in found] == [(optuna.trial.TrialState.PRUNED, None),
                                                    (optuna.trial.TrialState.FAIL, None)]


def test_restart_search_rebuilds_a_study_of_two_directions(multi, tmp_path):
    from tuner import space

    ended = [record("a", [(4.0, 100.0), (3.5, 120.0)]), record("s", [(5.0, 10.0)], status=C.STOPPED_ASHA)]
    for r in ended:
        r.params = {"learning_rate": 1e-3}
    path = tmp_path / "rebuilt.db"
    count = study.rebuild(path, multi.name, SWEEP_ID, C.EVAL_LOSS, "min", space.distributions(multi), ended,
                          pareto.objectives(multi))
    found = optuna.load_study(study_name=multi.name, storage=study.url(path))
    assert count == 2 and len(found.directions) == 2
    assert [(t.state, t.values) for t in found.trials] == [(optuna.trial.TrialState.COMPLETE, [3.5, 120.0]),
                                                           (optuna.trial.TrialState.PRUNED, None)]
    assert [t.user_attrs[study.RAY_TRIAL_ID] for t in found.best_trials] == ["a"]


# ---------------------------------------------------------------------------------------------
# The spec's rules.


def test_the_first_metric_is_the_searchs_metric_and_mode(tmp_path):
    spec = load_spec(TINY, ["search.metric=trainable_params", "search.mode=max", "promote.top_k=1",
                            "search.metrics=[{name: trainable_params, mode: max}, {name: eval_loss, mode: min}]"])
    assert (spec.search.metric, spec.search.mode) == (C.TRAINABLE_PARAMS, "max")
    assert pareto.objectives(spec) == [(C.TRAINABLE_PARAMS, "max"), (C.EVAL_LOSS, "min")]


def test_an_unset_metrics_and_pick_leave_the_fingerprint_as_it_was():
    spec = load_spec(TINY)
    assert "metrics" not in spec.decisive()["search"] and "pick" not in spec.decisive()["promote"]


@pytest.mark.parametrize("overrides, needles", [
    (["search.metrics=[{name: eval_loss, mode: min}]"], ["search.metrics: got 1 entry", "at least 2"]),
    (["search.metrics=[{name: eval_loss, mode: min}, {name: accuracy, mode: max}]"],
     ["search.metrics[1].name: got 'accuracy'", "expected a reported key"]),
    (["search.metrics=[{name: eval_loss, mode: min}, {name: eval_loss, mode: max}]"],
     ["search.metrics[1].name: 'eval_loss' is listed twice", "list each metric once"]),
    (["search.metrics=[{name: eval_loss, mode: lowest}, {name: trainable_params, mode: min}]"],
     ["search.metrics[0].mode: got 'lowest'", "expected one of 'min', 'max'"]),
    (["search.metrics=[{name: eval_loss}, {name: trainable_params, mode: min}]"],
     ["search.metrics[0].mode: missing; it is required"]),
    ([METRICS, "search.metric=train_loss"], ["search.metric: got 'train_loss' with search.metrics",
                                             "drop search.metric"]),
    ([METRICS, "search.sampler=cmaes"], ["search.sampler: got 'cmaes' with search.metrics", "use tpe or nsga2"]),
    (["promote.pick={then: trainable_params}", "promote.top_k=1"],
     ["promote.pick: set without search.metrics"]),
    ([METRICS, "promote.pick={then: peak_memory_mb, within: lots}"],
     ["promote.pick.then: got 'peak_memory_mb', expected one of search.metrics: eval_loss, trainable_params",
      "promote.pick.within: got 'lots'", "promote.top_k: got 2 with promote.pick"]),
    ([METRICS, "promote.top_k=1", "promote.pick={then: eval_loss}"],
     ["promote.pick.then: got 'eval_loss', the metric the pick starts from"]),
])
def test_the_rules_of_several_objectives_are_reported_together(overrides, needles):
    with pytest.raises(SpecError) as caught:
        load_spec(TINY, overrides)
    for needle in needles:
        assert needle in str(caught.value)
