"""Data-parallel trials: one Tune trial that trains on several GPUs with Ray Train's `TorchTrainer`.

This follows Ray's current Train-inside-Tune pattern (Train V2): the Tune trial is a light driver
that starts a `TorchTrainer`; each Train worker runs the same training core as a single-process trial
(the HF `Trainer` under DDP), and rank 0's reports reach Tune through `TuneReportCallback`, with the
checkpoint's path attached. Train keeps the checkpoints, retries failed workers from the latest one,
and resumes a restarted trial from its own storage.
"""

from __future__ import annotations

import os
from typing import Any

from tuner import constants as C
from tuner import storage
from tuner.context import TrialContext

TRAIN_DIR = "train"  # Ray Train's runs inside the sweep directory, one per trial
CHECKPOINT_PATH = "checkpoint_path"  # the key TuneReportCallback gives a reported checkpoint


def placement() -> str:
    """Where this process runs: the Ray node id and the GPU ids it was given."""
    import ray

    return f"{ray.get_runtime_context().get_node_id()}:{','.join(str(g) for g in ray.get_gpu_ids())}"


def placement_keys(places: list[str]) -> dict[str, Any]:
    """Report keys for the leaderboard: nodes and GPU ids (one `node:gpus` entry per worker)."""
    return {C.NODE_ID: ",".join(sorted({p.split(":")[0] for p in places})),
            C.GPU_IDS: ";".join(places)}


def train_worker(config: dict[str, Any]) -> None:
    """One Train worker: the training core, reporting through `ray.train.report` on every rank."""
    import ray.train
    import torch.distributed as dist

    import torch

    from tuner.sweep import on_this_node

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

    from tuner.trial import run_trial

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        run_trial(config["params"], ctx, report)
    else:
        with checkpoint.as_directory() as resume_from:
            run_trial(config["params"], ctx, report, resume_from=resume_from)


def ddp_trainable(config: dict[str, Any], ctx: TrialContext) -> None:
    """The Tune trial of a data-parallel run: start the TorchTrainer and wait for it."""
    import ray.train
    from ray import tune
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from tuner.sweep import LOGS_DIR, repeat_if_ended, trial_log

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
            name=tune.get_context().get_trial_id(), storage_path=storage.join(spec.location, TRAIN_DIR),
            failure_config=ray.train.FailureConfig(max_failures=spec.search.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute=spec.search.metric,
                checkpoint_score_order=spec.search.mode),
            callbacks=[TuneReportCallback()]),
    )
    with trial_log(spec.sweep_dir / LOGS_DIR / f"{tune.get_context().get_trial_id()}.log"):
        trainer.fit()  # the workers' own output stays in Ray's worker logs on their nodes
