"""One trial: sampled hyperparameters → `TrainingArguments` → a Hugging Face `Trainer` run.

This is the training core, with no Ray in it: it reports through any `Reporter` callable, so it runs
under Ray Tune (see `sweep`), in a plain script, or in a benchmark on a machine without Ray.
Every `report_every_tokens` training tokens it evaluates, saves a checkpoint and reports, all at the
same step, so ASHA never decides on numbers older than the checkpoint it would keep.
"""

from __future__ import annotations

import functools
import gc
import logging
import math
import pickle
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from transformers import TrainerCallback

from tuner import constants as C
from tuner import gpu, hyperparams, memory, records, space
from tuner import model as model_lib
from tuner.context import Reporter, TrialContext
from tuner.data import trial_splits
from tuner.errors import first_line
from tuner.spec import Spec
from tuner.trial_metrics import MetricFnError, TrialMetrics, wanted

log = logging.getLogger("tuner")


class UnsafeCheckpoint(Exception):
    """A checkpoint whose state files could run code if unpickled: never loaded."""


def training_arguments(spec: Spec, hyper: dict[str, Any], output_dir: str | Path):
    """The `TrainingArguments` of one trial: its hyperparameters (`hyper`, complete: `space.resolve`)
    under the keywords tuner/hyperparams.py gives them (`warmup_ratio` goes in as `warmup_steps`:
    transformers 5 reads a float < 1 there as a ratio), and the fixed rest of `train`."""
    import torch
    from transformers import TrainingArguments

    train = spec.train
    plateau = hyper["lr_scheduler_type"] == "reduce_lr_on_plateau"
    optional: dict[str, Any] = {"gradient_checkpointing": True} if train.gradient_checkpointing else {}
    # transformers refuses reduce_lr_on_plateau without an eval strategy; "steps" at an interval
    # never reached keeps our reports the only evaluations, and the Trainer steps the plateau
    # scheduler on each of them.
    evaluation: dict[str, Any] = {"eval_steps": 2**31, "metric_for_best_model": "loss"} if plateau else {}

    return TrainingArguments(
        output_dir=str(output_dir),
        **hyperparams.keywords(hyper, "training_args"),
        per_device_eval_batch_size=train.per_device_eval_batch_size,
        # Plateau: at our reports, halve the rate after two without improvement (torch's defaults,
        # 10 evaluations, would rarely act within one trial's few reports).
        lr_scheduler_kwargs=train.lr_scheduler_kwargs or ({"factor": 0.5, "patience": 1} if plateau else {}),
        **gpu.training_options(train.precision, train.compile, train.dataloader_workers,
                               spec.resources.cpus_per_trial),
        **optional,
        seed=train.seed,
        use_cpu=not torch.cuda.is_available(),
        # ReportCallback drives evaluation, saving and the last log of each report interval.
        eval_strategy="steps" if plateau else "no",
        **evaluation,
        save_strategy="no",
        logging_strategy="steps",
        logging_steps=10,  # how soon a NaN loss is seen
        logging_nan_inf_filter=False,  # a NaN loss must reach the callback, not be filtered out
        include_num_input_tokens_seen="no",  # counted on the host instead: see `counting_trainer`
        prediction_loss_only=True,
        report_to="none",
        disable_tqdm=True,
    )


def collate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Packed blocks are all `block_size` long: stack them; labels are the inputs (the model shifts),
    or instruction data's own labels, its prompts masked."""
    import torch

    ids = torch.stack([torch.as_tensor(row["input_ids"]) for row in rows])
    if "labels" in rows[0]:
        return {"input_ids": ids, "labels": torch.stack([torch.as_tensor(row["labels"]) for row in rows])}
    return {"input_ids": ids, "labels": ids.clone()}


class ReportCallback(TrainerCallback):
    """Every `report_every_tokens` tokens, at the end, or at `stop_after_steps`: log, evaluate, save
    and report at one step. Stops the trial at once on a NaN or inf loss. With `measure` (a generation
    metric or a metric_fn), each evaluation adds its figures, and the trial's best report, patience and
    which checkpoints are written follow that search.metric in search.mode (else the eval_loss).

    A checkpoint is written only where it can matter: at a report the trial goes on from (a retry or
    a resumed driver restarts there) and at a last report that is the trial's best so far (it may be
    promoted); that last one holds the weights alone, as nothing resumes from it. Times each part.
    """

    def __init__(self, spec: Spec, report: Reporter, max_t: int | None, setup_times: dict[str, float] | None = None,
                 per_token_flops: float | None = None, peak: float | None = None, gpus: int = 1,
                 trainable: int | None = None, measure: Callable[[Any], dict[str, float]] | None = None):
        self.every = spec.train.report_every_tokens
        # A generation metric or a metric_fn's key decides in its mode; otherwise the loss, lower better
        searched = spec.search.metric not in C.REPORT_KEYS
        self.metric, self.mode = (spec.search.metric, spec.search.mode) if searched else (C.EVAL_LOSS, "min")
        self.measure = measure
        self.extra: dict[str, float] = {}  # the last evaluation's figures beyond the loss
        self.best_loss: float | None = None
        self.stop_after = spec.train.stop_after_steps
        self.patience = spec.train.patience
        self.stale = 0  # reports since the best one
        self.ended_as: str | None = None  # the status of the trial's final report
        self.report = report
        self.max_t = max_t
        self.next_report = self.every
        self.losses: list[float] = []
        self.eval_loss: float | None = None
        self.learning_rate: float | None = None
        self.diverged = False
        self.reports = 0
        self.best: float | None = None  # the search metric's best report so far
        self.times = {key: 0.0 for key in C.TIME_KEYS} | (setup_times or {})
        self.mark = time.perf_counter()  # where the part being timed began
        self.interval_train = 0.0  # training-step seconds since the last report
        self.last_tokens = 0
        self.start_step = 0
        self.per_token_flops, self.peak, self.gpus = per_token_flops, peak, gpus
        self.trainable = trainable  # parameters with requires_grad: a cost a search can trade

    def _lap(self, key: str) -> float:
        now = time.perf_counter()
        spent, self.mark = now - self.mark, now
        self.times[key] += spent
        return spent

    def on_train_begin(self, args, state, control, **kwargs):
        self.start_step = int(state.global_step)  # after resuming from a checkpoint: its step
        self.next_report = (state.num_input_tokens_seen // self.every + 1) * self.every
        self.last_tokens = state.num_input_tokens_seen
        self._lap(C.TIME_MODEL)  # the Trainer's own set-up: optimizer, device, a checkpoint to resume

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" in logs:
            self.losses.append(float(logs["loss"]))
            if not math.isfinite(self.losses[-1]):
                self.diverged = True
                control.should_training_stop = True
                control.should_evaluate = control.should_save = False
        if "learning_rate" in logs:
            self.learning_rate = float(logs["learning_rate"])

    def _is_last(self, state) -> bool:
        return state.global_step >= state.max_steps or (
            self.stop_after is not None and state.global_step >= self.stop_after)

    def _ends(self, state) -> bool:
        """This report is the trial's last: its loop ends, or ASHA's max_t completes it."""
        return self._is_last(state) or (self.max_t is not None and state.num_input_tokens_seen >= self.max_t)

    def on_step_end(self, args, state, control, **kwargs):
        due = state.num_input_tokens_seen >= self.next_report or self._is_last(state)
        if due and not self.diverged:
            self.interval_train += self._lap(C.TIME_TRAIN)
            control.should_log = control.should_evaluate = control.should_save = True
            while self.next_report <= state.num_input_tokens_seen:
                self.next_report += self.every
        if self.stop_after is not None and state.global_step >= self.stop_after:
            control.should_training_stop = True

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self._lap(C.TIME_EVAL)
        self.eval_loss = float((metrics or {}).get("eval_loss", math.nan))
        self.extra = {}
        if math.isfinite(self.eval_loss) and self.measure is not None:
            self.extra = self.measure(kwargs["model"])  # MetricFnError ends the trial (see run_trial)
            self._lap(C.TIME_EVAL)
        if not math.isfinite(self.eval_loss):
            self.diverged = True
            control.should_training_stop = True
            control.should_save = False
        elif self._out_of_patience() and not self._is_last(state):
            control.should_training_stop = True  # our own early stopping: no checkpoint save per evaluation
            control.should_save = False  # not better than the trial's best, which stays promotable
            self._send(state, None, C.STOPPED_PATIENCE, True)
        elif self._ends(state) and self.best is not None and not self._improves():
            control.should_save = False  # the trial's earlier best is the one that can be promoted
            self._send(state, None, C.COMPLETED if self._is_last(state) else C.RUNNING, self._is_last(state))
        elif self._ends(state):
            args.save_only_model = True

    def _value(self) -> float | None:
        """This evaluation's search metric (the loss, or a figure `measure` added)."""
        if self.metric == C.EVAL_LOSS:
            return self.eval_loss
        return self.extra.get(self.metric)

    def _improves(self) -> bool:
        return records.better(self._value(), self.best, self.mode)

    def _out_of_patience(self) -> bool:
        """This report is the `patience`-th in a row not better than the trial's best."""
        return (self.patience is not None and self.best is not None and not self._improves()
                and self.stale + 1 >= self.patience)

    def on_save(self, args, state, control, **kwargs):
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        # Resume needs weights, optimizer, scheduler, RNG and trainer state; not the pickled arguments.
        (checkpoint / "training_args.bin").unlink(missing_ok=True)
        final = self._is_last(state)
        self._lap(C.TIME_SAVE)
        self._send(state, checkpoint, C.COMPLETED if final else C.RUNNING, final)
        shutil.rmtree(checkpoint, ignore_errors=True)
        self._lap(C.TIME_SAVE)  # the reporter's copy of the checkpoint

    def on_train_end(self, args, state, control, **kwargs):
        if self.diverged:
            self.eval_loss, self.extra = math.nan, {}
            self._send(state, None, C.DIVERGED, True)
        elif self.reports == 0 and self.start_step > 0 and self._is_last(state):
            self._close_resumed_at_end(state)

    def _close_resumed_at_end(self, state) -> None:
        """A run resumed from the checkpoint of the trial's last report (its driver was killed after
        that report, before Tune ended the trial) has no step left, so it reports nothing, and Tune
        would end the trial on the restored, unfinished result. A closing copy of that report says
        where the run went on from and that the trial completed; nothing counts it as a new report."""
        evaluated = [entry for entry in state.log_history if C.EVAL_LOSS in entry]
        self.eval_loss = float(evaluated[-1][C.EVAL_LOSS]) if evaluated else math.nan
        self._send(state, None, C.COMPLETED, True, repeat=True)

    def _send(self, state, checkpoint: Path | None, status: str, final: bool, repeat: bool = False) -> None:
        tokens = int(state.num_input_tokens_seen)
        if self.max_t is not None and tokens >= self.max_t and status == C.RUNNING:
            status = C.COMPLETED
        speed = (tokens - self.last_tokens) / self.interval_train if self.interval_train > 0 else 0.0
        # the tokens of every rank of a data-parallel trial, so over every rank's GPU
        utilization = gpu.mfu(speed, self.per_token_flops, self.peak, self.gpus) if self.per_token_flops else None
        metrics: dict[str, Any] = {
            C.EVAL_LOSS: self.eval_loss if self.eval_loss is not None else math.nan,
            C.TRAIN_LOSS: sum(self.losses) / len(self.losses) if self.losses else math.nan,
            C.LEARNING_RATE: self.learning_rate if self.learning_rate is not None else 0.0,
            C.EPOCH: float(state.epoch or 0.0),
            C.STEP: int(state.global_step),
            C.TOKENS_SEEN: tokens,
            C.TOKENS_PER_S: speed,
            C.TRAIN_TOKENS_PER_S: speed,
            C.TRAINABLE_PARAMS: self.trainable if self.trainable is not None else math.nan,
            C.PEAK_MEMORY_MB: memory.peak_mb(),
            C.START_STEP: self.start_step,
            C.TRIAL_STATUS: status,
            C.FINAL: final,
            **({C.REPEAT: True} if repeat else {}),
            **dict(self.times),
            **({C.MFU: utilization} if utilization is not None else {}),
            **gpu_memory(),
            **self.extra,
        }
        metrics.setdefault(self.metric, math.nan)  # Tune refuses a report without the searched metric
        if status != C.DIVERGED and not repeat:
            self.reports += 1
            value = metrics.get(self.metric)
            improved = self.best is None or records.better(value, self.best, self.mode)
            self.stale = 0 if improved else self.stale + 1
            self.best = value if improved else self.best
            self.best_loss = min(self.best_loss, metrics[C.EVAL_LOSS]) if self.best_loss is not None \
                else metrics[C.EVAL_LOSS]
        self.losses = []
        if final:
            self.ended_as = status
        self.report(metrics, str(checkpoint) if checkpoint is not None else None)
        self.last_tokens, self.interval_train = tokens, 0.0


def gpu_memory() -> dict[str, float]:
    """The trial's peak GPU memory so far, in MiB; nothing on CPU."""
    import torch

    if not torch.cuda.is_available():
        return {}
    return {C.GPU_MEMORY_MB: torch.cuda.max_memory_allocated() / 2**20}


def trainable_parameters(model) -> int:
    """The parameters the optimizer updates (requires_grad): all of them, or LoRA's adapters alone."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def run_trial(params: dict[str, Any], ctx: TrialContext, report: Reporter,
              resume_from: str | None = None, workdir: str | Path | None = None) -> dict[str, Any]:
    """Train one trial to its end, reporting as it goes. Returns a summary of the run.

    CUDA out-of-memory is handled here, not by Tune's retries (which would repeat the same OOM):
    the trial restarts once with half the micro-batch (rounded up) and twice the accumulation, the
    same effective batch and so the same steps; reports it had already made are not made again. If
    that runs out of memory too, the trial ends with status `oom`, without raising.
    """
    hyper = space.resolve(ctx.spec, params)
    once = ReportOnce(report, ctx.spec.search.metric)
    try:
        return _train_or_halve(hyper, ctx, once, resume_from, workdir)
    except MetricFnError as exc:  # the user's function: it would fail the same way again, so no retry
        log.error("tuner: %s", exc)
        once.end(C.FAILED, hyper, str(exc))
        return {"status": C.FAILED, "best_eval_loss": None, "reports": once.reports, "tokens_seen": once.tokens,
                "train_seconds": 0.0, "hyperparameters": hyper, "error": str(exc)}


def _train_or_halve(hyper: dict[str, Any], ctx: TrialContext, once: ReportOnce, resume_from: str | None,
                    workdir: str | Path | None) -> dict[str, Any]:
    """`_train`, and once more with half the micro-batch after a CUDA out-of-memory (see `run_trial`)."""
    try:
        return _train(hyper, ctx, once, resume_from, workdir)
    except oom_error() as exc:
        smaller = halved(hyper)
        log.warning("out of memory at micro-batch %s (%s); retrying with micro-batch %s and accumulation %s",
                    hyper["per_device_train_batch_size"], first_line(exc),
                    smaller["per_device_train_batch_size"], smaller["gradient_accumulation_steps"])
    free_cuda()
    try:
        return _train(smaller, ctx, once, resume_from, workdir)
    except oom_error():
        free_cuda()
        once.end(C.OOM, smaller)
        return {"status": C.OOM, "best_eval_loss": None, "reports": once.reports, "tokens_seen": once.tokens,
                "train_seconds": 0.0, "hyperparameters": smaller}


def oom_error() -> type[BaseException]:
    import torch

    return getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def halved(hyper: dict[str, Any]) -> dict[str, Any]:
    """Half the micro-batch (rounded up), twice the accumulation: the same effective batch."""
    batch, accumulation = int(hyper["per_device_train_batch_size"]), int(hyper["gradient_accumulation_steps"])
    return {**hyper, "per_device_train_batch_size": math.ceil(batch / 2),
            "gradient_accumulation_steps": accumulation * 2}


def free_cuda() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class ReportOnce:
    """Passes reports on, each step once: a restart after an OOM does not repeat a report."""

    def __init__(self, report: Reporter, metric: str = C.EVAL_LOSS):
        self.report, self.step, self.tokens, self.reports = report, -1, 0, 0
        self.last: dict[str, Any] = {}
        self.metric = metric  # the searched one: every report carries it, NaN on the last of one that ends so

    def __call__(self, metrics: dict[str, Any], checkpoint: str | None) -> None:
        if metrics[C.STEP] <= self.step and metrics[C.TRIAL_STATUS] not in C.ABORTED and not metrics[C.FINAL]:
            return
        self.step, self.tokens, self.last = metrics[C.STEP], metrics[C.TOKENS_SEEN], metrics
        if metrics[C.TRIAL_STATUS] not in C.ABORTED:
            self.reports += 1
        self.report(metrics, checkpoint)

    def end(self, status: str, hyper: dict[str, Any], error: str | None = None) -> None:
        """The trial's last report when it cannot go on: a NaN metric, its status and why."""
        self.report({**{k: self.last.get(k, 0.0) for k in C.REPORT_KEYS}, C.EVAL_LOSS: math.nan,
                     self.metric: math.nan, C.STEP: max(self.step, 0), C.TOKENS_SEEN: self.tokens,
                     C.TRIAL_STATUS: status, C.FINAL: True,
                     C.MICRO_BATCH: int(hyper["per_device_train_batch_size"]),
                     C.ACCUMULATION: int(hyper["gradient_accumulation_steps"]),
                     **({C.TRIAL_ERROR: error} if error else {})}, None)


@functools.lru_cache(maxsize=1)
def counting_trainer():
    """The Trainer, counting its input tokens on the host.

    transformers counts them (`include_num_input_tokens_seen`) by copying each micro-batch's count
    to the GPU and reading the sum back with `.item()`: a sync every step, which stops the host from
    queueing the next step's kernels while the GPU runs this one (measured: 0.94 of a plain PyTorch
    loop's tokens/s with torch.compile, see bench/gpu.py). A batch's shape is known on the host, and
    every rank of a data-parallel trial trains batches of the same size (accelerate's even batches).
    """
    from transformers import Trainer

    class CountingTrainer(Trainer):
        def training_step(self, model, inputs, *args, **kwargs):
            ids = inputs.get("input_ids")
            if ids is not None:
                self.state.num_input_tokens_seen += ids.numel() * max(self.args.world_size, 1)
            return super().training_step(model, inputs, *args, **kwargs)

    return CountingTrainer


def trial_model(spec: Spec, model_path: str, hyper: dict[str, Any]):
    """The base model as a trial trains it: its first blocks frozen, LoRA-wrapped where the trial says
    so. Shared with `lrfind`, whose range test must train the very model a trial would."""
    model = model_lib.load_model(model_path, spec.model.revision, int(hyper["freeze_layers"]),
                                 spec.model.token_env, spec.model.trust_remote_code, reuse=True,
                                 code_revision=spec.model.code_revision)
    if hyper["use_lora"]:
        model = model_lib.with_lora(model, hyper, spec.model.lora_target_modules)
    return model


def _train(hyper: dict[str, Any], ctx: TrialContext, report: Reporter, resume_from: str | None,
           workdir: str | Path | None) -> dict[str, Any]:
    spec = ctx.spec
    used = {C.MICRO_BATCH: int(hyper["per_device_train_batch_size"]),
            C.ACCUMULATION: int(hyper["gradient_accumulation_steps"])}
    times = {C.TIME_START: start_in_worker()}
    mark = time.perf_counter()
    train_split, validation = trial_splits(ctx.prepared, spec.train.eval_blocks, spec.train.seed)
    times[C.TIME_DATA] = time.perf_counter() - mark
    workdir = Path(workdir or tempfile.mkdtemp(prefix="tuner-trial-"))
    args = training_arguments(spec, hyper, workdir / "hf")
    model = trial_model(spec, ctx.model_path, hyper)
    extra = (TrialMetrics(spec, ctx.prepared, model_lib.load_tokenizer(ctx.prepared.tokenizer_path), ctx.metric_fn)
             if wanted(spec, ctx.metric_fn) else None)
    trainer = counting_trainer()(model=model, args=args, data_collator=collate, train_dataset=train_split,
                                 eval_dataset=validation)
    times[C.TIME_MODEL] = time.perf_counter() - mark - times[C.TIME_DATA]
    parameters, layers, width = gpu.model_shape(model)
    callback = ReportCallback(spec, lambda metrics, checkpoint: report({**metrics, **used}, checkpoint), ctx.max_t,
                              times, gpu.flops_per_token(parameters, layers, width, ctx.prepared.block_size),
                              gpu.device_peak(), args.world_size, trainable_parameters(model),
                              extra.measure if extra is not None else None)
    memory.reset_peak()  # this trial's peak, not the reused worker's earlier trials'
    trainer.add_callback(callback)
    start = time.perf_counter()
    try:
        trainer.train(resume_from_checkpoint=resume_from)
    except pickle.UnpicklingError as exc:  # Trainer loads optimizer, scheduler and RNG weights-only
        if resume_from is None:
            raise
        raise UnsafeCheckpoint(f"{resume_from}: its optimizer, scheduler or RNG state holds more than "
                               f"tensors, so it was refused, not loaded ({first_line(exc)})") from None
    finally:
        shutil.rmtree(workdir / "hf", ignore_errors=True)
    return {"status": callback.ended_as or C.COMPLETED, "best_eval_loss": callback.best_loss,
            "reports": callback.reports, "tokens_seen": int(trainer.state.num_input_tokens_seen),
            "train_seconds": time.perf_counter() - start, "hyperparameters": hyper}


_started = [False]  # whether this process has run a trial before


def start_in_worker() -> float:
    """Seconds from this process's start to its first trial (start-up and imports); 0 for the later
    trials of a reused worker, which pay none.

    Before its first trial, the worker also sets what it holds for good (the imported libraries)
    aside from the garbage collector: the Trainer runs a full collection at the start of every trial
    (accelerate's `free_memory`), which then takes milliseconds instead of most of a second.
    """
    if _started[0]:
        return 0.0
    _started[0] = True
    gc.collect()
    gc.freeze()
    try:
        import psutil
    except ImportError:  # the training core without Ray (and so without psutil)
        return 0.0
    return max(0.0, time.time() - psutil.Process().create_time())
