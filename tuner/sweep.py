"""The driver loop: one Ray Tune experiment of the sweep, its trials sampled by Optuna and stopped
early by ASHA, run to its end.

The parts have their own modules: the plan (`plan`), the searcher (`searcher`), the ledger of
trial records (`ledger`), the function each trial runs (`trainable`). This one connects Ray and
runs the `Tuner`. Imported by the driver only.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import replace
from typing import Callable

import optuna
import ray
from ray import tune
from ray.tune.schedulers import FIFOScheduler

from tuner import cluster, logs, records, searcher, study, trainable, tune_hooks
from tuner import constants as C
from tuner.context import TrialContext
from tuner.errors import UserError, first_line
from tuner.interrupt import Interrupt, Interrupted, catching
from tuner.layout import FIRST_EXPERIMENT
from tuner.ledger import TrialLedger, end_line, note_in_log
from tuner.mirror import Mirror
from tuner.plan import Plan
from tuner.restore import Snapshot
from tuner.schedulers import BaselineASHA
from tuner.spec import Spec, parse_duration
from tuner.state import Experiment

log = logging.getLogger("tuner")
# Our own progress lines replace Tune's tables; its snapshot warnings are about its own bookkeeping.
# Ctrl-C is the driver's own (see `interrupt`): Tune's handler would end the trials without their checkpoints.
QUIET_RAY = {"RAY_AIR_NEW_OUTPUT": "0", "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
             "TUNE_DISABLE_SIGINT_HANDLER": "1"}
CONNECT_TIMEOUT_S = 10.0  # how long `--address` may take to answer before the sweep gives up


def init_ray(address: str | None) -> bool:
    """Start a private local Ray runtime, or attach to `address`. Returns whether we started one.
    A cluster that cannot be reached is refused (exit 2) within seconds, never waited on."""
    logs.adopt_libraries()  # Ray's own terminal handler: its notices go where ours say
    if address is not None:
        check_reachable(address)  # even where this process has Ray running: the address is wrong
    if ray.is_initialized():
        return False
    if address is None:
        # "local" never joins another cluster that happens to run on this machine; its dashboard is
        # off, and bound to this machine only were it turned on.
        ray.init(address="local", log_to_driver=False, configure_logging=False, include_dashboard=False,
                 dashboard_host="127.0.0.1")
        return True
    try:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UserError(f"--address {address}: no Ray cluster to attach to ({first_line(exc)}); start one with "
                        "`ray start --head`, fix the address, or drop --address to run on this machine") from None
    return True


def check_reachable(address: str) -> None:
    """A `host:port` address must answer within CONNECT_TIMEOUT_S: Ray would retry for minutes."""
    if address == "auto" or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except ValueError:
        raise UserError(f"--address {address}: expected host:port (e.g. 10.0.0.1:6379) or auto") from None
    except OSError as exc:
        raise UserError(f"--address {address}: cannot reach a Ray cluster there ({exc.strerror or exc}); start "
                        "one with `ray start --head`, fix the address, or drop --address to run on this "
                        "machine") from None


def make_scheduler(spec: Spec, plan: Plan):
    """ASHA on tokens seen, the baseline trial exempt from its early stops (see `schedulers`)."""
    if spec.scheduler.type == "none":
        return FIFOScheduler()
    if plan.max_t is None:  # not reached: the sweep plans once the train split is known
        raise ValueError("make_scheduler: the plan has no max_t yet")
    return BaselineASHA(spec.search.baseline, time_attr=C.TIME_ATTR, metric=spec.search.metric,
                        mode=spec.search.mode, max_t=plan.max_t, grace_period=plan.grace_period,
                        reduction_factor=plan.reduction_factor)


def run_search(spec: Spec, ctx: TrialContext, plan: Plan, sweep_id: str, address: str | None = None,
               say: Callable[[str], None] = log.info, tracker=None, experiment: Experiment | None = None,
               snapshot: Snapshot | None = None) -> bool:
    """Run one Tune experiment of the sweep to its end (all its trials, the time budget, or Ctrl-C).

    A restored experiment picks up from Tune's last snapshot: its finished trials stay finished,
    its running ones go on from their latest checkpoints, Optuna's and ASHA's state come back;
    `snapshot` (see `restore.plan`) is what Tune's snapshot holds and how many trials its search may
    hold in all. Returns whether every trial ended by itself (not cut by the time budget). Ctrl-C
    or SIGTERM raise `Interrupted` once the experiment is saved, its trials left to resume.
    """
    experiment = experiment or Experiment(FIRST_EXPERIMENT, spec.search.num_samples)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name, value in QUIET_RAY.items():
        os.environ.setdefault(name, value)
    sweep_dir = spec.sweep_dir
    live = study.restore(sweep_dir, spec.location, sweep_id)
    started = init_ray(address)
    tune_hooks.keep_credentials_out_of_runtime_env()
    tune_hooks.snapshot_on_schedule()
    stop_wait = parse_duration(spec.search.stop_wait)
    assert stop_wait is not None  # validation refuses a search.stop_wait that is no duration
    interrupt = Interrupt(stop_wait, say)
    mirror = Mirror(sweep_dir, spec.location, sweep_id)
    try:
        nodes = cluster.inspect()
        cluster.check(spec, nodes)
        cluster.probe_storage(spec.location, nodes)
        ctx = replace(ctx, driver_node=ray.get_runtime_context().get_node_id())
        concurrency = cluster.concurrency(spec, nodes)
        say(f"{nodes.describe()}\nconcurrent trials: {concurrency or 'as many as the CPUs allow'}")
        if experiment.restore:
            say(f"resuming Tune experiment {experiment.name} from its last snapshot")
        scheduler = make_scheduler(spec, plan)
        first = experiment.name == FIRST_EXPERIMENT and not experiment.restore
        ledger = TrialLedger(spec, plan, say, sweep_id, tracker, experiment.name, scheduler,
                             restored=experiment.restore, mirror=mirror, snapshot=snapshot, interrupt=interrupt)
        ledger.lost += unclaimed_lost(sweep_dir, ledger.records.values())
        mirror.push_all()
        search = searcher.make(spec, live, sweep_id, queue_baseline=first,
                               limit=snapshot.limit if snapshot else None, concurrency=concurrency,
                               interrupt=interrupt)
        tuner = tune.Tuner(
            trainable.make(spec, ctx),
            tune_config=tune.TuneConfig(
                search_alg=search, scheduler=scheduler, num_samples=experiment.num_samples,
                # a search limits its own concurrency; a fixed config's trials are limited by Tune
                max_concurrent_trials=None if search else concurrency, reuse_actors=True,
                time_budget_s=parse_duration(spec.search.time_budget) if spec.search.time_budget else None,
                trial_dirname_creator=lambda trial: trial.trial_id),
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
        why: str | None
        try:
            with catching(interrupt):
                tuner.fit()
        except KeyboardInterrupt:  # a second Ctrl-C: the trials are ended where they are
            why = "stopped at once; the running trials go on from their latest checkpoints"
        else:
            why = "the running trials checkpointed and the sweep was saved" if interrupt.requested else None
        if why is None:
            return not close_unfinished(spec, sweep_id, mirror, plan)
        mirror.mark_all()
        mirror.snapshot()
    finally:
        if started:
            ray.shutdown()
    note_paused(spec, interrupt.signal_name or "SIGINT")  # once the trials' processes are gone
    raise Interrupted(why, sweep_dir)


def note_paused(spec: Spec, signal_name: str) -> None:
    """End the log of each trial a signal paused with where `resume` goes on from."""
    for record in records.load_all(spec.sweep_dir, spec.location):
        if record.status == C.RUNNING:
            at = f"its checkpoint at step {record.checkpoint_step}" if record.checkpoint_step else "step 0"
            note_in_log(record, spec.sweep_dir, f"tuner: trial {record.trial_id} paused by {signal_name}; "
                        f"`tuner resume` goes on from {at}")


def unclaimed_lost(sweep_dir, found) -> list[records.TrialRecord]:
    """Lost trials no trial has gone on from yet (a driver died before their successors started).
    A successor lost in turn still claims the one it went on from: else the configuration's oldest
    checkpoint, which its successors' Tune may have deleted since, would be taken over its newest."""
    lost = records.load_lost(sweep_dir)
    claimed = {r.continues for r in [*found, *lost] if r.continues}
    return [r for r in lost if r.trial_id not in claimed and r.latest_checkpoint]


def close_unfinished(spec: Spec, sweep_id: str, mirror: Mirror, plan: Plan) -> int:
    """Trials the time budget cut short: `stopped_budget` in the ledger, and in Optuna
    PRUNED (they have intermediate values) or FAIL (they never reported). Returns how many."""
    closed = 0
    for record in records.load_all(spec.sweep_dir, spec.location):
        if not record.ended:
            record.status, record.pending_value, record.awaiting_start = C.STOPPED_BUDGET, None, False
            records.save(record, spec.sweep_dir)
            note_in_log(record, spec.sweep_dir, end_line(record, plan))
            mirror.record_changed(record.trial_id)
            closed += 1
    study.close_running(study.live_path(spec.sweep_dir, sweep_id), spec.name)
    mirror.mark_all()
    mirror.snapshot()
    return closed
