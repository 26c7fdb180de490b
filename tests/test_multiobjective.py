"""Several objectives end to end: a TPE sweep and an NSGA-II one (the lora-pareto preset, shrunk),
each through `run_sweep` on local Ray, Optuna's SQLite study and the HF Trainer on the tiny GPT-2
with LoRA, W&B disabled. What a user checks: the study's two directions and values, the pareto
column of leaderboard.csv, the front in report.html, the trial promote.pick names, and
`tuner export --trial` of a front trial."""

from __future__ import annotations

import csv
import json
import re
import shutil

import optuna
import pytest
import yaml

import launch
from tests.conftest import LIGHT_PROMOTE, ROOT, TINY
from tuner import constants as C
from tuner import layout, run_sweep
from tuner.records import load_all as load_records
from tuner.spec import load_spec

PRESET = ROOT / "search_spaces" / "lora-pareto.yaml"
# The TPE sweep maximises the parameters (a mix of modes): on so short a training the smallest rank
# often has the lowest loss too, which would leave a front of one point and nothing to trade.
MODES = {"tpe": ["min", "max"], "nsga2": ["min", "min"]}  # the nsga2 sweep is the preset's: both minimised
METRICS = "search.metrics=[{name: eval_loss, mode: min}, {name: trainable_params, mode: max}]"
SMALL = ["data.max_records=300", "train.report_every_tokens=4096", "search.num_samples=4",
         "search.max_concurrent_trials=2", *LIGHT_PROMOTE, "tracking.wandb.mode=disabled"]
WITHIN = 0.5  # promote.pick's tolerance (a fraction of the best eval_loss): wide, so the pick is a trade


def tpe_sweep(tmp_path):
    return run_sweep(TINY, overrides=[
        *SMALL, "scheduler=none", "search.baseline=null", "search.n_startup_trials=2", "model.use_lora=true",
        "search.space.num_train_epochs={type: int, low: 1, high: 1}",
        "search.space.lora_r={type: int, low: 1, high: 32}", METRICS,
        f"promote.pick={{metric: eval_loss, within: {WITHIN * 100:g}%, then: trainable_params}}",
        f"storage={tmp_path / 'tpe'}"])


def nsga2_sweep(tmp_path):
    return run_sweep(PRESET, overrides=[
        *SMALL, "search.sampler=nsga2", "search.n_startup_trials=2",
        f"promote.pick={{within: {WITHIN * 100:g}%, then: trainable_params}}", f"storage={tmp_path / 'nsga2'}"])


@pytest.fixture(scope="module", params=["tpe", "nsga2"])
def sweep(request, ray_runtime, tmp_path_factory):
    run = tpe_sweep if request.param == "tpe" else nsga2_sweep
    result = run(tmp_path_factory.mktemp(request.param))
    result.modes = MODES[request.param]
    return result


def signed(values: list[float], modes: list[str]) -> list[float]:
    """Values to minimise: a maximised one negated."""
    return [v if mode == "min" else -v for v, mode in zip(values, modes)]


def study_of(result):
    spec = load_spec(result.sweep_dir / layout.SPEC_FILE)
    return optuna.load_study(study_name=spec.name, storage=f"sqlite:///{result.sweep_dir / layout.STUDY_DB}")


def leaderboard(result) -> dict[str, dict[str, str]]:
    with open(result.sweep_dir / layout.LEADERBOARD) as f:
        return {row["trial_id"]: row for row in csv.DictReader(f)}


@pytest.mark.integration
def test_the_study_has_two_directions_and_each_completed_trial_two_values(sweep):
    found = study_of(sweep)
    assert [d.name for d in found.directions] == [f"{mode.upper()}IMIZE" for mode in sweep.modes]
    complete = [t for t in found.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == len(found.trials) == 4  # no scheduler: every trial trains to its end
    by_id = {r.trial_id: r for r in load_records(sweep.sweep_dir)}
    for trial in complete:
        record = by_id[trial.user_attrs["ray_trial_id"]]
        best = next(h for h in record.history if h[C.EVAL_LOSS] == record.best_metric)
        assert trial.values == [best[C.EVAL_LOSS], best[C.TRAINABLE_PARAMS]]


@pytest.mark.integration
def test_every_report_carries_the_costs_and_trainable_params_follow_the_rank(sweep):
    found = load_records(sweep.sweep_dir)
    for record in found:
        for report in record.history:
            assert report[C.TRAIN_TOKENS_PER_S] == report[C.TOKENS_PER_S] > 0
            assert report[C.PEAK_MEMORY_MB] > 0  # CPU: the worker's peak resident memory
            assert report[C.TRAINABLE_PARAMS] == record.history[0][C.TRAINABLE_PARAMS]
    by_rank = sorted((r.params["lora_r"], r.history[0][C.TRAINABLE_PARAMS]) for r in found)
    for (rank_a, params_a), (rank_b, params_b) in zip(by_rank, by_rank[1:]):
        assert (params_a < params_b) == (rank_a < rank_b) and (params_a == params_b) == (rank_a == rank_b)


@pytest.mark.integration
def test_the_pareto_column_is_optunas_front(sweep):
    rows = leaderboard(sweep)
    marked = {trial_id for trial_id, row in rows.items() if row["pareto"] == "True"}
    assert marked == {t.user_attrs["ray_trial_id"] for t in study_of(sweep).best_trials} and marked
    for trial in study_of(sweep).trials:
        row = rows[trial.user_attrs["ray_trial_id"]]
        assert [float(row["objective_eval_loss"]), float(row["objective_trainable_params"])] == trial.values


@pytest.mark.integration
def test_the_report_draws_the_front_in_a_browser(sweep):
    from tests.test_report import js_errors, render, section

    dom, log = render(sweep.sweep_dir / layout.REPORT_FILE)
    assert 'data-rendered="true"' in dom and js_errors(dom, log) == []
    drawn = section(dom, "pareto")
    front = sorted(t for t, row in leaderboard(sweep).items() if row["pareto"] == "True")
    assert 'data-plot="pareto"' in drawn
    assert sorted(re.findall(r'class="front-point" data-trial="(\w+)"', drawn)) == front
    assert drawn.count('class="trial-point"') == 4 - len(front)
    listed = re.search(r'id="pareto-table">(.*?)</table>', drawn, re.S).group(1)
    assert sorted(re.findall(r"<tr><td>(\w+)</td>", listed)) == front
    assert ">pareto</th>" in section(dom, "leaderboard")


@pytest.mark.integration
def test_promotion_takes_the_cheapest_front_trial_near_the_best_loss(sweep):
    front = study_of(sweep).best_trials  # Optuna's own front
    best = min(t.values[0] for t in front)
    near = [t for t in front if t.values[0] <= best * (1 + WITHIN)]
    chosen = min(near, key=lambda t: signed(t.values[::-1], sweep.modes[::-1])).user_attrs["ray_trial_id"]
    final = json.loads(sweep.paths["final_eval"].read_text())
    assert final["trial_id"] == sweep.best.trial_id == chosen


@pytest.mark.integration
def test_export_trial_writes_a_front_trials_config_and_model(sweep, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    rows = leaderboard(sweep)
    front = sorted(t for t, row in rows.items() if row["pareto"] == "True")
    trial_id = next((t for t in front if t != sweep.best.trial_id), front[0])  # one the pick passed over, if any
    assert launch.main(["export", str(sweep.sweep_dir), "--trial", trial_id]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    folder = sweep.sweep_dir / layout.EXPORTS_DIR / trial_id
    assert printed == yaml.safe_load((folder / "config.yaml").read_text())
    record = next(r for r in load_records(sweep.sweep_dir) if r.trial_id == trial_id)
    assert printed["origin"]["trial_id"] == trial_id and printed["search"]["space"]["lora_r"] == record.params["lora_r"]
    load_spec(folder / "config.yaml")  # a valid spec that retrains that trial
    model = AutoModelForCausalLM.from_pretrained(folder / "model")
    assert not isinstance(model, PeftModel) and (folder / "adapter" / "adapter_config.json").is_file()


@pytest.mark.integration
def test_export_trial_refuses_an_unknown_trial_and_one_without_a_checkpoint(sweep, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(sweep.sweep_dir, copy, ignore=shutil.ignore_patterns("tune*", "data", "best", "exports"))
    assert launch.main(["export", str(copy), "--trial", "nosuchtrial"]) == 2
    err = capsys.readouterr().err
    assert "--trial nosuchtrial: no such trial" in err and "leaderboard.csv" in err
    record_path = next((copy / layout.TRIALS_DIR).glob("*.json"))
    record = json.loads(record_path.read_text())
    record["checkpoint_deleted"] = True
    record_path.write_text(json.dumps(record))
    assert launch.main(["export", str(copy), "--trial", record["trial_id"]]) == 2
    assert f"--trial {record['trial_id']}: its checkpoint was deleted" in capsys.readouterr().err
