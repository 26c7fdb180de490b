"""Metrics beyond the loss at every report: generation metrics on a fixed validation sample, a user's
metric_fn, and what becomes of a bad one."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from tests import metric_helpers
from tuner import constants as C
from tuner import data, model, trial_metrics
from tuner.packing import IGNORE
from tuner.spec import PromoteSpec, load_spec
from tuner.trial import TrialContext, run_trial
from tuner.trial_metrics import MetricFnError, answer_pair, named, text_pair

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "search_spaces" / "tiny.yaml"
HYPER = {"learning_rate": 1e-3, "per_device_train_batch_size": 8, "num_train_epochs": 1,
         "warmup_ratio": 0.0, "gradient_accumulation_steps": 1, "weight_decay": 0.0}


# ---------------------------------------------------------------------------------------------
# A metric_fn's result as report keys.


def test_a_number_is_reported_as_search_metric_or_as_eval_custom():
    assert named(0.5, "eval_accuracy", "f") == {"eval_accuracy": 0.5}
    assert named(3, "eval_loss", "f") == {C.CUSTOM_METRIC: 3.0}  # the loss is tuner's own key
    assert named(0.25, "eval_rougeL", "f") == {C.CUSTOM_METRIC: 0.25}


def test_a_dicts_keys_get_the_eval_prefix():
    import numpy as np

    assert named({"accuracy": np.float32(0.5), "eval_f1": 1}, "eval_accuracy", "f") == {
        "eval_accuracy": 0.5, "eval_f1": 1.0}


@pytest.mark.parametrize("value, metric, message", [
    ({"accuracy": 0.5}, "eval_f1", "returned ['eval_accuracy'], without search.metric 'eval_f1'"),
    ({"loss": 0.5}, "eval_accuracy", "returned 'loss', which tuner reports itself as eval_loss"),
    ({"rougeL": 0.5}, "eval_accuracy", "which tuner reports itself as eval_rougeL"),
    ({}, "eval_accuracy", "returned an empty dict"),
    ({1: 0.5}, "eval_accuracy", "returned the key 1; keys are names"),
    (math.nan, "eval_accuracy", "returned nan for its value; it must be a finite number"),
    ({"accuracy": math.inf}, "eval_accuracy", "returned inf for 'accuracy'"),
    ("0.5", "eval_accuracy", "returned str '0.5' for its value; return a number"),
    (True, "eval_accuracy", "returned bool True"),
    (None, "eval_accuracy", "returned NoneType None"),
])
def test_a_result_that_is_no_finite_number_is_refused(value, metric, message):
    with pytest.raises(MetricFnError, match=re.escape(message)) as refused:
        named(value, metric, "pkg:f")
    assert str(refused.value).startswith("metric_fn pkg:f returned ")


def test_a_raising_metric_fn_names_its_error_and_leaves_the_model_training():
    class Model:
        training = True

        def train(self, mode=True):
            self.training = mode

    def fn(model, tokenizer, sample):
        model.train(False)
        raise KeyError("label")

    sample = trial_metrics.MetricSample([], [], [], [], PromoteSpec())
    held = Model()
    with pytest.raises(MetricFnError, match=r"metric_fn pkg:f raised KeyError: 'label'"):
        trial_metrics.score(held, None, sample, False, False, fn, "eval_accuracy", "pkg:f")
    assert held.training


def test_an_unimportable_metric_fn_fails_at_trial_time():
    spec = load_spec(TINY, ["search.metric=eval_accuracy", "search.metric_fn=gone.module:f"], saved=True)
    with pytest.raises(MetricFnError, match="search.metric_fn: got 'gone.module:f', but module 'gone.module' "
                                            "cannot be imported"):
        trial_metrics.TrialMetrics(spec, None, None)


def test_a_metric_fn_beside_a_trial_fn_is_refused():
    from tuner.errors import UserError
    from tuner.pipeline import check_metric_fn

    spec = load_spec(TINY, ["search.metric=eval_token_accuracy",
                            "search.metric_fn=tests.metric_helpers:token_accuracy"])
    with pytest.raises(UserError, match="metric_fn: given with trial_fn, whose loop the sweep does not evaluate"):
        check_metric_fn(spec, lambda config, report: None, None)
    with pytest.raises(UserError, match="metric_fn: got 3, expected a function"):
        check_metric_fn(load_spec(TINY), None, 3)
    check_metric_fn(spec, None, None)


# ---------------------------------------------------------------------------------------------
# The validation sample.


def test_text_pair_takes_k_then_m_tokens_running_into_the_next_block():
    blocks = [{"input_ids": list(range(i * 4, i * 4 + 4))} for i in range(3)]
    settings = PromoteSpec(prompt_tokens=3, reference_tokens=3)
    assert text_pair(blocks, 0, settings) == ([0, 1, 2], [3, 4, 5])
    assert text_pair(blocks, 1, settings) == ([4, 5, 6], [7, 8, 9])
    assert text_pair(blocks, 2, settings) is None  # the split ends first


def test_answer_pair_is_the_first_whole_prompt_and_completion_of_a_block():
    eos = 0
    m = IGNORE
    # a cut completion's tail, EOS | prompt 11 12 | completion 21 22 EOS | prompt 13 | completion 23 ...
    ids = [30, 0, 11, 12, 21, 22, 0, 13, 23, 24]
    labels = [30, 0, m, m, 21, 22, 0, m, 23, 24]
    settings = PromoteSpec(reference_tokens=8, max_new_tokens=4)
    assert answer_pair(ids, labels, eos, settings, block_size=10) == ([11, 12], [21, 22])
    # The prompt at the block's start may be cut: the next whole one is taken.
    assert answer_pair([11, 12, 21, 0, 13, 23, 0], [m, m, 21, 0, m, 23, 0], eos, settings, 10) == ([13], [23])
    # A completion running past the block is taken only with m tokens in it; the prompt keeps room to answer.
    assert answer_pair([5, 11, 12, 21, 22], [5, m, m, 21, 22], eos, settings, 10) is None
    assert answer_pair([5, 11, 12, 21, 22], [5, m, m, 21, 22], eos, PromoteSpec(reference_tokens=1, max_new_tokens=9),
                       10) == ([12], [21])


def test_generation_scores_are_the_final_evaluations_under_report_keys():
    written, references = ["the cat sat on the mat", "Paris"], ["the cat sat on the mat", " paris "]
    scores = trial_metrics.generation_scores(written, references, answers=True)
    assert scores[C.EVAL_EXACT_MATCH] == 1.0 and scores["eval_rougeL"] == pytest.approx(1.0)
    assert set(scores) == set(C.GENERATION_METRICS)
    assert C.EVAL_EXACT_MATCH not in trial_metrics.generation_scores(written, references, answers=False)


# ---------------------------------------------------------------------------------------------
# In a trial (the training core, no Ray).


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    spec = load_spec(TINY, ["data.max_records=300", "data.block_size=32", "train.report_every_tokens=2048",
                            "search.metric_sample.num_prompts=3", "search.metric_sample.max_new_tokens=4",
                            f"storage={tmp_path_factory.mktemp('metrics')}"])
    return spec, data.prepare(spec, spec.sweep_dir)


def _run(spec, prepared, metric_fn=None, hyper=HYPER):
    reports = []
    ctx = TrialContext(spec, prepared, model.resolve(spec.model.name_or_path), metric_fn=metric_fn)
    summary = run_trial(hyper, ctx, lambda metrics, checkpoint: reports.append((metrics, checkpoint)))
    return reports, summary


def _raw(spec):
    raw = spec.to_dict()
    raw.pop("origin")
    return raw


@pytest.mark.integration
def test_reports_carry_the_generation_metrics_of_a_fixed_sample(small):
    spec, prepared = small
    spec = load_spec(_raw(spec), ["search.metric=eval_rougeL", "search.mode=max"])
    first, _ = _run(spec, prepared)
    again, _ = _run(spec, prepared)
    for metrics, _ in first:
        assert set(C.GENERATION_METRICS) - {C.EVAL_EXACT_MATCH} <= set(metrics)
        assert 0.0 <= metrics["eval_rougeL"] <= 1.0
    # The same prompts, greedy decoding and training: the same figures, report for report.
    assert [m["eval_rougeL"] for m, _ in first] == [m["eval_rougeL"] for m, _ in again]


@pytest.mark.integration
def test_the_default_sweep_computes_no_generation_metric(small):
    spec, prepared = small
    reports, _ = _run(spec, prepared, hyper={**HYPER, "num_train_epochs": 0.3})
    assert not any(key.startswith("eval_") and key != C.EVAL_LOSS for m, _ in reports for key in m)


@pytest.mark.integration
def test_a_metric_fns_figures_are_reported_and_rank_the_trials_best(small):
    spec, prepared = small
    spec = load_spec(_raw(spec), ["search.metric=eval_token_accuracy", "search.mode=max"],
                     metric_fn=metric_helpers.token_accuracy)
    reports, summary = _run(spec, prepared, metric_helpers.token_accuracy)
    values = [m["eval_token_accuracy"] for m, _ in reports]
    assert all(0.0 <= v <= 1.0 for v in values) and all(m["eval_reference_tokens"] == 3 * 16 for m, _ in reports)
    assert summary["status"] == C.COMPLETED


@pytest.mark.integration
def test_patience_counts_the_search_metric_in_its_mode(small):
    """A metric_fn whose value never rises: with mode max and patience 2, the third report ends the
    trial, though the loss improves at every report."""
    spec, prepared = small
    spec = load_spec(_raw(spec), ["search.metric=eval_flat", "search.mode=max", "train.patience=2"],
                     metric_fn=lambda model, tokenizer, sample: {"flat": 1.0})
    reports, summary = _run(spec, prepared, lambda model, tokenizer, sample: {"flat": 1.0})
    assert [m[C.TRIAL_STATUS] for m, _ in reports] == [C.RUNNING, C.RUNNING, C.STOPPED_PATIENCE]
    assert reports[1][0][C.EVAL_LOSS] < reports[0][0][C.EVAL_LOSS]
    assert summary["status"] == C.STOPPED_PATIENCE


@pytest.mark.integration
def test_a_bad_metric_fn_fails_its_trial_with_the_message_once(small):
    spec, prepared = small
    spec = load_spec(_raw(spec), ["search.metric=eval_token_accuracy", "search.mode=max",
                                  "search.metric_fn=tests.metric_helpers:returns_text"])
    reports, summary = _run(spec, prepared)
    [(last, checkpoint)] = reports
    assert last[C.TRIAL_STATUS] == C.FAILED and last[C.FINAL] and checkpoint is None
    assert math.isnan(last[C.EVAL_LOSS])
    assert last[C.TRIAL_ERROR] == summary["error"] == (
        "metric_fn tests.metric_helpers:returns_text returned str '0.5' for its value; return a number "
        "(float(...) of a tensor) or a dict of numbers")
    assert summary["status"] == C.FAILED


@pytest.fixture(scope="module")
def answers(tmp_path_factory):
    """Instruction data: questions and their answers."""
    import json

    folder = tmp_path_factory.mktemp("qa")
    rows = [{"question": f"What is {i} plus {i}?", "answer": f" It is {2 * i}."} for i in range(300)]
    (folder / "qa.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    spec = load_spec(TINY, [f"data.path={folder / 'qa.jsonl'}", "data.prompt_column=question",
                            "data.completion_column=answer", "data.block_size=64", "train.report_every_tokens=4096",
                            "search.metric=eval_exact_match", "search.mode=max", "search.metric_sample.num_prompts=5",
                            "search.metric_sample.max_new_tokens=8", f"storage={folder / 'sweep'}"])
    return spec, data.prepare(spec, spec.sweep_dir)


@pytest.mark.integration
def test_instruction_data_samples_whole_questions_and_their_answers(answers):
    spec, prepared = answers
    tokenizer = model.load_tokenizer(prepared.tokenizer_path)
    sample = trial_metrics.draw(prepared, tokenizer, trial_metrics.sample_settings(spec), spec.train.seed)
    assert len(sample.prompts) == 5
    for prompt, reference in zip(sample.prompts, sample.references):
        number = int(re.fullmatch(r"What is (\d+) plus \1\?", prompt).group(1))
        assert reference == f" It is {2 * number}."
    again = trial_metrics.draw(prepared, tokenizer, trial_metrics.sample_settings(spec), spec.train.seed)
    assert again.prompts == sample.prompts  # seeded: the same for every trial


@pytest.mark.integration
def test_reports_carry_exact_match_on_instruction_data(answers):
    spec, prepared = answers
    reports, summary = _run(spec, prepared, hyper={**HYPER, "learning_rate": 3e-3})
    assert reports and all(m[C.EVAL_EXACT_MATCH] in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0) for m, _ in reports)
    assert summary["status"] == C.COMPLETED
