"""The ledger: a Tune callback that keeps one record per trial on disk as the sweep goes.

It also holds the driver's watch over running trials: a trial past `search.trial_timeout` or
silent past `search.stall_timeout` is ended here (its actor killed, so its GPU is freed), and on a
restored experiment it reconciles Tune's snapshot, which lags, with the records, which do not.
Imported by the driver only (it imports Ray).
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

from ray import tune

from tuner import constants as C
from tuner import layout, pareto, records, results, retention, storage, tune_hooks
from tuner.deadline import Deadlines
from tuner.errors import UserError
from tuner.interrupt import Interrupt, format_seconds
from tuner.mirror import Mirror
from tuner.plan import Plan
from tuner.records import TrialRecord
from tuner.restore import Snapshot
from tuner.searcher import classify
from tuner.spec import Spec, parse_duration
from tuner.trainable import CHECKPOINT_PATH

log = logging.getLogger("tuner")
RESTORE_KEYS = ("training_iteration", "time_total_s")  # what Tune restores a trial's counters from


LEADERBOARD_EVERY = 2.0  # seconds between two writes of the live leaderboard


class TrialLedger(tune.Callback):
    """Keeps `trials/<trial_id>.json` current and prints the sweep's progress.

    Tune marks a result `done` when the scheduler stops the trial; a trial's own last report carries
    `final_report`. A `done` result without it was stopped by ASHA: the ledger writes that into the
    result itself, so the searcher reads the same status.
    """

    def __init__(self, spec: Spec, plan: Plan, say: Callable[[str], None], sweep_id: str, tracker=None,
                 experiment: str = layout.FIRST_EXPERIMENT, scheduler=None, restored: bool = False,
                 mirror: Mirror | None = None, snapshot: Snapshot | None = None,
                 interrupt: Interrupt | None = None):
        self.sweep_dir, self.location = spec.sweep_dir, spec.location
        self.scheme = storage.scheme(spec.location)
        self.plan, self.metric, self.mode = plan, spec.search.metric, spec.search.mode
        self.objectives = pareto.objectives(spec)  # several (search.metrics): the front keeps its checkpoints
        self.max_failures = spec.search.max_failures
        # promote.top_k re-evaluates that many checkpoints, and the baseline trial's is evaluated too
        self.keep_best = max(spec.promote.keep_best, spec.promote.top_k)
        self.baseline = spec.search.baseline
        self.say, self.tracker = say, tracker  # tracking.Tracker: the trial's W&B run follows its record
        self.experiment, self.scheduler = experiment, scheduler
        self.restored = restored  # this run restores an experiment whose driver died
        self.snapshot = snapshot  # restore.Snapshot: what Tune's snapshot held, read before Tune read it
        self.mirror = mirror or Mirror(self.sweep_dir, self.location, sweep_id)
        records.folder(self.sweep_dir).mkdir(parents=True, exist_ok=True)
        # Every trial of the sweep (earlier experiments and drivers too): progress and keep_best are
        # sweep-wide.
        self.records = {r.trial_id: r for r in records.load_all(self.sweep_dir, self.location)}
        self.lost: list[TrialRecord] = []  # set aside at this restore: their successors go on from them
        self.started: set[str] = set()  # trials started by this driver
        timeouts = [parse_duration(v) if v is not None else None
                    for v in (spec.search.trial_timeout, spec.search.stall_timeout)]
        self.deadlines = Deadlines(*timeouts)
        self.verdicts: dict[str, tuple[str, str]] = {}  # trials the driver ended: status, why
        self.interrupt = interrupt  # Ctrl-C / SIGTERM: wind down at the running trials' next checkpoints
        self.waiting: set[str] | None = None  # running trials yet to checkpoint since the signal
        self.board_due, self.board_stale = 0.0, False  # the live leaderboard: when next, and whether behind

    # -- Tune's snapshot carries ASHA's state (Tune keeps no scheduler state of its own) --------

    def get_state(self) -> dict[str, Any]:
        """Saved by Tune with every experiment snapshot: ASHA's rungs, so a restored sweep stops
        trials against the same cutoffs. The study's copy goes to storage at the same time."""
        self.mirror.snapshot()
        return {"scheduler": tune_hooks.scheduler_state(self.scheduler)}

    def set_state(self, state: dict[str, Any]) -> None:
        tune_hooks.restore_scheduler(self.scheduler, state.get("scheduler"))

    # -- each step: a restore's reconciliation, the clock on running trials, the bucket --------

    def on_step_begin(self, iteration, trials, **info):
        if self.restored:
            self.restored = False
            self._reconcile(trials)
        now = time.monotonic()
        for trial_id, status, why in self.deadlines.overdue(now):
            trial = next((t for t in trials if t.trial_id == trial_id), None)
            if trial is not None:
                self._cut_off(trial, status, why, now)
        if self.interrupt is not None and self.interrupt.requested:
            self._wind_down(trials, self.interrupt)
        if self.board_stale:
            self._write_leaderboard()
        self.mirror.tick()

    def on_experiment_end(self, trials, **info):
        if self.board_stale:
            self._write_leaderboard(now=math.inf)

    def _wind_down(self, trials, interrupt: Interrupt) -> None:
        """After the first Ctrl-C or SIGTERM: once every trial that was running has saved a checkpoint
        (or ended), or the bounded wait is over, end Tune's loop with its snapshot saved."""
        running = {t.trial_id for t in trials if t.status == "RUNNING"}
        if self.waiting is None:
            self.waiting = running
            if running:
                self.say(f"waiting for {len(running)} running trial(s) to checkpoint: {', '.join(sorted(running))}")
        self.waiting &= running
        if self.waiting and not interrupt.overdue():
            return
        if self.waiting:
            self.say(f"after {format_seconds(interrupt.wait_s)}, {', '.join(sorted(self.waiting))} had not "
                     "checkpointed; they go on from their latest checkpoints at `resume`")
        self.waiting = set()
        self.interrupt = None  # once
        tune_hooks.end_experiment()

    def _reconcile(self, trials) -> None:
        """On the first step of a restored experiment, before any trial starts: bring each restored
        trial up to the latest checkpoint its record holds, and set aside the records of unfinished
        trials that Tune's snapshot does not hold (the dead driver started them after it: their
        configurations run again, going on from their checkpoints). A finished record is never
        moved. Tune starts a new experiment without a word when it cannot restore its snapshot:
        that is refused here, before any trial starts."""
        if self.snapshot is not None and self.snapshot.trial_ids and not {t.trial_id for t in trials}:
            raise UserError(f"{self.snapshot.path}: Ray Tune could not restore this snapshot (its error is logged "
                            "above) and would start the experiment anew; run `tuner resume SWEEP_DIR "
                            "--restart-search` to go on without it, keeping every finished trial")
        for trial in trials:
            record = self.records.get(trial.trial_id)
            if record is not None and record.ended:  # it only repeats how it ended: nothing to restore
                tune_hooks.forget_checkpoints(trial)
            elif record is not None and record.latest_checkpoint:
                if tune_hooks.catch_up(trial, record.latest_checkpoint, self.location):
                    log.info("trial %s: Tune's last snapshot predates its checkpoint at step %s; it goes on from "
                             "that one", trial.trial_id, record.checkpoint_step)
        known = {t.trial_id for t in trials}
        for record in list(self.records.values()):
            if record.experiment != self.experiment or record.trial_id in known or record.ended:
                continue
            records.set_aside(record, self.sweep_dir)
            self.mirror.record_changed(record.trial_id)
            del self.records[record.trial_id]
            self.lost.append(record)
            self.say(f"trial {record.trial_id}: started after the dead driver's last snapshot; its configuration "
                     "runs again as a new trial" + (f", from its checkpoint at step {record.checkpoint_step}"
                                                    if record.latest_checkpoint else ""))

    def _cut_off(self, trial, status: str, why: str, now: float) -> None:
        """End a trial the clock says is over: kill its actor (a hung trial frees its GPU only with
        its process), with no retry; Tune reports it failed, and the ledger records `status`."""
        self.deadlines.stop(trial.trial_id, now)
        self.verdicts[trial.trial_id] = (status, why)
        self.say(f"trial {trial.trial_id}: {why}; ended as {status}")
        tune_hooks.end_now(trial)

    # -- records ---------------------------------------------------------------------------------

    def _record(self, trial) -> TrialRecord:
        if trial.trial_id not in self.records:
            path = records.path_of(self.sweep_dir, trial.trial_id)
            self.records[trial.trial_id] = (records.load(path, self.location, self.sweep_dir) if path.exists() else
                                            TrialRecord(
                trial_id=trial.trial_id, experiment=self.experiment, params=dict(trial.config),
                log_file=layout.relative(self.sweep_dir / layout.LOGS_DIR / f"{trial.trial_id}.log", self.sweep_dir),
                trial_dir=layout.relative(self._uri(str(trial.path)), self.location)))
        return self.records[trial.trial_id]

    def _write(self, record: TrialRecord) -> None:
        records.save(record, self.sweep_dir)
        self.mirror.record_changed(record.trial_id)

    def _uri(self, path: str) -> str:
        """Ray gives checkpoint paths without the bucket's scheme."""
        return f"{self.scheme}://{path}" if self.scheme and "://" not in path else path

    def _stored(self, path: str) -> str:
        return layout.relative(self._uri(path), self.location)

    def on_trial_start(self, iteration, trials, trial, **info):
        record = self._record(trial)
        if record.ended:
            return  # ended after the dead driver's last snapshot: the trainable returns at once
        new = trial.trial_id not in self.started
        if record.status == C.RUNNING and new:
            record.awaiting_start = True  # running when the driver died: resumed now
            record.resumes += 1
        elif record.status == C.PENDING and new and not record.history:
            self._continue_lost(trial, record)
        self.started.add(trial.trial_id)
        record.status = C.RUNNING
        record.started_at = record.started_at or time.time()
        self.deadlines.start(trial.trial_id, record.run_seconds, time.monotonic())
        self._write(record)
        if self.tracker is not None:
            self.tracker.trial_started(trial.trial_id, dict(trial.config))

    def _continue_lost(self, trial, record: TrialRecord) -> None:
        """A new trial running the configuration of a trial lost at this restore goes on from the
        lost one's latest checkpoint: its reports up to there become this trial's."""
        lost = next((r for r in self.lost if r.latest_checkpoint and records.same_params(record.params, r.params)
                     and records.same_params(r.params, record.params)), None)
        if lost is None or lost.latest_checkpoint is None \
                or not tune_hooks.register(trial, lost.latest_checkpoint, self.location):
            return
        self.lost.remove(lost)
        step = lost.checkpoint_step or 0
        record.continues = lost.trial_id
        record.history = [h for h in lost.history if (h.get(C.STEP) or 0) <= step]
        record.reports = len(record.history)
        record.run_seconds = lost.run_seconds
        if lost.best_step is not None and lost.best_step <= step and not lost.checkpoint_deleted:
            record.best_metric, record.best_eval_loss = lost.best_metric, lost.best_eval_loss
            record.best_step, record.best_checkpoint = lost.best_step, lost.best_checkpoint
            record.best_checkpoint_metric, record.best_checkpoint_step = (lost.best_checkpoint_metric,
                                                                          lost.best_checkpoint_step)
        record.awaiting_start = True
        self.say(f"trial {trial.trial_id}: goes on from lost trial {lost.trial_id}'s checkpoint at step {step}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        record = self._record(trial)
        if record.ended:
            return  # a trial that had ended before the driver died, repeating its last report
        self.deadlines.reported(trial.trial_id, time.monotonic())
        if C.START_STEP in result and record.awaiting_start:
            record.awaiting_start = False
            self._restarted(record, int(result[C.START_STEP]))
        if result.get("done") and not result.get(C.FINAL):
            tokens = result[C.TOKENS_SEEN]
            if self.plan.max_t is not None and tokens >= self.plan.max_t:
                result[C.TRIAL_STATUS] = C.COMPLETED
            else:
                result[C.TRIAL_STATUS] = C.STOPPED_ASHA
                record.rung = max([r for r in self.plan.rungs if r <= tokens], default=None)
        value = result.get(self.metric)
        # A retried trial redoes the steps after its last persisted checkpoint: a report it had
        # already made before the crash is not counted twice.
        redone = bool(record.history) and result.get(C.STEP, 0) <= record.history[-1][C.STEP]
        if result.get(C.TRIAL_STATUS) not in C.ABORTED and not result.get(C.REPEAT) and not redone:
            record.reports += 1
            record.history.append({**{k: result.get(k) for k in C.REPORT_KEYS}, **added_metrics(result),
                                   "reported_at": time.time()})
            if records.better(value, record.best_metric, self.mode):  # with a checkpoint or not
                record.best_metric, record.best_eval_loss = value, result.get(C.EVAL_LOSS)
                record.best_step = result.get(C.STEP)
            if self.tracker is not None:
                self.tracker.trial_reported(trial.trial_id, result)
        record.node_id, record.gpu_ids = result.get(C.NODE_ID), result.get(C.GPU_IDS)
        if result.get(C.TRIAL_ERROR):  # a trial that failed itself (a bad metric_fn) says why
            record.error = str(result[C.TRIAL_ERROR])
        for key in (C.MICRO_BATCH, C.ACCUMULATION):  # what it trained with (an OOM halves the batch)
            if result.get(key) is not None:
                setattr(record, key, result[key])
        record.tokens_seen = int(result.get(C.TOKENS_SEEN, 0))
        if any(key in result for key in C.TIME_KEYS):  # this run's time so far, by part
            record.timing = {key: round(float(result.get(key, 0.0)), 3) for key in C.TIME_KEYS}
        record.train_seconds = float(result.get("time_total_s", 0.0))
        record.run_seconds = self.deadlines.ran(trial.trial_id, time.monotonic()) or record.run_seconds
        record.pending_value = value
        if result.get(CHECKPOINT_PATH):  # a data-parallel trial: Train stored the checkpoint
            self._checkpointed(record, result, self._stored(result[CHECKPOINT_PATH]))
            if self.waiting:
                self.waiting.discard(trial.trial_id)
        self._write(record)

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        record = self._record(trial)
        result, path = trial.last_result, self._stored(checkpoint.path)
        self._checkpointed(record, result, path)
        if self.waiting:
            self.waiting.discard(trial.trial_id)
        # What a restore needs to register this checkpoint again (see tune_hooks.catch_up).
        record.latest_checkpoint = {"path": path, "metrics": {
            key: result[key] for key in (*C.REPORT_KEYS, self.metric, *RESTORE_KEYS) if key in result}}
        self._write(record)

    def _checkpointed(self, record: TrialRecord, result: dict[str, Any], path: str) -> None:
        """A checkpoint was kept for the last report: is it the trial's best checkpoint? (The best
        report is tracked at every report, checkpoint or not: only promotion needs one.)"""
        record.checkpoint_step = result.get(C.STEP)  # where a resume of this trial goes on from
        value, record.pending_value = record.pending_value, None
        # As good as the best is enough: of two equal scores Tune keeps the newer checkpoint and deletes
        # the older (ties are common with a generation metric: a ROUGE of 0 at several reports).
        if records.finite(value) and not records.better(records.checkpoint_metric(record), value, self.mode):
            record.best_checkpoint, record.best_checkpoint_metric = path, value
            record.best_checkpoint_step = result.get(C.STEP)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finish(trial, classify(trial.last_result, error=False), trials)

    def on_trial_recover(self, iteration, trials, trial, **info):
        """The trial crashed and Tune restarts it from its latest checkpoint."""
        record = self._record(trial)
        if record.ended:
            return  # ended before the driver died: its record is never rewritten
        record.run_seconds = self.deadlines.stop(trial.trial_id, time.monotonic()) or record.run_seconds
        record.retries += 1
        record.awaiting_start = True
        record.crashes.append(_error_text(trial))
        self._write(record)
        self.say(f"trial {trial.trial_id}: crashed ({record.crashes[-1]}); retry {record.retries} of "
                 f"{self.max_failures}, from its latest checkpoint")
        if self.tracker is not None:
            self.tracker.trial_retried(trial.trial_id)

    def on_trial_error(self, iteration, trials, trial, **info):
        record = self._record(trial)
        if record.ended:
            return  # ended before the driver died: its record is never rewritten
        status, why = self.verdicts.get(trial.trial_id, (C.FAILED, None))
        record.error = why or _error_text(trial)
        self._finish(trial, status, trials)

    def _restarted(self, record: TrialRecord, start_step: int) -> None:
        """The first report after a crash or a driver resume says where the trial went on from;
        step 0 (it had no checkpoint yet) is said in the leaderboard."""
        record.resumed_from_steps.append(start_step)
        if start_step == 0:
            record.restarted_from_step_0 += 1

    def _finish(self, trial, status: str, trials) -> None:
        record = self._record(trial)
        if record.ended:
            return  # ended before the driver died; Tune's snapshot was older
        record.run_seconds = self.deadlines.stop(trial.trial_id, time.monotonic()) or record.run_seconds
        record.status, record.awaiting_start, record.pending_value = status, False, None
        record.ended_at = time.time()
        retention.prune_ended(record, self.location, skip=self._continued_dirs(record))
        self._write(record)
        note_in_log(record, self.sweep_dir, end_line(record, self.plan))
        self._keep_best()
        self._write_leaderboard()
        self.say(self._progress(trial.trial_id, record, trials))
        if self.tracker is not None:
            self.tracker.trial_ended(record)
        self.mirror.push()

    def _write_leaderboard(self, now: float | None = None) -> None:
        """The live leaderboard.csv, every LEADERBOARD_EVERY seconds at most (a trial end in between
        leaves it for the next step): it has a row per trial, so writing it at every trial's end grew
        with the sweep (at 1,000 trials, the most of a trial end's work). From the records in memory,
        without the study's columns, which the sweep's last leaderboard adds."""
        now = time.monotonic() if now is None else now
        if now < self.board_due:
            self.board_stale = True
            return
        results.write_csv(results.leaderboard(self.sweep_dir, self.mode, None, self.records.values(),
                                              self.objectives), self.sweep_dir / layout.LEADERBOARD)
        self.board_due, self.board_stale = time.monotonic() + LEADERBOARD_EVERY, False

    def _continued_dirs(self, record: TrialRecord) -> list[str]:
        """A lost trial's directory keeps what it holds (its data), even once continued."""
        if not record.continues or not record.best_checkpoint:
            return []
        folder = record.best_checkpoint.rstrip("/").rsplit("/", 1)[0]
        return [] if folder == (record.trial_dir or "").rstrip("/") else [folder]

    def _keep_best(self) -> None:
        """Sweep-wide, `keep_best` checkpoints (and the baseline trial's, which the final evaluation
        scores beside the winner): one that `keep_best` ended trials already beat can never be among
        them again, so it goes."""
        found = list(self.records.values())
        baseline = results.baseline_record(found, self.baseline)
        front = pareto.front_ids(found, self.objectives) if self.objectives else set()
        for record in retention.beyond_keep(found, self.keep_best, self.mode, baseline, front):
            retention.drop_checkpoint(record, self.location)
            self._write(record)

    def _progress(self, trial_id: str, record: TrialRecord, trials) -> str:
        done = [r for r in self.records.values() if r.ended]
        stopped = sum(r.status == C.STOPPED_ASHA for r in done)
        running = sum(t.status == "RUNNING" for t in trials) - 1
        top = records.best_of(self.records.values(), self.mode)
        rung = f" at {record.rung} tokens" if record.status == C.STOPPED_ASHA else ""
        best_text = f"best {self.metric} {top.best_metric:.4f} ({top.trial_id})" if top else "no best yet"
        return (f"trial {trial_id}: {record.status}{rung}, {record.reports} reports | "
                f"{len(done)}/{self.plan.num_samples} finished ({stopped} stopped by ASHA), "
                f"{max(running, 0)} running, {best_text}")


def added_metrics(result: dict[str, Any]) -> dict[str, float]:
    """A report's figures beyond the standard keys (generation metrics, a metric_fn's): kept in the
    history, so the report's curves and W&B can show the metric searched on."""
    return {k: v for k, v in result.items() if k.startswith(C.METRIC_PREFIX) and k not in C.REPORT_KEYS
            and isinstance(v, (int, float)) and not isinstance(v, bool)}


def _error_text(trial) -> str:
    error_file = getattr(trial, "error_file", None)
    if error_file and os.path.exists(error_file):
        lines = [line for line in Path(error_file).read_text().splitlines() if line.strip()]
        return lines[-1] if lines else "unknown error"
    return str(getattr(trial, "error_msg", None) or "unknown error")


ENDINGS = {
    C.COMPLETED: "completed",
    C.STOPPED_ASHA: "stopped early by ASHA",
    C.STOPPED_PATIENCE: "stopped: no improvement for train.patience reports",
    C.STOPPED_BUDGET: "stopped by the sweep's time budget",
    C.TIMED_OUT: "ended by the driver: past search.trial_timeout",
    C.STALLED: "ended by the driver: no report for search.stall_timeout",
}


def end_line(record: TrialRecord, plan: Plan) -> str:
    """The last line of a trial's log: how it ended, where, and (a stop is no crash) that it was one."""
    how = ENDINGS.get(record.status, f"ended as {record.status}")
    if record.status == C.STOPPED_ASHA and record.rung is not None and record.rung in plan.rungs:
        how += f" at rung {plan.rungs.index(record.rung) + 1} of {len(plan.rungs)} ({record.rung} tokens)"
    step = record.history[-1].get(C.STEP) if record.history else None
    where = f" after {record.reports} reports, {record.tokens_seen} tokens" + (f", step {step}" if step else "")
    why = f": {record.error}" if record.error and record.status not in ENDINGS else ""
    return f"tuner: trial {record.trial_id} {how}{where}{why}"


def note_in_log(record: TrialRecord, sweep_dir: Path, line: str) -> None:
    """Append one line to the trial's log, where this machine holds it (a trial on another node
    writes its log there)."""
    if not record.log_file:
        return
    path = Path(layout.resolve(record.log_file, str(Path(sweep_dir).resolve())))
    if path.is_file():
        with open(path, "a", encoding="utf-8") as file:
            file.write(line + "\n")
