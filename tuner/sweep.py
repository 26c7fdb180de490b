"""The search: a Ray Tune `Tuner` whose trials Optuna samples and ASHA stops early.

This is the only module that touches Ray. It holds the plan (budget and rungs, in tokens), the thin
Tune wrapper around the Ray-free training core in `trial`, an `OptunaSearch` that tells Optuna the
truth about each trial's end, and a callback that keeps one record per trial on disk for the
leaderboard, `status` and promotion.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from tuner import cluster
from tuner import constants as C
from tuner import secret, space, storage
from tuner.distributed import CHECKPOINT_PATH
from tuner.spec import Spec, parse_duration
from tuner.state import FIRST_EXPERIMENT, Experiment

if TYPE_CHECKING:  # the training core imports transformers: load it only where trials run
    from tuner.context import TrialContext

log = logging.getLogger("tuner")

TRIALS_DIR = "trials"  # one JSON record per trial, written by TrialLedger
LOGS_DIR = "logs"  # one log file per trial
DRIVER_CPUS = 0.1  # what the Tune driver of a data-parallel trial holds; its workers hold the rest
STUDY_DB = storage.STUDY_DB  # the copy in the sweep directory; the live study is on the driver's disk
# Our own progress lines replace Tune's tables; its snapshot warnings are about its own bookkeeping.
QUIET_RAY = {"RAY_AIR_NEW_OUTPUT": "0", "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0"}


# ---------------------------------------------------------------------------------------------
# The plan: what a sweep will spend, in tokens and reports. No Ray needed.


@dataclass
class Plan:
    num_samples: int
    concurrency: str
    report_every_tokens: int
    max_t: int | None  # tokens; None until the train split is known
    grace_period: int | None
    reduction_factor: float
    rungs: list[int]
    budget_tokens: int | None  # upper bound: every trial trained to max_t
    budget_reports: int | None

    def describe(self) -> str:
        lines = [f"trials: {self.num_samples}", f"concurrent trials: {self.concurrency}",
                 f"report every: {self.report_every_tokens} tokens"]
        if self.max_t is None:
            lines.append("max_t: the largest epoch count times the train tokens (known once the data is "
                         "prepared; run `sweep` to prepare it)")
        else:
            lines.append(f"max_t: {self.max_t} tokens per trial")
            if self.rungs:
                lines.append(f"ASHA rungs (tokens): {', '.join(map(str, self.rungs))}; "
                             f"keeps the best 1/{self.reduction_factor:g} at each")
            lines.append(f"compute budget (at most): {self.budget_tokens} training tokens, "
                         f"{self.budget_reports} trial-reports")
        return "\n".join(lines)


def asha_rungs(grace_period: int, max_t: int, reduction_factor: float) -> list[int]:
    """ASHA's milestones as Ray computes them for one bracket: grace * rf^k below max_t."""
    count = int(math.log(max_t / grace_period) / math.log(reduction_factor) + 1)
    return [int(grace_period * reduction_factor ** k) for k in range(count)
            if grace_period * reduction_factor ** k < max_t]


def make_plan(spec: Spec, train_tokens: int | None, concurrency: int | None = None) -> Plan:
    """The sweep's budget; `concurrency` is what the live cluster allows, where it is known."""
    sched = spec.scheduler
    max_t = sched.max_t
    if max_t is None and train_tokens is not None:
        max_t = int(math.ceil(space.max_epochs(spec) * train_tokens))
    grace, rungs = None, []
    if sched.type == "asha" and max_t is not None:
        grace = sched.grace_period or max(spec.train.report_every_tokens,
                                          int(max_t / sched.reduction_factor ** 3))
        grace = min(grace, max_t)
        rungs = asha_rungs(grace, max_t, sched.reduction_factor)
    slots = str(concurrency or spec.search.max_concurrent_trials or "as many as the resources allow "
                f"({spec.resources.cpus_per_trial:g} CPU, {spec.resources.gpus_per_trial:g} GPU per trial)")
    budget_tokens = budget_reports = None
    if max_t is not None:
        budget_tokens = spec.search.num_samples * max_t
        budget_reports = spec.search.num_samples * math.ceil(max_t / spec.train.report_every_tokens)
    return Plan(spec.search.num_samples, slots, spec.train.report_every_tokens, max_t, grace,
                sched.reduction_factor, rungs, budget_tokens, budget_reports)


# ---------------------------------------------------------------------------------------------
# Trials under Tune.


def tune_trainable(config: dict[str, Any], ctx: TrialContext) -> None:
    """The thin wrapper: Tune's checkpoint in, Tune's `report` out, the training core in between."""
    from ray import tune

    from tuner.trial import run_trial, run_user_trial

    from tuner.distributed import placement, placement_keys

    where = placement_keys([placement()])

    def report(metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        checkpoint = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        tune.report({**metrics, **where}, checkpoint=checkpoint)

    if repeat_if_ended(ctx):
        return
    trial_id = tune.get_context().get_trial_id()
    ctx = on_this_node(ctx)
    checkpoint = tune.get_checkpoint()
    with trial_log(ctx.spec.sweep_dir / LOGS_DIR / f"{trial_id}.log"):
        if ctx.trial_fn is not None:
            run_user_trial(config, ctx, report)
        elif checkpoint is None:
            run_trial(config, ctx, report)
        else:
            with checkpoint.as_directory() as resume_from:
                run_trial(config, ctx, report, resume_from=resume_from)


def repeat_if_ended(ctx: TrialContext) -> bool:
    """A trial that ended after the dead driver's last snapshot (Tune restores it as running) says
    how it ended, once more, and does nothing else."""
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    if trial_id not in ctx.ended:
        return False
    tune.report(ctx.ended[trial_id])
    return True


def on_this_node(ctx: TrialContext) -> TrialContext:
    """Trials away from the driver's node read a node-local copy of the prepared data."""
    import ray

    if ctx.driver_node is None or ray.get_runtime_context().get_node_id() == ctx.driver_node:
        return ctx
    return replace(ctx, prepared=ctx.prepared.on_this_node())


@contextlib.contextmanager
def trial_log(path: Path):
    """Send the trial's output (prints, warnings, library logs) to one file in the sweep directory.

    Actors are reused across trials, so the redirection is undone when the trial ends."""
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    with open(path, "a", buffering=1) as file:
        stream = secret.RedactingStream(file)  # no key or token reaches a log we write
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        root.addHandler(handler)
        try:
            with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
                yield
        except BaseException:
            traceback.print_exc(file=stream)
            raise
        finally:
            root.removeHandler(handler)


def _sampler(spec: Spec):
    """The Optuna sampler, seeded here: OptunaSearch ignores `seed` once given a sampler."""
    import optuna

    search = spec.search
    startup = {} if search.n_startup_trials is None else {"n_startup_trials": search.n_startup_trials}
    if search.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=search.seed, **startup)
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=search.seed)
    if search.sampler == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=search.seed, **startup)
    return optuna.samplers.QMCSampler(seed=search.seed, scramble=True)


def classify(result: dict[str, Any] | None, error: bool) -> str:
    """A finished trial's status from its last result (annotated by TrialLedger)."""
    if error:
        return C.FAILED
    status = (result or {}).get(C.TRIAL_STATUS, C.RUNNING)
    return C.STOPPED_BUDGET if status == C.RUNNING else status


def _optuna_search_class():
    from ray.tune.search.optuna import OptunaSearch

    class TruthfulOptunaSearch(OptunaSearch):
        """OptunaSearch that records how a trial really ended.

        Ray's tells Optuna every ended trial is COMPLETE with its last value: that teaches TPE from
        early-rung losses and counts failures as results. Here scheduler stops are PRUNED (with their
        intermediate values, by tokens seen), failed and diverged trials FAIL, and a completed trial's
        value is its best report, the checkpoint promotion would take.
        """

        def suggest(self, trial_id: str):
            params = super().suggest(trial_id)
            if params is not None:
                self._ot_trials[trial_id].set_user_attr("ray_trial_id", trial_id)
            return params

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            value = result.get(self.metric)
            if result.get(C.REPEAT) or trial_id in self._completed_trials:
                return  # a closing copy of a report already told, or a trial told already
            if trial_id in self._ot_trials and value is not None and math.isfinite(value):
                self._ot_trials[trial_id].report(value, int(result[C.TOKENS_SEEN]))

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            import optuna

            if trial_id in self._completed_trials or trial_id not in self._ot_trials:
                return
            ot_trial = self._ot_trials[trial_id]
            status = classify(result, error)
            frozen = self._ot_study.get_trials(deepcopy=False)[ot_trial.number]
            if result and result.get(C.TOKENS_SEEN) not in frozen.intermediate_values:
                self.on_trial_result(trial_id, result)  # a stopping report skips on_trial_result
                frozen = self._ot_study.get_trials(deepcopy=False)[ot_trial.number]
            finite = [v for v in frozen.intermediate_values.values() if math.isfinite(v)]
            ot_trial.set_user_attr("status", status)
            if status == C.COMPLETED and finite:
                best = min(finite) if self.mode == "min" else max(finite)
                self._ot_study.tell(ot_trial, best)
            elif status in C.PROMOTABLE and finite:
                self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.PRUNED)
            else:
                self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.FAIL)
            self._completed_trials.add(trial_id)

        def restore(self, checkpoint_path: str) -> None:
            """Tune's last snapshot, reconciled once with the study, which the dead driver kept
            writing after it: trials the study already finished are not told again, and trials it
            holds RUNNING that the snapshot never suggested (no Tune trial will finish them) are
            marked FAIL and their configurations queued again, so the search still runs each once."""
            import optuna

            super().restore(checkpoint_path)
            known = set(self._ot_trials)
            trials = self._ot_study.get_trials(deepcopy=False)
            self._completed_trials.update(t.user_attrs["ray_trial_id"] for t in trials
                                          if t.state.is_finished() and t.user_attrs.get("ray_trial_id") in known)
            lost = [t for t in trials if t.state == optuna.trial.TrialState.RUNNING
                    and t.user_attrs.get("ray_trial_id") not in known]
            for trial in lost:
                optuna.trial.Trial(self._ot_study, trial._trial_id).set_user_attr(C.LOST, True)
                self._ot_study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
                self._ot_study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
                log.info("optuna: trial %s was running when the driver died, after Tune's last snapshot; marked "
                         "FAIL and its configuration queued again", trial.number)
            if lost:
                # The sampler's random state is the snapshot's, from before it drew the lost trials:
                # left as it is, it would draw them again, next to their re-queued copies.
                self._ot_study.sampler.reseed_rng()

    return TruthfulOptunaSearch


def _searcher(spec: Spec, sweep_dir: Path, first: bool = True):
    """OptunaSearch on the sweep's one study; only the sweep's first experiment queues the baseline."""
    import optuna

    distributions = space.distributions(spec)
    if not distributions:
        return None  # a fixed config (e.g. an exported best): nothing to sample
    study = optuna.storages.RDBStorage(f"sqlite:///{storage.local_study(sweep_dir)}")
    baseline = [dict(spec.search.baseline)] if spec.search.baseline and first else None
    return _optuna_search_class()(
        space=space.ConditionalSpace(spec) if space.is_conditional(spec) else distributions,
        metric=spec.search.metric, mode=spec.search.mode,
        points_to_evaluate=baseline, sampler=_sampler(spec), study_name=spec.name, storage=study)


def _scheduler(spec: Spec, plan: Plan):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if spec.scheduler.type == "none":
        return FIFOScheduler()
    return ASHAScheduler(time_attr=C.TIME_ATTR, metric=spec.search.metric, mode=spec.search.mode,
                         max_t=plan.max_t, grace_period=plan.grace_period,
                         reduction_factor=plan.reduction_factor)


# ---------------------------------------------------------------------------------------------
# The ledger: one record per trial, on disk, as the sweep goes.


def _ledger_class():
    from ray import tune

    class TrialLedger(tune.Callback):
        """Keeps `trials/<trial_id>.json` current and prints the sweep's progress.

        Tune marks a result `done` when the scheduler stops the trial; a trial's own last report
        carries `final_report`. A `done` result without it was stopped by ASHA: the ledger writes that
        into the result itself, so the searcher reads the same status.
        """

        def __init__(self, spec: Spec, plan: Plan, say: Callable[[str], None], tracker=None,
                     experiment: str = FIRST_EXPERIMENT, scheduler=None, restored: bool = False):
            sweep_dir, metric, mode = spec.sweep_dir, spec.search.metric, spec.search.mode
            self.location, self.scheme = spec.location, storage.scheme(spec.location)
            self.dir = sweep_dir / TRIALS_DIR
            self.dir.mkdir(parents=True, exist_ok=True)
            self.plan, self.metric, self.sign = plan, metric, 1 if mode == "min" else -1
            # promote.top_k re-evaluates that many checkpoints, and the baseline trial's is evaluated too
            self.max_failures = spec.search.max_failures
            self.keep_best = max(spec.promote.keep_best, spec.promote.top_k)
            self.baseline = spec.search.baseline
            self.say = say
            self.tracker = tracker  # tracking.Tracker: the trial's W&B run follows its record
            self.experiment, self.scheduler = experiment, scheduler
            self.restored = restored  # this run restores an experiment whose driver died
            # Every trial of the sweep (earlier experiments and drivers too): progress and keep_best
            # are sweep-wide.
            self.records = {}
            for path in sorted(self.dir.glob("*.json")):
                record = json.loads(path.read_text())
                self.records[record["trial_id"]] = record
            self.started: set[str] = set()  # trials started by this driver

        def get_state(self) -> dict[str, Any]:
            """Saved by Tune with every experiment snapshot: ASHA's rungs (Tune keeps no scheduler
            state of its own), so a restored sweep stops trials against the same cutoffs. The
            study's copy goes to storage at the same time."""
            copy_study_to_storage(self.dir.parent, self.location)
            return {"scheduler": _scheduler_state(self.scheduler)}

        def set_state(self, state: dict[str, Any]) -> None:
            _restore_scheduler(self.scheduler, state.get("scheduler"))

        def on_step_begin(self, iteration, trials, **info):
            """On the first step of a restored experiment, before any trial starts: bring each
            restored trial up to the latest checkpoint its record holds, and set aside the records of
            trials that Tune's snapshot does not hold (the dead driver started them after it; they
            run again)."""
            if not self.restored:
                return
            self.restored = False
            for trial in trials:
                if trial.trial_id in self.records:
                    self._catch_up(trial, self.records[trial.trial_id])
            known = {t.trial_id for t in trials}
            for record in list(self.records.values()):
                if record.get("experiment", FIRST_EXPERIMENT) != self.experiment or record["trial_id"] in known:
                    continue
                path = self.dir / f"{record['trial_id']}.json"
                (self.dir / C.LOST).mkdir(exist_ok=True)
                record["status"] = C.LOST
                (self.dir / C.LOST / path.name).write_text(json.dumps(record, indent=1, default=str))
                path.unlink()
                del self.records[record["trial_id"]]
                self.say(f"trial {record['trial_id']}: started after the dead driver's last snapshot; "
                         "its configuration runs again as a new trial")

        def _catch_up(self, trial, record: dict[str, Any]) -> None:
            """Tune uploads its snapshot in the background, so a driver killed after a trial's
            checkpoint but before the next upload leaves a snapshot whose latest checkpoint for that
            trial is an older one (or one Tune has deleted since). The record, written when Tune
            registered the checkpoint, is the later word: register its checkpoint with the restored
            trial, as Tune would have, so the trial goes on from there and Tune's next checkpoint
            takes a new directory."""
            latest = record.get("latest_checkpoint")
            if record["status"] not in C.UNFINISHED or not latest:
                return
            ours = self._uri(latest["path"])
            theirs = trial.checkpoint.path if trial.checkpoint is not None else None
            if theirs is not None and _checkpoint_index(theirs) >= _checkpoint_index(ours):
                return
            if not storage.exists(ours):
                log.warning("trial %s: its latest checkpoint %s is gone; it goes on from %s", trial.trial_id,
                            ours, theirs or "step 0")
                return
            from ray import tune
            from ray.train._internal.session import _TrainingResult

            path = ours.split("://", 1)[1] if "://" in ours else ours
            result = _TrainingResult(checkpoint=tune.Checkpoint(path, trial.storage.storage_filesystem),
                                     metrics=dict(latest["metrics"]))
            try:
                trial.on_checkpoint(result)
            except FileNotFoundError:  # an older one it then deletes was deleted by the dead driver already
                trial.invalidate_json_state()
                trial.run_metadata.invalidate_cache()
            trial.storage.current_checkpoint_index = max(trial.storage.current_checkpoint_index,
                                                         _checkpoint_index(ours) + 1)
            log.info("trial %s: Tune's last snapshot predates its checkpoint at step %s; it goes on from that one",
                     trial.trial_id, record.get("checkpoint_step"))

        def _uri(self, path: str) -> str:
            """Ray gives checkpoint paths without the bucket's scheme."""
            return f"{self.scheme}://{path}" if self.scheme and "://" not in path else path

        def _record(self, trial) -> dict[str, Any]:
            if trial.trial_id not in self.records:
                path = self.dir / f"{trial.trial_id}.json"
                self.records[trial.trial_id] = json.loads(path.read_text()) if path.exists() else {
                    "trial_id": trial.trial_id, "experiment": self.experiment, "status": C.PENDING,
                    "params": dict(trial.config),
                    "reports": 0, "best_eval_loss": None, "best_metric": None, "best_step": None,
                    "best_checkpoint": None, "tokens_seen": 0, "train_seconds": 0.0, "rung": None,
                    "error": None, "retries": 0, "log_file": str(self.dir.parent / LOGS_DIR / f"{trial.trial_id}.log"),
                    C.NODE_ID: None, C.GPU_IDS: None, "started_at": None, "ended_at": None,
                    "trial_dir": str(trial.path), "history": []}
            return self.records[trial.trial_id]

        def _write(self, record: dict[str, Any]) -> None:
            path = self.dir / f"{record['trial_id']}.json"
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(record, indent=1, default=str))
            os.replace(tmp, path)

        def on_trial_start(self, iteration, trials, trial, **info):
            record = self._record(trial)
            if record["status"] not in C.UNFINISHED:
                return  # ended after the dead driver's last snapshot: the trainable returns at once
            if record["status"] == C.RUNNING and trial.trial_id not in self.started:
                record["awaiting_start"] = True  # running when the driver died: resumed now
                record["resumes"] = record.get("resumes", 0) + 1
            self.started.add(trial.trial_id)
            record["status"] = C.RUNNING
            record["started_at"] = record["started_at"] or time.time()
            self._write(record)
            if self.tracker is not None:
                self.tracker.trial_started(trial.trial_id, dict(trial.config))

        def on_trial_result(self, iteration, trials, trial, result, **info):
            record = self._record(trial)
            if record["status"] not in C.UNFINISHED:
                return  # a trial that had ended before the driver died, repeating its last report
            if C.START_STEP in result and record.pop("awaiting_start", False):
                self._restarted(record, int(result[C.START_STEP]))
            if result.get("done") and not result.get(C.FINAL):
                tokens = result[C.TOKENS_SEEN]
                if self.plan.max_t is not None and tokens >= self.plan.max_t:
                    result[C.TRIAL_STATUS] = C.COMPLETED
                else:
                    result[C.TRIAL_STATUS] = C.STOPPED_ASHA
                    record["rung"] = max([r for r in self.plan.rungs if r <= tokens], default=None)
            value = result.get(self.metric)
            # A retried trial redoes the steps after its last persisted checkpoint: a report it had
            # already made before the crash is not counted twice.
            redone = bool(record["history"]) and result.get(C.STEP, 0) <= record["history"][-1][C.STEP]
            if result.get(C.TRIAL_STATUS) not in C.ABORTED and not result.get(C.REPEAT) and not redone:
                record["reports"] += 1
                record["history"].append({**{k: result.get(k) for k in C.REPORT_KEYS}, "reported_at": time.time()})
                if self.tracker is not None:
                    self.tracker.trial_reported(trial.trial_id, result)
            record[C.NODE_ID], record[C.GPU_IDS] = result.get(C.NODE_ID), result.get(C.GPU_IDS)
            for key in (C.MICRO_BATCH, C.ACCUMULATION):  # what it trained with (an OOM halves the batch)
                if result.get(key) is not None:
                    record[key] = result[key]
            record["tokens_seen"] = int(result.get(C.TOKENS_SEEN, 0))
            if any(key in result for key in C.TIME_KEYS):  # this run's time so far, by part
                record["timing"] = {key: round(float(result.get(key, 0.0)), 3) for key in C.TIME_KEYS}
            record["train_seconds"] = float(result.get("time_total_s", 0.0))
            record["pending_value"] = value
            if result.get(CHECKPOINT_PATH):  # a data-parallel trial: Train stored the checkpoint
                self._checkpointed(record, result, self._uri(result[CHECKPOINT_PATH]))
            self._write(record)

        def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
            record = self._record(trial)
            result = trial.last_result
            self._checkpointed(record, result, self._uri(checkpoint.path))
            # What a restore needs to register this checkpoint again (see _catch_up).
            record["latest_checkpoint"] = {"path": self._uri(checkpoint.path), "metrics": {
                key: result[key] for key in (*C.REPORT_KEYS, self.metric, "training_iteration", "time_total_s")
                if key in result}}
            self._write(record)

        def _checkpointed(self, record: dict[str, Any], result: dict[str, Any], path: str) -> None:
            """A checkpoint was kept for the last report: is it the trial's best?"""
            record["checkpoint_step"] = result.get(C.STEP)  # where a resume of this trial goes on from
            value = record.pop("pending_value", None)
            if value is not None and math.isfinite(value) and (
                    record["best_metric"] is None or self.sign * value < self.sign * record["best_metric"]):
                record.update(best_metric=value, best_eval_loss=result.get(C.EVAL_LOSS),
                              best_step=result.get(C.STEP), best_checkpoint=path)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._finish(trial, classify(trial.last_result, error=False), trials)

        def on_trial_recover(self, iteration, trials, trial, **info):
            """The trial crashed and Tune restarts it from its latest checkpoint."""
            record = self._record(trial)
            record["retries"] = record.get("retries", 0) + 1
            record["awaiting_start"] = True
            record.setdefault("crashes", []).append(_error_text(trial))
            self._write(record)
            self.say(f"trial {trial.trial_id}: crashed ({record['crashes'][-1]}); retry {record['retries']} of "
                     f"{self.max_failures}, from its latest checkpoint")
            if self.tracker is not None:
                self.tracker.trial_retried(trial.trial_id)

        def on_trial_error(self, iteration, trials, trial, **info):
            record = self._record(trial)
            record["error"] = _error_text(trial)
            self._finish(trial, C.FAILED, trials)

        def _restarted(self, record: dict[str, Any], start_step: int) -> None:
            """The first report after a crash or a driver resume says where the trial went on from;
            step 0 (it had no checkpoint yet) is said in the leaderboard."""
            record.setdefault("resumed_from_steps", []).append(start_step)
            if start_step == 0:
                record["restarted_from_step_0"] = record.get("restarted_from_step_0", 0) + 1

        def _finish(self, trial, status: str, trials) -> None:
            record = self._record(trial)
            if record["status"] not in C.UNFINISHED:
                return  # ended before the driver died; Tune's snapshot was older
            record["status"] = status
            record.pop("awaiting_start", None)
            record["ended_at"] = time.time()
            record.pop("pending_value", None)
            self._prune(record)
            self._write(record)
            self._keep_best()
            self.say(self._progress(trial.trial_id, record, trials))
            if self.tracker is not None:
                self.tracker.trial_ended(record)

        def _prune(self, record: dict[str, Any]) -> None:
            """An ended trial keeps its best checkpoint only (none if it cannot be promoted): Tune
            also keeps the latest one while a trial runs, for resume."""
            best = record["best_checkpoint"] if record["status"] in C.PROMOTABLE else None
            folders = {self._uri(record["trial_dir"])}
            if record["best_checkpoint"]:
                folders.add(record["best_checkpoint"].rstrip("/").rsplit("/", 1)[0])
            for folder in folders:
                for checkpoint in storage.subdirs(folder, "checkpoint_"):
                    if checkpoint.rstrip("/") != (best or "").rstrip("/"):
                        storage.remove(checkpoint)
            if record["best_checkpoint"] and best is None:
                record["checkpoint_deleted"] = True

        def _keep_best(self) -> None:
            """Sweep-wide, `keep_best` checkpoints (and the baseline trial's, which the final evaluation
            scores beside the winner): one that `keep_best` ended trials already beat can never be among
            them again, so it goes."""
            from tuner import results  # results reads this module's layout

            baseline = results.baseline_record(list(self.records.values()), self.baseline)
            ended = sorted((r for r in self.records.values() if r["status"] in C.PROMOTABLE and r is not baseline
                            and r["best_checkpoint"] and r["best_metric"] is not None
                            and math.isfinite(r["best_metric"]) and not r.get("checkpoint_deleted")),
                           key=lambda r: self.sign * r["best_metric"])
            for record in ended[self.keep_best:]:
                storage.remove(record["best_checkpoint"])
                record["checkpoint_deleted"] = True
                self._write(record)

        def _progress(self, trial_id: str, record: dict[str, Any], trials) -> str:
            done = [r for r in self.records.values() if r["status"] not in C.UNFINISHED]
            stopped = sum(r["status"] == C.STOPPED_ASHA for r in done)
            running = sum(t.status == "RUNNING" for t in trials) - 1
            best = [r for r in self.records.values() if r["best_metric"] is not None]
            top = min(best, key=lambda r: self.sign * r["best_metric"]) if best else None
            rung = f" at {record['rung']} tokens" if record["status"] == C.STOPPED_ASHA else ""
            best_text = f"best {self.metric} {top['best_metric']:.4f} ({top['trial_id']})" if top else "no best yet"
            return (f"trial {trial_id}: {record['status']}{rung}, {record['reports']} reports | "
                    f"{len(done)}/{self.plan.num_samples} finished ({stopped} stopped by ASHA), "
                    f"{max(running, 0)} running, {best_text}")

    return TrialLedger


def _scheduler_state(scheduler) -> bytes | None:
    """The scheduler's state through its own save (ASHA has one; FIFO keeps none)."""
    import tempfile

    from ray.tune.schedulers import TrialScheduler

    if scheduler is None or type(scheduler).save is TrialScheduler.save:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        scheduler.save(os.path.join(tmp, "scheduler.pkl"))
        return Path(tmp, "scheduler.pkl").read_bytes()


def _restore_scheduler(scheduler, saved: bytes | None) -> None:
    import tempfile

    if scheduler is None or saved is None:
        return
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "scheduler.pkl").write_bytes(saved)
        scheduler.restore(os.path.join(tmp, "scheduler.pkl"))


def _checkpoint_index(path: str) -> int:
    """Tune numbers a trial's checkpoints checkpoint_000000, checkpoint_000001, … in order."""
    name = path.rstrip("/").rsplit("/", 1)[-1]
    digits = name.rsplit("_", 1)[-1]
    return int(digits) if digits.isdigit() else -1


def _error_text(trial) -> str:
    error_file = getattr(trial, "error_file", None)
    if error_file and os.path.exists(error_file):
        lines = [line for line in Path(error_file).read_text().splitlines() if line.strip()]
        return lines[-1] if lines else "unknown error"
    return str(getattr(trial, "error_msg", None) or "unknown error")


# ---------------------------------------------------------------------------------------------
# Running.


def init_ray(address: str | None) -> bool:
    """Start a private local Ray runtime, or attach to `address`. Returns whether we started one."""
    import ray

    if ray.is_initialized():
        return False
    # "local" never joins another cluster that happens to run on this machine; its dashboard is off,
    # and bound to this machine only were it turned on.
    local = {"include_dashboard": False, "dashboard_host": "127.0.0.1"} if address is None else {}
    ray.init(address=address or "local", log_to_driver=False, configure_logging=False, **local)
    return True


def _trainable(spec: Spec, ctx: TrialContext):
    """The Tune trainable with its resources: a single-process trial holds its CPUs and GPU share;
    a data-parallel trial's driver holds almost nothing, its Train workers hold the GPUs."""
    from ray import tune

    if cluster.workers(spec) > 1:
        from tuner.distributed import ddp_trainable

        ctx = replace(ctx, workers_have_cuda=cluster.workers_have_cuda())
        return tune.with_resources(tune.with_parameters(ddp_trainable, ctx=ctx), {"cpu": DRIVER_CPUS})
    return tune.with_resources(tune.with_parameters(tune_trainable, ctx=ctx),
                               {"cpu": spec.resources.cpus_per_trial, "gpu": spec.resources.gpus_per_trial})


def run_search(spec: Spec, ctx: TrialContext, plan: Plan, address: str | None = None,
               say: Callable[[str], None] = log.info, tracker=None,
               experiment: Experiment | None = None) -> bool:
    """Run one Tune experiment of the sweep to its end (all its trials, the time budget, or Ctrl-C).

    A restored experiment picks up from Tune's last snapshot: its finished trials stay finished,
    its running ones go on from their latest checkpoints, Optuna's and ASHA's state come back.
    Returns whether every trial ended by itself (not cut by the time budget or Ctrl-C).
    """
    import ray
    from ray import tune

    import optuna

    experiment = experiment or Experiment(FIRST_EXPERIMENT, spec.search.num_samples)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name, value in QUIET_RAY.items():
        os.environ.setdefault(name, value)
    sweep_dir = spec.sweep_dir
    restore_study(sweep_dir, spec.location)
    started = init_ray(address)
    interrupted = False
    try:
        nodes = cluster.inspect()
        cluster.check(spec, nodes)
        cluster.probe_storage(spec.location, nodes)
        ctx = replace(ctx, driver_node=ray.get_runtime_context().get_node_id())
        limit = cluster.concurrency(spec, nodes)
        say(f"{nodes.describe()}\nconcurrent trials: {limit or 'as many as the CPUs allow'}")
        if experiment.restore:
            say(f"resuming Tune experiment {experiment.name} from its last snapshot")
        trainable = _trainable(spec, ctx)
        budget = parse_duration(spec.search.time_budget) if spec.search.time_budget else None
        scheduler = _scheduler(spec, plan)
        first = experiment.name == FIRST_EXPERIMENT
        ledger = _ledger_class()(spec, plan, say, tracker, experiment.name, scheduler, experiment.restore)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=_searcher(spec, sweep_dir, first and not experiment.restore), scheduler=scheduler,
                num_samples=experiment.num_samples,
                max_concurrent_trials=limit, time_budget_s=budget,
                reuse_actors=True, trial_dirname_creator=lambda trial: trial.trial_id),
            run_config=tune.RunConfig(
                name=experiment.name, storage_path=spec.location, verbose=0,
                failure_config=tune.FailureConfig(max_failures=spec.search.max_failures),
                checkpoint_config=tune.CheckpointConfig(
                    num_to_keep=1, checkpoint_score_attribute=spec.search.metric,
                    checkpoint_score_order=spec.search.mode),
                callbacks=[ledger]),
            # Tuner.restore would bring back the pickled callbacks and scheduler of the dead driver;
            # this restores Tune's snapshot into the ones built here (Tune's own resume path).
            _tuner_kwargs={"resume_config": tune.ResumeConfig()} if experiment.restore else None,
        )
        try:
            tuner.fit()
        except KeyboardInterrupt:
            interrupted = True
            say("interrupted: stopping the running trials; the best so far is promoted")
        closed = close_unfinished(sweep_dir, spec.name)
        copy_study_to_storage(sweep_dir, spec.location)
    finally:
        if started:
            ray.shutdown()
    return not interrupted and not closed


def restore_study(sweep_dir: Path, location: str) -> None:
    """The live study lives on the driver's disk: a driver on another machine starts from the copy
    the sweep directory (or its bucket) holds."""
    local = storage.local_study(sweep_dir)
    if local.exists():
        return
    remote = storage.join(location, STUDY_DB)
    if storage.is_uri(location) and storage.exists(remote):
        storage.download(remote, sweep_dir / STUDY_DB)
    if (sweep_dir / STUDY_DB).exists():
        storage.copy_study(sweep_dir / STUDY_DB, local)


def copy_study_to_storage(sweep_dir: Path, location: str) -> None:
    """A consistent copy of the live study into the sweep directory and, for a bucket, the bucket."""
    copy = sweep_dir / STUDY_DB
    storage.copy_study(storage.local_study(sweep_dir), copy)
    if copy.exists() and storage.is_uri(location):
        storage.upload(copy, storage.join(location, STUDY_DB))


def close_unfinished(sweep_dir: Path, study_name: str) -> int:
    """Trials the time budget or Ctrl-C cut short: `stopped_budget` in the ledger, and in Optuna
    PRUNED (they have intermediate values) or FAIL (they never reported). Returns how many."""
    import optuna

    closed = 0
    for path in sorted((sweep_dir / TRIALS_DIR).glob("*.json")):
        record = json.loads(path.read_text())
        if record["status"] in C.UNFINISHED:
            record["status"] = C.STOPPED_BUDGET
            record.pop("pending_value", None)
            record.pop("awaiting_start", None)
            path.write_text(json.dumps(record, indent=1, default=str))
            closed += 1
    local = storage.local_study(sweep_dir)
    if not local.exists():
        return closed
    study = optuna.load_study(study_name=study_name, storage=f"sqlite:///{local}")
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if "ray_trial_id" not in trial.user_attrs:
            continue
        state = optuna.trial.TrialState.PRUNED if trial.intermediate_values else optuna.trial.TrialState.FAIL
        study.tell(trial.number, state=state)
    return closed
