"""The whole pipeline for real: local Ray, Optuna on SQLite, HF Trainer on a tiny GPT-2, no mocks."""

from __future__ import annotations

import csv
import json
import math
import shutil
import tempfile

import optuna
import pytest
import torch
import yaml

from tests.conftest import LIGHT_PROMOTE
from tests.conftest import TINY as TINY_PATH
from tuner import constants as C
from tuner import layout, load_spec, run_sweep
from tuner.data import load_prepared, read_prepared
from tuner.records import load_all as load_records

pytestmark = pytest.mark.integration


def _study(sweep_dir, name):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{sweep_dir / 'optuna.db'}")


def test_runs_the_number_of_trials_asked(tiny_sweep):
    records = load_records(tiny_sweep.sweep_dir)
    assert len(records) == 6
    assert len(tiny_sweep.leaderboard) == 6
    assert len(_study(tiny_sweep.sweep_dir, "tiny-test").trials) == 6


def test_asha_stops_some_trials_and_optuna_records_them_pruned(tiny_sweep):
    study = {t.user_attrs["ray_trial_id"]: t for t in _study(tiny_sweep.sweep_dir, "tiny-test").trials}
    records = load_records(tiny_sweep.sweep_dir)
    stopped = [r for r in records if r.status == C.STOPPED_ASHA]
    assert stopped, [r.status for r in records]
    for record in stopped:
        trial = study[record.trial_id]
        assert trial.state == optuna.trial.TrialState.PRUNED
        assert record.rung is not None and record.tokens_seen >= record.rung
        # intermediate values are keyed by tokens seen, one per report
        assert len(trial.intermediate_values) == record.reports
    for record in records:
        if record.status == C.COMPLETED:
            trial = study[record.trial_id]
            assert trial.state == optuna.trial.TrialState.COMPLETE
            assert trial.value == pytest.approx(record.best_metric)


def test_a_stopped_trials_log_ends_with_one_line_saying_so_never_a_traceback(tiny_sweep):
    """Tune stops a trial by raising SystemExit in it: that is no crash, and its log says how it ended."""
    endings = {C.COMPLETED: "completed", C.STOPPED_ASHA: "stopped early by ASHA at rung"}
    for record in load_records(tiny_sweep.sweep_dir):
        log = (tiny_sweep.sweep_dir / record.log_file).read_text()
        assert "Traceback" not in log and "SystemExit" not in log, record.trial_id
        last = log.rstrip().splitlines()[-1]
        assert last.startswith(f"tuner: trial {record.trial_id} {endings[record.status]}"), last
        assert f"after {record.reports} reports, {record.tokens_seen} tokens" in last


def test_sweep_log_keeps_the_runs_lines(tiny_sweep):
    """From Python, sweep.log gets what the caller's logging levels pass (debug from the command
    line: tests/test_live.py)."""
    text = (tiny_sweep.sweep_dir / "sweep.log").read_text()
    assert " INFO tuner: plan:" in text and " INFO tuner: report: " in text


def test_leaderboard_rows(tiny_sweep):
    with open(tiny_sweep.paths["leaderboard"]) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6
    searched = {"learning_rate", "per_device_train_batch_size", "num_train_epochs", "warmup_ratio",
                "gradient_accumulation_steps", "weight_decay"}
    assert {"trial_id", "status", "best_eval_loss", "reports", "tokens_seen", "train_seconds"} | searched \
        <= set(rows[0])
    assert all(row["status"] in C.STATUSES for row in rows)
    losses = [float(row["best_eval_loss"]) for row in rows if row["status"] in C.PROMOTABLE]
    assert losses == sorted(losses)  # best first
    assert rows[0]["trial_id"] == tiny_sweep.best.trial_id
    for row in rows:
        assert int(row["reports"]) >= 1 and int(row["tokens_seen"]) >= 8192


def test_best_config_validates_and_fixes_the_winning_hyperparameters(tiny_sweep):
    path = tiny_sweep.paths["config"]
    assert path.read_text().startswith("# tuner sweep ")
    spec = load_spec(path)
    assert spec.name == "tiny-test-best"
    assert spec.search.num_samples == 1 and spec.scheduler.type == "none"
    assert spec.search.space == {k: v for k, v in tiny_sweep.best.params.items()}
    assert spec.train.stop_after_steps == tiny_sweep.best.best_step
    assert spec.origin.trial_id == tiny_sweep.best.trial_id
    assert spec.origin.value == pytest.approx(tiny_sweep.best.best_metric)
    args = json.loads((tiny_sweep.paths["best"] / "training_args.json").read_text())
    assert args["learning_rate"] == pytest.approx(tiny_sweep.best.params["learning_rate"])


def test_the_exported_training_args_load_into_training_arguments(tiny_sweep):
    """Users take training_args.json to their own Trainer: it loads with no key removed."""
    from transformers import TrainingArguments

    with open(tiny_sweep.paths["best"] / "training_args.json") as f:
        args = TrainingArguments(**json.load(f))
    assert args.learning_rate == pytest.approx(tiny_sweep.best.params["learning_rate"])
    assert args.per_device_train_batch_size == tiny_sweep.best.params["per_device_train_batch_size"]


def test_final_eval_is_the_token_weighted_test_loss(tiny_sweep):
    final = json.loads(tiny_sweep.paths["final_eval"].read_text())
    assert {"trial_id", "checkpoint", "eval_loss", "perplexity", "num_test_tokens", "tuned", "base"} <= set(final)
    prepared = read_prepared(next((tiny_sweep.sweep_dir / "data").glob("*/prepared.json")).parent)
    test_blocks = load_prepared(prepared)["test"]["input_ids"]
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_sweep.paths["model"]).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for block in test_blocks:  # one block at a time, the short last one included
            ids = torch.tensor([block])
            logits = model(input_ids=ids).logits[0, :-1]
            total += torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
            count += len(block) - 1
    assert final["num_test_tokens"] == count == prepared.tokens["test"] - len(test_blocks)
    assert final["eval_loss"] == pytest.approx(total / count, rel=1e-5)
    assert final["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-5)
    assert final["tuned"]["perplexity"] == final["perplexity"]
    assert final["perplexity"] < final["base"]["perplexity"]  # fine-tuning helped on held-out text


def test_best_model_loads_and_generates(tiny_sweep):
    """best/model is what users take away: it loads with the Auto classes, and transformers'
    text-generation pipeline finds everything it needs there (weights, tokenizer, generation config)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    model = AutoModelForCausalLM.from_pretrained(tiny_sweep.paths["model"])
    tokenizer = AutoTokenizer.from_pretrained(tiny_sweep.paths["model"])
    ids = tokenizer("The for statement", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] == ids["input_ids"].shape[1] + 5
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json"} <= {
        p.name for p in tiny_sweep.paths["model"].iterdir()}
    generate = pipeline("text-generation", model=str(tiny_sweep.paths["model"]))
    [written] = generate("The for statement", max_new_tokens=5, do_sample=False)
    assert written["generated_text"].startswith("The for statement")
    assert len(written["generated_text"]) > len("The for statement")
    samples = [json.loads(line) for line in tiny_sweep.paths["samples"].read_text().splitlines()]
    assert len(samples) == 4 and {"prompt", "reference", "tuned", "base", "baseline"} <= set(samples[0])


def test_trial_logs_and_records_are_in_the_sweep_dir(tiny_sweep):
    for record in load_records(tiny_sweep.sweep_dir):
        assert record.status in C.STATUSES
        log = tiny_sweep.sweep_dir / "logs" / f"{record.trial_id}.log"
        assert log.exists()


def test_best_config_retrains_bit_for_bit(tiny_sweep, tmp_path):
    """Re-running the exported config gives the same model, hence the same test loss, exactly."""
    again = run_sweep(tiny_sweep.paths["config"], overrides=[f"storage={tmp_path / 'again'}"])
    assert len(again.leaderboard) == 1
    first = json.loads(tiny_sweep.paths["final_eval"].read_text())
    assert again.final_eval["eval_loss"] == first["eval_loss"]
    assert again.best.best_step == tiny_sweep.best.best_step


def _own_loop(config, report):
    """A user's own training loop: plain PyTorch on a few fixed blocks, checkpoints by save_pretrained."""
    from transformers import AutoModelForCausalLM

    from tuner import builtin

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(builtin.tiny_gpt2_path())
    optimizer = torch.optim.AdamW(model.parameters(), lr=config["learning_rate"])
    blocks = torch.randint(0, 200, (8, 16), generator=torch.Generator().manual_seed(0))
    held_out = blocks[:2]
    for step in range(1, 4):
        loss = model(input_ids=blocks[2:], labels=blocks[2:]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        with torch.no_grad():
            eval_loss = model(input_ids=held_out, labels=held_out).loss.item()
        path = tempfile.mkdtemp()
        model.save_pretrained(path)
        report({"eval_loss": eval_loss, "tokens_seen": step * 6 * 16, "step": step}, path)


def test_a_users_own_training_loop_gets_the_same_search(ray_runtime, tmp_path):
    result = run_sweep(TINY_PATH, trial_fn=_own_loop, overrides=[
        "data.max_records=300", "scheduler=none", "search.num_samples=2", "search.baseline=null",
        *LIGHT_PROMOTE, f"storage={tmp_path / 'own'}"])
    assert [row["status"] for row in result.leaderboard] == [C.COMPLETED, C.COMPLETED]
    assert all(row["reports"] == 3 and row["tokens_seen"] == 288 for row in result.leaderboard)
    assert result.best.best_step in (1, 2, 3)
    assert result.paths["model"].joinpath("model.safetensors").exists()


def _checkpoint_at_first_report_only(config, report):
    """A user's loop that saves once, at its first report, then reports better numbers without."""
    from tuner import model

    for step, loss in ((1, 5.0), (2, 4.5), (3, 4.0)):
        if step == 1:
            with tempfile.TemporaryDirectory() as tmp:
                shutil.copytree(model.resolve("builtin:tiny-gpt2"), tmp, dirs_exist_ok=True)
                report({"eval_loss": loss + config["learning_rate"], "tokens_seen": step * 96, "step": step}, tmp)
        else:
            report({"eval_loss": loss + config["learning_rate"], "tokens_seen": step * 96, "step": step})


def test_reports_without_checkpoints_still_rank_the_trial_and_promotion_takes_its_checkpoint(ray_runtime,
                                                                                            tmp_path):
    """The best metric is tracked at every report; only promotion needs a checkpoint, and it says
    which step that checkpoint holds."""
    result = run_sweep(TINY_PATH, trial_fn=_checkpoint_at_first_report_only, overrides=[
        "data.max_records=300", "scheduler=none", "search.num_samples=2", "search.baseline=null",
        *LIGHT_PROMOTE, f"storage={tmp_path / 'sparse'}"])
    for row in result.leaderboard:
        assert row["best_step"] == 3 and row["best_eval_loss"] == pytest.approx(4.0 + row["learning_rate"])
    best = result.best
    assert best.best_checkpoint_step == 1
    assert best.best_checkpoint_metric == pytest.approx(5.0 + best.params["learning_rate"])
    assert load_spec(result.paths["config"]).train.stop_after_steps == 1  # the exported checkpoint's step
    assert json.loads(result.paths["final_eval"].read_text())["step"] == 1


def _never_checkpoints(config, report):
    """A user's loop (a simulation, say) that reports and never saves a model."""
    for step, loss in ((1, 5.0), (2, 4.5), (3, 4.0)):
        report({"eval_loss": loss + config["learning_rate"], "tokens_seen": step * 96, "step": step})


def test_a_sweep_whose_reports_never_carry_a_checkpoint_ranks_its_trials_and_exports_nothing(ray_runtime,
                                                                                           tmp_path):
    result = run_sweep(TINY_PATH, trial_fn=_never_checkpoints, overrides=[
        "data.max_records=300", "scheduler=none", "search.num_samples=3", "search.baseline=null",
        f"storage={tmp_path / 'bare'}"])
    losses = [row["best_eval_loss"] for row in result.leaderboard]
    assert losses == sorted(losses) and len(losses) == 3
    assert losses == [pytest.approx(4.0 + row["learning_rate"]) for row in result.leaderboard]
    assert result.best.trial_id == result.leaderboard[0]["trial_id"] and result.best.best_step == 3
    assert result.final_eval == {} and "model" not in result.paths
    assert not (tmp_path / "bare" / "best").exists() and result.paths["leaderboard"].is_file()
    progress = [line for line in (tmp_path / "bare" / layout.SWEEP_LOG).read_text().splitlines() if "finished" in line]
    assert progress and "no best yet" not in progress[-1] and f"({result.best.trial_id})" in progress[-1]


def _nan_above(learning_rate):
    def loop(config, report):
        """The same loop, except that its loss is NaN from the first step above `learning_rate`."""
        if config["learning_rate"] > learning_rate:
            for step in range(1, 4):
                report({"eval_loss": math.nan, "tokens_seen": step * 96, "step": step})
        _own_loop(config, report)
    return loop


def test_a_nan_configuration_is_diverged_fails_in_optuna_and_is_never_best(ray_runtime, tmp_path):
    result = run_sweep(TINY_PATH, trial_fn=_nan_above(0.00999), overrides=[
        "data.max_records=300", "scheduler=none", "search.num_samples=3", "search.baseline.learning_rate=0.01",
        "search.space.learning_rate.high=0.01", *LIGHT_PROMOTE, f"storage={tmp_path / 'nan'}"])
    nan = [row for row in result.leaderboard if row["learning_rate"] == 0.01]
    assert len(nan) == 1 and nan[0]["status"] == C.DIVERGED and nan[0]["optuna_state"] == "FAIL"
    assert nan[0]["reports"] == 0 and nan[0]["tokens_seen"] == 96  # stopped at its first report
    assert nan[0] is result.leaderboard[-1] and result.best.trial_id != nan[0]["trial_id"]
    assert nan[0]["best_metric"] is None and math.isfinite(result.final_eval["perplexity"])


def test_a_sweep_in_which_no_trial_completes_fails_and_exports_nothing(ray_runtime, tmp_path):
    from tuner.pipeline import SweepFailed

    with pytest.raises(SweepFailed, match="no trial finished with a finite eval_loss") as failed:
        run_sweep(TINY_PATH, trial_fn=_nan_above(5e-3), overrides=[
            "data.max_records=300", "scheduler=none", "search.num_samples=2", "search.baseline=null",
            "search.space.learning_rate={type: float, low: 6.0e-3, high: 1.0e-2}", f"storage={tmp_path / 'none'}"])
    assert str(failed.value).count(f": {C.DIVERGED}") == 2  # why each trial ended
    assert not (tmp_path / "none" / "best").exists()


def test_a_time_budget_ends_the_search_and_promotes_the_best_so_far(ray_runtime, tmp_path):
    result = run_sweep(TINY_PATH, overrides=[
        "data.max_records=900", "train.report_every_tokens=4096", "search.num_samples=50",
        "search.time_budget=30s", "scheduler=none", *LIGHT_PROMOTE, f"storage={tmp_path / 'tb'}"])
    statuses = [row["status"] for row in result.leaderboard]
    assert len(statuses) < 50 and C.STOPPED_BUDGET in statuses
    assert all(state in ("COMPLETE", "PRUNED", "FAIL") for state in (row["optuna_state"] for row in result.leaderboard))
    assert result.paths["config"].exists()


def test_final_eval_says_whether_tuning_beat_the_baseline(tiny_sweep):
    final = json.loads(tiny_sweep.paths["final_eval"].read_text())
    baseline = final["baseline"]
    record = next(r for r in load_records(tiny_sweep.sweep_dir) if r.trial_id == baseline["trial_id"])
    assert record.params["learning_rate"] == pytest.approx(5e-5)  # the enqueued HF defaults
    assert baseline["tuning_beat_baseline"] == (tiny_sweep.best.best_metric < record.best_metric)
    # ASHA never stops the baseline early: it trains to its end, and the comparison is like for like.
    assert record.status == baseline["status"] == C.COMPLETED and record.rung is None
    assert baseline["step"] == record.history[-1]["step"] and baseline["tokens_seen"] == record.tokens_seen


def test_promotion_falls_back_to_the_next_best_readable_checkpoint(tiny_sweep, tmp_path, caplog):
    """A copy of the finished sweep whose best checkpoint is corrupt, then gone."""
    import logging

    from tuner import data, model, tracking
    from tuner.promotion import promote_and_export
    from tuner.trial import TrialContext

    copy = tmp_path / "copy"
    shutil.copytree(tiny_sweep.sweep_dir, copy, ignore=shutil.ignore_patterns("best", "wandb"))
    records = {r.trial_id: r for r in load_records(copy)}  # relative paths: they point into the copy
    kept = [records[row["trial_id"]] for row in tiny_sweep.leaderboard if not row["checkpoint_deleted"]
            and row["status"] in C.PROMOTABLE]
    first, second = kept[:2]
    spec = load_spec(copy / "spec.yaml", [f"storage={copy}", "tracking.wandb.mode=disabled"])
    ctx = TrialContext(spec, data.prepare(spec, copy), model.resolve(spec.model.name_or_path))

    (copy / first.best_checkpoint / "model.safetensors").write_bytes(b"not a safetensors file")
    with caplog.at_level(logging.WARNING, logger="tuner"):
        corrupt = promote_and_export(spec, ctx, tiny_sweep.leaderboard, tracking.Tracker(spec))
        shutil.rmtree(copy / first.best_checkpoint)
        missing = promote_and_export(spec, ctx, tiny_sweep.leaderboard, tracking.Tracker(spec))
    assert corrupt.best.trial_id == missing.best.trial_id == second.trial_id
    assert yaml.safe_load((copy / "best" / "config.yaml").read_text())["origin"]["trial_id"] == second.trial_id
    warned = [r.getMessage() for r in caplog.records if "missing or unreadable" in r.getMessage()]
    assert len(warned) == 2 and all(first.trial_id in w for w in warned) and "no such directory" in warned[1]
    assert (tiny_sweep.sweep_dir / first.best_checkpoint / "model.safetensors").read_bytes()[:1] != b"n"


def test_only_the_best_checkpoints_remain(tiny_sweep):
    """Each ended trial keeps its best checkpoint only; sweep-wide, the `keep_best` (2) best and the
    baseline trial's, which the final evaluation scores beside the winner."""
    records = load_records(tiny_sweep.sweep_dir)
    found = (tiny_sweep.sweep_dir / "tune").glob("*/checkpoint_*")
    remaining = sorted(str(p.relative_to(tiny_sweep.sweep_dir)) for p in found)
    kept = sorted(r.best_checkpoint for r in records if r.best_checkpoint and not r.checkpoint_deleted)
    best_two = [row["trial_id"] for row in tiny_sweep.leaderboard if row["status"] in C.PROMOTABLE][:2]
    baseline = json.loads(tiny_sweep.paths["final_eval"].read_text())["baseline"]["trial_id"]
    assert remaining == kept and len(kept) == len({*best_two, baseline})
    assert {r.trial_id for r in records if r.best_checkpoint in kept} == {*best_two, baseline}
    assert tiny_sweep.best.best_checkpoint in kept


def test_every_record_says_where_its_trial_spent_its_time(tiny_sweep):
    records = load_records(tiny_sweep.sweep_dir)
    for record in records:
        timing = record.timing
        assert set(timing) == set(C.TIME_KEYS)
        assert timing[C.TIME_TRAIN] > 0 and timing[C.TIME_EVAL] > 0 and timing[C.TIME_MODEL] > 0
        arrived = [point["reported_at"] for point in record.history]
        assert arrived == sorted(arrived) and len(arrived) == record.reports
    # The workers Tune reused paid start-up once: only their first trial counts it.
    started = [r for r in records if r.timing[C.TIME_START] > 0]
    assert 1 <= len(started) < len(records)


def test_a_conditional_lora_space_through_ray_tune_and_optuna(ray_runtime, tmp_path):
    """LoRA's rank is sampled only for trials with LoRA on (a define-by-run space through Ray Tune's
    OptunaSearch); the LoRA baseline trial's adapter checkpoint is evaluated beside the winner."""
    baseline = ("{learning_rate: 5.0e-5, per_device_train_batch_size: 8, num_train_epochs: 1, warmup_ratio: 0.0, "
                "gradient_accumulation_steps: 1, weight_decay: 0.0, use_lora: true, lora_r: 4}")
    result = run_sweep(TINY_PATH, overrides=[
        "data.max_records=300", "train.report_every_tokens=4096", "scheduler=none", "search.num_samples=4",
        "search.space.num_train_epochs={type: int, low: 1, high: 1}",
        "search.sampler=random", "search.space.use_lora={type: categorical, choices: [true, false]}",
        "search.space.lora_r={type: int, low: 2, high: 8, when: {use_lora: true}}", f"search.baseline={baseline}",
        *LIGHT_PROMOTE, f"storage={tmp_path / 'lora'}"])
    records = load_records(result.sweep_dir)
    assert {r.params["use_lora"] for r in records} == {True, False}
    for record in records:
        assert ("lora_r" in record.params) == record.params["use_lora"]
    for trial in _study(result.sweep_dir, "tiny").trials:
        assert ("lora_r" in trial.params) == trial.params["use_lora"]
    final = json.loads(result.paths["final_eval"].read_text())
    assert final["baseline"]["perplexity"] > 0  # its checkpoint holds adapters, put back on the base model
    assert (result.paths["best"] / "adapter").exists() == result.best.params["use_lora"]


def test_the_dashboard_command_printed_at_the_end_opens_the_sweeps_study(tiny_sweep):
    from tuner.pipeline import dashboard_command

    command = dashboard_command(tiny_sweep.sweep_dir)
    assert command == f"optuna-dashboard sqlite:///{(tiny_sweep.sweep_dir / 'optuna.db').resolve()}"
    storage = command.split(" ", 1)[1]
    summaries = optuna.get_all_study_summaries(storage=storage)  # the URL opens the sweep's study
    assert [s.n_trials for s in summaries] == [len(load_records(tiny_sweep.sweep_dir))]
