"""The whole sweep, one stage per call: spec → prepared data → search → results → promotion → export.

`run_sweep` is both what `tuner sweep` runs and the Python API for notebooks and scripts.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, cast

from tuner import constants as C
from tuner import (
    data,
    layout,
    live,
    lock,
    logs,
    mirror,
    model,
    pareto,
    records,
    report,
    restore,
    results,
    secret,
    space,
    state,
    storage,
    study,
    tracking,
    warmstart,
)
from tuner.background import Background
from tuner.context import TrialContext
from tuner.errors import UserError, first_line
from tuner.plan import Plan, data_warnings, make_plan
from tuner.promotion import SweepFailed, SweepResult, already_exported, exported_result, promote_and_export
from tuner.records import TrialRecord
from tuner.spec import Spec, load_spec, to_yaml

__all__ = ["SweepFailed", "SweepResult", "resume_sweep", "run_sweep"]
log = logging.getLogger("tuner")
SPEC_FILE = layout.SPEC_FILE


def resolve_spec(spec_or_path: Spec | str | Path | dict, overrides: list[str] | None = None,
                 name: str | None = None, num_samples: int | None = None, metric_fn: Callable | None = None) -> Spec:
    """Load and validate a spec, with `--set`, `--name` and `--num-samples` applied on top (and a
    Python `metric_fn` in place of search.metric_fn)."""
    extra = list(overrides or [])
    if name is not None:
        extra.append(f"name={name}")
    if num_samples is not None:
        extra.append(f"search.num_samples={num_samples}")
    if isinstance(spec_or_path, Spec):
        spec_or_path = spec_or_path.to_dict()
        if spec_or_path.get("origin") is None:
            spec_or_path.pop("origin")
    return load_spec(spec_or_path, extra, metric_fn=metric_fn)


def check_model(spec: Spec) -> None:
    """Checks that need the model's config: the block fits its positions, the frozen blocks exist,
    LoRA has layers to wrap."""
    config = model.load_config(spec.model.name_or_path, spec.model.revision, spec.model.token_env,
                               spec.model.trust_remote_code, spec.model.code_revision)
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


def check_plan(spec: Spec, plan: Plan) -> None:
    """A `grace_period` past the `max_t` the data gives (max_t unset: the largest epochs over the
    train split) would let ASHA stop nothing; `validate` catches it where max_t is set."""
    grace = spec.scheduler.grace_period
    if spec.scheduler.type == "asha" and grace is not None and plan.max_t is not None and grace > plan.max_t:
        raise UserError(f"scheduler.grace_period: got {grace}, larger than max_t={plan.max_t} tokens (the "
                        "largest num_train_epochs times the train split's tokens); lower grace_period or "
                        "set scheduler.max_t")


def run_sweep(spec_or_path: Spec | str | Path | dict, *, overrides: list[str] | None = None,
              name: str | None = None, num_samples: int | None = None, address: str | None = None,
              trial_fn: Callable | None = None, force: bool = False, restart_search: bool = False,
              command: str = "sweep", metric_fn: Callable | None = None) -> SweepResult:
    """Run a whole sweep and return its leaderboard, best trial, final evaluation and export paths.

    Run again on the same sweep directory, it resumes: an experiment whose driver died is restored,
    a finished sweep asked for more trials (`num_samples`) runs the missing ones on the same study,
    and a sweep already promoted is not promoted again. A changed spec is refused unless `force`;
    an unreadable Tune snapshot or study unless `restart_search`. One driver per sweep: a second
    one is refused while the first runs.

    `trial_fn(config, report)`, when given, replaces the built-in Trainer run: it receives the
    trial's hyperparameters and calls `report(metrics, checkpoint_dir)` with at least `eval_loss` and
    `tokens_seen`; a checkpoint is a directory `from_pretrained` can load. `trial_fn(config, report,
    checkpoint)` also gets the checkpoint to go on from when the trial restarts (else None).

    `metric_fn(model, tokenizer, sample)`, when given, is called in each trial at every report, as
    `search.metric_fn` names one in a spec: it returns a number (reported as search.metric) or a
    dict of them (each key prefixed `eval_`), and search.metric names the one to optimise.
    """
    _log_handler()
    spec = resolve_spec(spec_or_path, overrides, name, num_samples, metric_fn)
    check_metric_fn(spec, trial_fn, metric_fn)
    # spec.yaml names no local path: the sweep is wherever its directory is (`resume DIR`), moved or not
    saved = to_yaml(replace(spec, storage=spec.storage if storage.is_uri(spec.storage) else None))
    sweep_dir = spec.sweep_dir
    if not storage.is_uri(spec.storage):
        spec.storage = str(sweep_dir)  # absolute: trials run in other working directories
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with lock.hold(sweep_dir, spec.location, command), logs.to_file(sweep_dir):
        return _drive(spec, saved, address, trial_fn, force, restart_search, metric_fn)


def check_metric_fn(spec: Spec, trial_fn: Callable | None, metric_fn: Callable | None) -> None:
    """A metric_fn is called by the built-in Trainer loop; a trial_fn reports its own figures."""
    if trial_fn is not None and (metric_fn is not None or spec.search.metric_fn is not None):
        raise UserError("metric_fn: given with trial_fn, whose loop the sweep does not evaluate; compute the "
                        "metric in trial_fn and report it (report({..., 'eval_x': value}, ...)), or drop trial_fn")
    if metric_fn is not None and not callable(metric_fn):
        raise UserError(f"metric_fn: got {metric_fn!r}, expected a function of (model, tokenizer, sample)")


def _drive(spec: Spec, saved: str, address: str | None, trial_fn: Callable | None, force: bool,
           restart_search: bool, metric_fn: Callable | None = None) -> SweepResult:
    """Everything a sweep does, under its lock."""
    quiet_libraries()
    sweep_dir = spec.sweep_dir
    layout.remove_temporaries(sweep_dir)
    progress = state.begin(spec, _saved_spec(sweep_dir), force, _name_of(trial_fn))
    layout.write_text(sweep_dir / SPEC_FILE, saved)
    progress.save(sweep_dir)
    log.info("sweep %s: %s", spec.name, sweep_dir)

    check_model(spec)
    _check_study(spec, progress, restart_search)
    warmstart.prepare(spec, study.live_path(sweep_dir, progress.sweep_id), progress.sweep_id)
    prepared = publish(spec, data.prepare(spec, sweep_dir))
    data.check_prepared(spec, prepared)
    plan = make_plan(spec, prepared.train_tokens())
    check_plan(spec, plan)
    for warning in data_warnings(spec, plan, prepared.train_tokens()):
        log.warning("%s", warning)
    log.info("plan:\n  %s", plan.describe().replace("\n", "\n  "))

    ctx = TrialContext(spec, prepared, model.resolve(spec.model.name_or_path), plan.max_t, trial_fn,
                       metric_fn=metric_fn)
    # W&B's calls for each trial run off Tune's event loop: a slow W&B server never holds a trial up.
    background = Background(tracking.Tracker(spec), queued=tracking.TRIAL_CALLS)
    tracker = cast(tracking.Tracker, background)  # a proxy: every attribute but `stop` is the tracker's
    board: list[dict[str, Any]] = []
    result = None
    try:
        with live.showing(live.Source(spec, plan, time.time())):
            search(spec, ctx, plan, address, tracker, progress, restart_search)
        board = results.leaderboard(sweep_dir, spec.search.mode, spec.name, objectives=pareto.objectives(spec))
        results.write_csv(board, sweep_dir / layout.LEADERBOARD)
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
            log.info("study: %s", dashboard_command(sweep_dir))
        tracker.sweep_ended(board, result.paths.get("best") if result else None)
        tracker.close()
        background.stop()
        _upload_results(spec, progress)
    return result


def _name_of(trial_fn: Callable | None) -> str | None:
    if trial_fn is None:
        return None
    return f"{getattr(trial_fn, '__module__', '?')}:{getattr(trial_fn, '__qualname__', repr(trial_fn))}"


def _check_study(spec: Spec, progress: state.SweepState, restart_search: bool) -> None:
    """The sweep's study must be its own and readable before any trial starts; with
    `restart_search`, an unreadable one is set aside and rebuilt from the trial records."""
    try:
        study.check(spec.sweep_dir, spec.location, progress.sweep_id, spec.name)
    except UserError:
        if not restart_search:
            raise
        study.set_aside(spec.sweep_dir, progress.sweep_id)
        ended = [r for r in records.load_all(spec.sweep_dir, spec.location) if r.ended]
        count = study.rebuild(study.live_path(spec.sweep_dir, progress.sweep_id), spec.name, progress.sweep_id,
                              spec.search.metric, spec.search.mode, space.distributions(spec), ended,
                              pareto.objectives(spec))
        log.info("optuna: a new study rebuilt from the records of %d finished trials", count)


def _upload_results(spec: Spec, progress: state.SweepState) -> None:
    """With bucket storage, the driver's files and its W&B runs end in the bucket too (the report
    went there when it was written)."""
    if not storage.is_uri(spec.location):
        return
    mirror.Mirror(spec.sweep_dir, spec.location, progress.sweep_id).push_all()
    if (spec.sweep_dir / layout.WANDB_DIR).exists():
        storage.upload(spec.sweep_dir / layout.WANDB_DIR, storage.join(spec.location, layout.WANDB_DIR))


def resume_sweep(sweep: str | Path, *, address: str | None = None, force: bool = False,
                 num_samples: int | None = None, restart_search: bool = False,
                 trial_fn: Callable | None = None, metric_fn: Callable | None = None) -> SweepResult:
    """Go on with the sweep in `sweep` (its directory, or its bucket URI), under the spec saved there.
    From a bucket, on a machine that has none of its files, they are fetched first. A sweep whose
    trials ran a user's `trial_fn` or `metric_fn` goes on with the same function."""
    if storage.is_uri(str(sweep)):
        spec = _bucket_spec(str(sweep))
    else:
        spec = load_sweep_spec(sweep)
        if not state.is_sweep_dir(Path(sweep)):
            raise UserError(f"{sweep}: not a sweep directory (no {layout.STATE_FILE}); give the directory "
                            "`tuner sweep` printed, e.g. runs/tiny")
    return run_sweep(spec, num_samples=num_samples, address=address, force=force, restart_search=restart_search,
                     trial_fn=trial_fn, command="resume", metric_fn=metric_fn)


def _bucket_spec(uri: str) -> Spec:
    """The spec of the sweep stored at `uri`, its driver files fetched into runs/<name> if that
    directory has none."""
    remote = storage.join(uri.rstrip("/"), SPEC_FILE)
    try:
        text = storage.read_text(remote)
    except OSError as exc:
        raise UserError(f"{uri}: no sweep there ({first_line(exc)}); give the storage URI the sweep ran with, "
                        "e.g. s3://bucket/sweeps/tiny") from None
    spec = load_spec(_yaml(text), [f"storage={uri.rstrip('/')}"], saved=True)
    if not state.is_sweep_dir(spec.sweep_dir):
        mirror.pull(spec.location, spec.sweep_dir)
        log.info("sweep %s: its driver files fetched from %s into %s", spec.name, uri, spec.sweep_dir)
    return spec


def _yaml(text: str) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(text)


def search(spec: Spec, ctx: TrialContext, plan: Plan, address: str | None, tracker: tracking.Tracker,
           progress: state.SweepState, restart_search: bool = False) -> None:
    """The Tune experiments this run owes: the one a dead driver left (restored, or abandoned when it
    cannot be), then one for the trials still missing from `search.num_samples`. The state is saved
    around each, so a driver killed at any point resumes at the right one."""
    from tuner import sweep  # Ray: imported only when trials are to run

    sweep_dir = spec.sweep_dir
    while True:
        snapshot = restore.plan(progress, sweep_dir, spec.location, spec.name, restart_search)
        found = records.load_all(sweep_dir, spec.location)
        experiment = state.next_experiment(progress, spec.search.num_samples, len(found))
        if experiment is None:
            break
        progress.save(sweep_dir)
        ended = {r.trial_id: last_report(r) for r in found if r.ended}
        restored = experiment.restore  # restore.plan gave a snapshot exactly then
        complete = sweep.run_search(spec, replace(ctx, ended=ended), plan, progress.sweep_id, address,
                                    tracker=tracker, experiment=experiment, snapshot=snapshot)
        experiment.finished, experiment.restore = True, False
        progress.save(sweep_dir)
        if not (restored and complete):
            break  # one new experiment per run; Ctrl-C or the time budget end the run


def last_report(record: TrialRecord) -> dict[str, Any]:
    """An ended trial's last report again, marked as a repeat of how it ended."""
    last = record.history[-1] if record.history else {C.EVAL_LOSS: math.nan, C.STEP: 0, C.TOKENS_SEEN: 0}
    return {**last, C.TRIAL_STATUS: record.status, C.FINAL: True, C.REPEAT: True}


def dashboard_command(sweep_dir: Path) -> str:
    """The command that opens the sweep's study in optuna-dashboard: its copy in the sweep directory,
    replaced whole at every save, so a dashboard left open keeps reading a consistent file."""
    return f"optuna-dashboard sqlite:///{(Path(sweep_dir) / layout.STUDY_DB).resolve()}"


def write_report(spec: Spec) -> Path | None:
    """(Re)build report.html and say where it is. A report that fails to build is a warning: the
    sweep's results are all on disk, and `tuner report` can build it again."""
    try:
        path = report.write_report(spec)
    except Exception as exc:  # noqa: BLE001 (a plot's bug must not fail a finished sweep)
        log.warning("report: not written (%s); rebuild it with `tuner report %s`",
                    first_line(exc), spec.sweep_dir)
        return None
    if storage.is_uri(spec.location):
        storage.upload(path, storage.join(spec.location, layout.REPORT_FILE))
    log.info("report: %s", path)
    return path


def publish(spec: Spec, prepared: data.Prepared) -> data.Prepared:
    """Put the prepared data where every node reaches it (once), and say where."""
    local = Path(prepared.path).parent
    if not storage.is_uri(spec.location):
        return replace(prepared, shared=str(local))
    remote = storage.join(spec.location, layout.DATA_DIR, prepared.fingerprint)
    if not storage.exists(storage.join(remote, "prepared.json")):
        log.info("data: uploading the prepared data to %s", remote)
        storage.upload(local, remote)
    return replace(prepared, shared=remote)


def _log_handler() -> None:
    """Our progress lines on stderr (the CLI sets its own; the Python API gets this one)."""
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setLevel(logging.INFO)
        handler.setFormatter(logging.Formatter("[tuner] %(message)s"))
        handler.addFilter(secret.RedactingFilter())
        log.addHandler(handler)
        log.setLevel(logging.INFO)


def saved_plan(spec: Spec) -> Plan | None:
    """The plan of a sweep whose data is prepared (for `status --watch`); None before."""
    train_tokens = data.prepared_train_tokens(spec)
    return make_plan(spec, train_tokens) if train_tokens is not None else None


def quiet_libraries() -> None:
    """Progress bars and warnings from the libraries drown our own progress lines. From the command
    line their log lines go to sweep.log (and the terminal with -v); from Python they are silenced."""
    import datasets
    import optuna
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # "A new study created": a warm start makes one early
    if logs.configured():
        logs.adopt_libraries()
    else:
        transformers.utils.logging.set_verbosity_error()


def _saved_spec(sweep_dir: Path) -> Spec | None:
    """The spec an earlier run saved in the sweep directory, if it still reads (to name what changed)."""
    try:
        return load_spec(sweep_dir / SPEC_FILE, saved=True) if (sweep_dir / SPEC_FILE).is_file() else None
    except UserError:
        return None


def load_sweep_spec(sweep_dir: str | Path) -> Spec:
    """The resolved spec saved in a sweep directory, placed where that directory is now (it may have
    been moved or copied); refuses anything that is not one."""
    path = Path(sweep_dir) / SPEC_FILE
    if not path.is_file():
        raise UserError(f"{sweep_dir}: not a sweep directory (no {SPEC_FILE}); give the directory "
                        "`tuner sweep` printed, e.g. runs/tiny")
    spec = load_spec(path, saved=True)  # to read it; a run validates it again, metric_fn and all
    if not storage.is_uri(spec.storage):
        spec.storage = str(Path(sweep_dir).resolve())
    return spec
