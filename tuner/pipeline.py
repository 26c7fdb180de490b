"""The whole sweep, one stage per call: spec → prepared data → search → results → promotion → export.

`run_sweep` is both what `launch.py sweep` runs and the Python API for notebooks and scripts.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from tuner import data, export, model, promote, results, secret, space, state, storage, sweep, tracking
from tuner import constants as C
from tuner.errors import UserError, first_line
from tuner.spec import Spec, load_spec, to_yaml
from tuner.context import TrialContext

log = logging.getLogger("tuner")
SPEC_FILE = "spec.yaml"


class SweepFailed(Exception):
    """No trial finished with a usable result: nothing to promote or export."""


@dataclass
class SweepResult:
    sweep_dir: Path
    leaderboard: list[dict[str, Any]]
    best: dict[str, Any]  # the promoted trial's record
    final_eval: dict[str, Any]
    paths: dict[str, Path] = field(default_factory=dict)


def resolve_spec(spec_or_path: Spec | str | Path | dict, overrides: list[str] | None = None,
                 name: str | None = None, num_samples: int | None = None) -> Spec:
    """Load and validate a spec, with `--set`, `--name` and `--num-samples` applied on top."""
    extra = list(overrides or [])
    if name is not None:
        extra.append(f"name={name}")
    if num_samples is not None:
        extra.append(f"search.num_samples={num_samples}")
    if isinstance(spec_or_path, Spec):
        spec_or_path = spec_or_path.to_dict()
        if spec_or_path.get("origin") is None:
            spec_or_path.pop("origin")
    return load_spec(spec_or_path, extra)


def check_model(spec: Spec) -> None:
    """Checks that need the model's config: the block fits its positions, the frozen blocks exist,
    LoRA has layers to wrap."""
    config = model.load_config(spec.model.name_or_path, spec.model.revision, spec.model.token_env,
                               spec.model.trust_remote_code)
    problems = []
    limit = model.max_positions(config)
    if limit is not None and spec.data.block_size > limit:
        problems.append(f"data.block_size: got {spec.data.block_size}, but {spec.model.name_or_path} "
                        f"has {limit} positions; set data.block_size to at most {limit}")
    blocks = getattr(config, "num_hidden_layers", None)
    frozen = int(space.largest(spec, "freeze_layers"))
    if blocks is not None and frozen > blocks:
        where = "search.space.freeze_layers" if "freeze_layers" in spec.search.space else "model.freeze_layers"
        problems.append(f"{where}: up to {frozen} blocks frozen, but {spec.model.name_or_path} has "
                        f"{blocks}; freeze at most {blocks}")
    if space.may_take(spec, "use_lora", True):
        problem = model.lora_problem(config, spec.model.lora_target_modules)
        if problem:
            problems.append(problem)
    if problems:
        raise UserError("the model does not fit the spec:\n" + "\n".join(f"  - {p}" for p in problems))


def check_plan(spec: Spec, plan: sweep.Plan) -> None:
    """A `grace_period` past the `max_t` the data gives (max_t unset: the largest epochs over the
    train split) would let ASHA stop nothing; `validate` catches it where max_t is set."""
    grace = spec.scheduler.grace_period
    if spec.scheduler.type == "asha" and grace is not None and plan.max_t is not None and grace > plan.max_t:
        raise UserError(f"scheduler.grace_period: got {grace}, larger than max_t={plan.max_t} tokens (the "
                        "largest num_train_epochs times the train split's tokens); lower grace_period or "
                        "set scheduler.max_t")


def run_sweep(spec_or_path: Spec | str | Path | dict, *, overrides: list[str] | None = None,
              name: str | None = None, num_samples: int | None = None, address: str | None = None,
              trial_fn: Callable | None = None, force: bool = False) -> SweepResult:
    """Run a whole sweep and return its leaderboard, best trial, final evaluation and export paths.

    Run again on the same sweep directory, it resumes: an experiment whose driver died is restored,
    a finished sweep asked for more trials (`num_samples`) runs the missing ones on the same study,
    and a sweep already promoted is not promoted again. A changed spec is refused unless `force`.

    `trial_fn(config, report)`, when given, replaces the built-in Trainer run: it receives the
    trial's hyperparameters and calls `report(metrics, checkpoint_dir)` with at least `eval_loss` and
    `tokens_seen`; a checkpoint is a directory `from_pretrained` can load.
    """
    _quiet_libraries()
    spec = resolve_spec(spec_or_path, overrides, name, num_samples)
    sweep_dir = spec.sweep_dir
    if not storage.is_uri(spec.storage):
        spec.storage = str(sweep_dir)  # absolute: trials run in other working directories
    progress = state.begin(spec, _saved_spec(sweep_dir), force)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / SPEC_FILE).write_text(to_yaml(spec))
    progress.save(sweep_dir)
    log.info("sweep %s: %s", spec.name, sweep_dir)

    check_model(spec)
    prepared = publish(spec, data.prepare(spec, sweep_dir))
    data.check_prepared(spec, prepared)
    plan = sweep.make_plan(spec, prepared.train_tokens())
    check_plan(spec, plan)
    log.info("plan:\n  %s", plan.describe().replace("\n", "\n  "))

    ctx = TrialContext(spec, prepared, model.resolve(spec.model.name_or_path), plan.max_t, trial_fn)
    tracker = tracking.Tracker(spec)
    board: list[dict[str, Any]] = []
    result = None
    try:
        search(spec, ctx, plan, address, tracker, progress)
        board = results.leaderboard(sweep_dir, spec.search.mode, spec.name)
        results.write_csv(board, sweep_dir / "leaderboard.csv")
        if already_exported(spec, board, progress):
            log.info("sweep %s: its best of %d trials was promoted and exported already", spec.name, len(board))
            result = exported_result(spec, board)
        else:
            result = promote_and_export(spec, ctx, board, tracker)
        progress.exported_trials = len(board)
        progress.save(sweep_dir)
    finally:
        if board:  # a failed sweep's report still shows what its trials did
            write_report(spec)
        tracker.sweep_ended(board, result.paths["best"] if result else None)
        tracker.close()
        if storage.is_uri(spec.location) and (sweep_dir / tracking.WANDB_DIR).exists():
            storage.upload(sweep_dir / tracking.WANDB_DIR, storage.join(spec.location, tracking.WANDB_DIR))
    return result


def resume_sweep(sweep_dir: str | Path, *, address: str | None = None, force: bool = False,
                 num_samples: int | None = None) -> SweepResult:
    """Go on with the sweep in `sweep_dir`, under the spec saved there."""
    spec = load_sweep_spec(sweep_dir)
    if not state.is_sweep_dir(Path(sweep_dir)):
        raise UserError(f"{sweep_dir}: not a sweep directory (no {state.STATE_FILE}); give the directory "
                        "`launch.py sweep` printed, e.g. runs/tiny")
    if not storage.is_uri(spec.storage):
        spec.storage = str(Path(sweep_dir).resolve())  # the directory may have moved since
    return run_sweep(spec, num_samples=num_samples, address=address, force=force)


def search(spec: Spec, ctx: TrialContext, plan: sweep.Plan, address: str | None, tracker: tracking.Tracker,
           progress: state.SweepState) -> None:
    """The Tune experiments this run owes: the one a dead driver left (restored), then one for the
    trials still missing from `search.num_samples`. The state is saved around each, so a driver
    killed at any point resumes at the right one."""
    sweep_dir = spec.sweep_dir
    while True:
        records = results.load_records(sweep_dir)
        experiment = state.next_experiment(progress, spec.search.num_samples, len(records))
        if experiment is None:
            break
        progress.save(sweep_dir)
        ended = {r["trial_id"]: last_report(r) for r in records if r["status"] not in C.UNFINISHED}
        restored = experiment.restore
        complete = sweep.run_search(spec, replace(ctx, ended=ended), plan, address, tracker=tracker,
                                    experiment=experiment)
        experiment.finished, experiment.restore = True, False
        progress.save(sweep_dir)
        if not (restored and complete):
            break  # one new experiment per run; Ctrl-C or the time budget end the run


def already_exported(spec: Spec, board: list[dict[str, Any]], progress: state.SweepState) -> bool:
    """Whether best/ already holds this sweep's winner: no trial ran since the export, or the ones
    that did (an extension) did not beat it. Promotion is a full test-set evaluation: done once."""
    final = spec.sweep_dir / export.BEST_DIR / "final_eval.json"
    if not final.exists() or progress.exported_trials is None:
        return False
    if progress.exported_trials == len(board):
        return True
    best = results.best_records(spec.sweep_dir, spec.search.mode)
    exported = json.loads(final.read_text())
    return bool(best) and (best[0]["trial_id"], best[0]["best_checkpoint"]) == (exported["trial_id"],
                                                                               exported["checkpoint"])


def last_report(record: dict[str, Any]) -> dict[str, Any]:
    """An ended trial's last report again, marked as a repeat of how it ended."""
    last = record["history"][-1] if record["history"] else {C.EVAL_LOSS: math.nan, C.STEP: 0, C.TOKENS_SEEN: 0}
    return {**last, C.TRIAL_STATUS: record["status"], C.FINAL: True, C.REPEAT: True}


def exported_result(spec: Spec, board: list[dict[str, Any]]) -> SweepResult:
    """The result of a sweep promoted and exported by an earlier run, read back from best/."""
    best_dir = spec.sweep_dir / export.BEST_DIR
    final_eval = json.loads((best_dir / "final_eval.json").read_text())
    records = {r["trial_id"]: r for r in results.load_records(spec.sweep_dir)}
    best = records.get(final_eval.get("trial_id")) or (board[0] if board else {})
    _summary(spec, best, final_eval, best_dir)
    return _result(spec, board, best, final_eval, best_dir)


def promote_and_export(spec: Spec, ctx: TrialContext, board: list[dict[str, Any]],
                       tracker: tracking.Tracker) -> SweepResult:
    """The best promotable trial's final evaluation on the test split, then `best/`."""
    sweep_dir, prepared = spec.sweep_dir, ctx.prepared
    records = results.load_records(sweep_dir)
    baseline_record = results.baseline_record(records, spec.search.baseline)
    best, (metrics, samples, best_model), selection = _evaluate_best_readable(spec, ctx, baseline_record)
    baseline = results.baseline_comparison(baseline_record, best, spec.search.mode)
    if baseline is not None:
        metrics["baseline"] = {**baseline, **metrics.get("baseline", {})}
    if selection is not None:
        metrics["selection"] = selection
    best_dir = export.write_best(spec, best, metrics, samples, best_model, prepared.tokenizer_path)
    final_eval = json.loads((best_dir / "final_eval.json").read_text())
    tracker.final_evaluation(best, final_eval, samples)
    if storage.is_uri(spec.location):  # the bucket gets the driver's files too: results in one place
        for name in (SPEC_FILE, state.STATE_FILE, sweep.TRIALS_DIR, sweep.LOGS_DIR, sweep.STUDY_DB, "leaderboard.csv", export.BEST_DIR):
            if (sweep_dir / name).exists():
                storage.upload(sweep_dir / name, storage.join(spec.location, name))
    _summary(spec, best, final_eval, best_dir)
    return _result(spec, board, best, final_eval, best_dir)


def write_report(spec: Spec) -> Path | None:
    """(Re)build report.html and say where it is. A report that fails to build is a warning: the
    sweep's results are all on disk, and `launch.py report` can build it again."""
    from tuner import report

    try:
        path = report.write_report(spec)
    except Exception as exc:  # noqa: BLE001 (a plot's bug must not fail a finished sweep)
        log.warning("report: not written (%s); rebuild it with `python launch.py report %s`",
                    first_line(exc), spec.sweep_dir)
        return None
    if storage.is_uri(spec.location):
        storage.upload(path, storage.join(spec.location, report.REPORT_FILE))
    log.info("report: %s", path)
    return path


def _result(spec: Spec, board: list[dict[str, Any]], best: dict[str, Any], final_eval: dict[str, Any],
            best_dir: Path) -> SweepResult:
    sweep_dir = spec.sweep_dir
    return SweepResult(sweep_dir, board, best, final_eval, {
        "leaderboard": sweep_dir / "leaderboard.csv", "best": best_dir,
        "config": best_dir / "config.yaml", "model": best_dir / "model",
        "final_eval": best_dir / "final_eval.json", "samples": best_dir / "samples.jsonl",
        "report": sweep_dir / "report.html"})


def publish(spec: Spec, prepared: data.Prepared) -> data.Prepared:
    """Put the prepared data where every node reaches it (once), and say where."""
    local = Path(prepared.path).parent
    if not storage.is_uri(spec.location):
        return replace(prepared, shared=str(local))
    remote = storage.join(spec.location, "data", prepared.fingerprint)
    if not storage.exists(storage.join(remote, "prepared.json")):
        log.info("data: uploading the prepared data to %s", remote)
        storage.upload(local, remote)
    return replace(prepared, shared=remote)


def fetch(checkpoint: str, local: Path) -> str:
    """A local directory holding `checkpoint` (downloaded when it lives in a bucket)."""
    if not storage.is_uri(checkpoint):
        return checkpoint
    try:
        storage.download(checkpoint, local)
    except OSError as exc:  # gone from the bucket, or unreachable: promotion takes the next best
        raise promote.UnreadableCheckpoint(f"{checkpoint}: {first_line(exc)}") from None
    return str(local)


def _evaluate_best_readable(spec: Spec, ctx: TrialContext, baseline: dict[str, Any] | None,
                            ) -> tuple[dict[str, Any], tuple, dict[str, Any] | None]:
    """The final evaluation of the best trial whose checkpoint can be read, best first (re-ranked on
    the whole validation split when `promote.top_k` > 1): a missing or corrupt checkpoint falls back
    to the next best, and says so. Returns the record, the evaluation and the re-ranking, if any."""
    sweep_dir = spec.sweep_dir
    candidates = results.best_records(sweep_dir, spec.search.mode)

    def locate(record: dict[str, Any]) -> str:
        return fetch(record["best_checkpoint"], sweep_dir / "promoted" / record["trial_id"])

    selection = None
    if spec.promote.top_k > 1 and len(candidates) > 1:
        candidates, selection = promote.rerank(candidates, locate, ctx.prepared, spec.promote,
                                               spec.model.trust_remote_code, lambda: model.load_model(
                                                   ctx.model_path, spec.model.revision, token_env=spec.model.token_env,
                                                   trust_remote_code=spec.model.trust_remote_code))
        log.info("promote: the best %d trials re-evaluated on the whole validation split (%d blocks): %s",
                 len(selection["candidates"]), selection["blocks"], ", ".join(
                     f"{c['trial_id']} {c['validation_loss']:.4f}" for c in selection["candidates"]))
        log.info("promote: %s", f"the choice changed from {selection['search_winner']} to {selection['chosen']}"
                 if selection["changed"] else f"the choice stands: {selection['chosen']}")
    baseline_checkpoint = None
    if baseline is not None and baseline.get("best_checkpoint") and not baseline.get("checkpoint_deleted"):
        try:
            baseline_checkpoint = locate(baseline)
        except promote.UnreadableCheckpoint as exc:
            log.warning("promote: the baseline trial's checkpoint is unreadable (%s)", exc)
    skipped = []
    for record in candidates:
        try:
            checkpoint = locate(record)
            return record, promote.final_evaluation(checkpoint, ctx.model_path, ctx.prepared, spec.promote,
                                                    spec.model.revision, spec.model.token_env,
                                                    spec.model.trust_remote_code, baseline_checkpoint), selection
        except promote.UnreadableCheckpoint as exc:  # not the base model's errors: those are not the checkpoint's
            skipped.append(f"  {record['trial_id']}: {exc}")
            log.warning("promote: the checkpoint of trial %s is missing or unreadable (%s); promoting the "
                        "next best trial instead", record["trial_id"], exc)
    lines = skipped or [f"  {r['trial_id']}: {r['status']}" + (f" ({r['error']})" if r.get("error") else "")
                        for r in results.load_records(sweep_dir)]
    reason = "no readable checkpoint" if skipped else f"no trial finished with a finite {spec.search.metric}"
    raise SweepFailed(f"{reason}; nothing to promote or export:\n" + "\n".join(lines))


def _summary(spec: Spec, best: dict[str, Any], final: dict[str, Any], best_dir: Path) -> None:
    log.info("best trial %s: search %s %.4f at step %s; test perplexity %.2f", best["trial_id"],
             spec.search.metric, best["best_metric"], best["best_step"], final["perplexity"])
    for line in results.ab_lines(final):
        log.info("  %s", line)
    if "baseline" in final and "tuning_beat_baseline" in final["baseline"]:
        baseline = final["baseline"]
        verdict = "beat" if baseline["tuning_beat_baseline"] else "did not beat"
        log.info("tuning %s the baseline (trial %s, %s, search %s %s)", verdict, baseline["trial_id"],
                 baseline["status"], spec.search.metric, baseline["search_metric"])
    log.info("results: %s (leaderboard.csv, best/config.yaml, best/model, best/final_eval.json)",
             spec.sweep_dir)


def _quiet_libraries() -> None:
    """Progress bars and warnings from the libraries drown our own progress lines."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[tuner] %(message)s"))
        handler.addFilter(secret.RedactingFilter())
        log.addHandler(handler)
        log.setLevel(logging.INFO)


def _saved_spec(sweep_dir: Path) -> Spec | None:
    """The spec an earlier run saved in the sweep directory, if it still reads (to name what changed)."""
    try:
        return load_spec(sweep_dir / SPEC_FILE) if (sweep_dir / SPEC_FILE).is_file() else None
    except UserError:
        return None


def load_sweep_spec(sweep_dir: str | Path) -> Spec:
    """The resolved spec saved in a sweep directory; refuses anything that is not one."""
    path = Path(sweep_dir) / SPEC_FILE
    if not path.is_file():
        raise UserError(f"{sweep_dir}: not a sweep directory (no {SPEC_FILE}); give the directory "
                        "`launch.py sweep` printed, e.g. runs/tiny")
    return load_spec(path)
