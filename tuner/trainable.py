"""The function Tune runs for each trial: on one process, or data-parallel on several GPUs.

A thin wrapper around the Ray-free training core in `trial`: Tune's checkpoint in, Tune's `report`
out. A data-parallel trial follows Ray's Train-inside-Tune pattern (Train V2): the Tune trial is a
light driver that starts a `TorchTrainer`; each Train worker runs the same training core (the HF
`Trainer` under DDP), and rank 0's reports reach Tune through `TuneReportCallback` with the
checkpoint's path. Train keeps those checkpoints, retries failed workers from the latest one and
resumes a restarted trial from its own storage. Imported where Ray runs only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any

import ray
from ray import tune

from tuner import cluster, layout, secret, storage
from tuner import constants as C
from tuner.context import TrialContext
from tuner.spec import Spec
from tuner.user_trial import run_user_trial

CHECKPOINT_PATH = "checkpoint_path"  # the key TuneReportCallback gives a reported checkpoint
DRIVER_CPUS = 0.1  # what the Tune driver of a data-parallel trial holds; its workers hold the rest
REPORT_FILE = ".tuner_report.json"  # in a user trial's checkpoint: the report it came with


def tune_trainable(config: dict[str, Any], ctx: TrialContext) -> None:
    """One single-process trial under Tune. A user's loop never imports the Trainer."""
    where = placement_keys([placement()])

    def report(metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        with _checkpoint_for_tune(checkpoint_dir, metrics, ctx.trial_fn is not None) as directory:
            checkpoint = tune.Checkpoint.from_directory(directory) if directory else None
            tune.report({**metrics, **where}, checkpoint=checkpoint)

    if repeat_if_ended(ctx):
        return
    trial_id = tune.get_context().get_trial_id()
    ctx = on_this_node(ctx)
    checkpoint = tune.get_checkpoint()
    with trial_log(ctx.spec.sweep_dir / layout.LOGS_DIR / f"{trial_id}.log"):
        with checkpoint.as_directory() if checkpoint is not None else contextlib.nullcontext() as resume_from:
            if ctx.trial_fn is not None:
                start = _reported_with(resume_from) if resume_from else None
                run_user_trial(config, ctx, report, resume_from=resume_from, start=start)
            else:
                from tuner.trial import run_trial  # the Trainer: its import alone takes seconds

                run_trial(config, ctx, report, resume_from=resume_from)


@contextlib.contextmanager
def _checkpoint_for_tune(directory: str | None, metrics: dict[str, Any], users: bool):
    """The directory to hand Tune. A user's checkpoint is handed as a linked copy with the report it
    came with beside it (so a resumed trial knows the step it goes on from); the user's own
    directory is left as it is."""
    if directory is None or not users:
        yield directory
        return
    with tempfile.TemporaryDirectory(prefix="tuner-ckpt-") as tmp:
        copy = Path(tmp) / "checkpoint"
        try:
            shutil.copytree(directory, copy, copy_function=os.link)
        except OSError:  # another filesystem: a plain copy
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(directory, copy)
        (copy / REPORT_FILE).write_text(json.dumps({C.STEP: metrics.get(C.STEP),
                                                    C.TOKENS_SEEN: metrics.get(C.TOKENS_SEEN)}))
        yield str(copy)


def _reported_with(directory: str) -> dict[str, Any]:
    path = Path(directory) / REPORT_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def repeat_if_ended(ctx: TrialContext) -> bool:
    """A trial that ended after the dead driver's last snapshot (Tune restores it as running) says
    how it ended, once more, and does nothing else."""
    trial_id = tune.get_context().get_trial_id()
    if trial_id not in ctx.ended:
        return False
    tune.report(ctx.ended[trial_id])
    return True


def on_this_node(ctx: TrialContext) -> TrialContext:
    """Trials away from the driver's node read a node-local copy of the prepared data."""
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
        except SystemExit:  # Tune stopping the trial (ASHA, the time budget, Ctrl-C): not a crash.
            raise  # The driver ends the log with one line that says why (see `ledger.end_line`).
        except BaseException:
            traceback.print_exc(file=stream)
            raise
        finally:
            root.removeHandler(handler)


def make(spec: Spec, ctx: TrialContext):
    """The Tune trainable with its resources: a single-process trial holds its CPUs and GPU share;
    a data-parallel trial's driver holds almost nothing, its Train workers hold the GPUs."""
    if cluster.workers(spec) > 1:
        ctx = replace(ctx, workers_have_cuda=cluster.workers_have_cuda())
        return tune.with_resources(tune.with_parameters(ddp_trainable, ctx=ctx), {"cpu": DRIVER_CPUS})
    return tune.with_resources(tune.with_parameters(tune_trainable, ctx=ctx),
                               {"cpu": spec.resources.cpus_per_trial, "gpu": spec.resources.gpus_per_trial})


# ---------------------------------------------------------------------------------------------
# Data-parallel trials.


def placement() -> str:
    """Where this process runs: the Ray node id and the GPU ids it was given."""
    return f"{ray.get_runtime_context().get_node_id()}:{','.join(str(g) for g in ray.get_gpu_ids())}"


def placement_keys(places: list[str]) -> dict[str, Any]:
    """Report keys for the leaderboard: nodes and GPU ids (one `node:gpus` entry per worker)."""
    return {C.NODE_ID: ",".join(sorted({p.split(":")[0] for p in places})),
            C.GPU_IDS: ";".join(places)}


def train_worker(config: dict[str, Any]) -> None:
    """One Train worker: the training core, reporting through `ray.train.report` on every rank."""
    import ray.train
    import torch
    import torch.distributed as dist

    from tuner.trial import run_trial  # the Trainer, in the Train worker only

    ctx: TrialContext = on_this_node(config["ctx"])
    if not torch.cuda.is_available():  # GPUs only declared (a test cluster): train on the CPU
        os.environ["ACCELERATE_TORCH_DEVICE"] = "cpu"  # Train set it to the GPU it assigned
    rank = ray.train.get_context().get_world_rank()
    places: list[Any] = [None] * ray.train.get_context().get_world_size()
    dist.all_gather_object(places, placement())
    where = placement_keys(places)

    def report(metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        # Every rank reports at the same steps (Train synchronises on it); rank 0 holds the checkpoint.
        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir and rank == 0 else None
        ray.train.report({**metrics, **where}, checkpoint=checkpoint)

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        run_trial(config["params"], ctx, report)
    else:
        with checkpoint.as_directory() as resume_from:
            run_trial(config["params"], ctx, report, resume_from=resume_from)


def ddp_trainable(config: dict[str, Any], ctx: TrialContext) -> None:
    """The Tune trial of a data-parallel run: start the TorchTrainer and wait for it."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    if repeat_if_ended(ctx):
        return
    spec = ctx.spec
    num_workers = int(spec.resources.gpus_per_trial)
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"params": config, "ctx": ctx},
        scaling_config=ray.train.ScalingConfig(
            num_workers=num_workers, use_gpu=True,
            resources_per_worker={"GPU": 1, "CPU": spec.resources.cpus_per_trial}),
        # nccl needs CUDA on the workers; a cluster whose GPUs are only declared trains with gloo.
        torch_config=TorchConfig(backend="nccl" if ctx.workers_have_cuda else "gloo"),
        run_config=ray.train.RunConfig(
            name=tune.get_context().get_trial_id(), storage_path=storage.join(spec.location, layout.TRAIN_DIR),
            failure_config=ray.train.FailureConfig(max_failures=spec.search.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute=spec.search.metric,
                checkpoint_score_order=spec.search.mode),
            # mypy reads ray.train's Train v1 RunConfig (its first import), which takes Tune callbacks; Ray
            # runs Train v2 (the default), whose RunConfig takes this UserCallback.
            callbacks=[TuneReportCallback()]),  # type: ignore[list-item]
    )
    with trial_log(spec.sweep_dir / layout.LOGS_DIR / f"{tune.get_context().get_trial_id()}.log"):
        trainer.fit()  # the workers' own output stays in Ray's worker logs on their nodes
