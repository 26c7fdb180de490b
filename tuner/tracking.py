"""Weights & Biases: one run per trial, one for the sweep, one for the final evaluation.

The only module that imports wandb. Every run is opened and logged from the driver, never from a
trial's process: offline W&B ignores `resume` and opens a new folder on every `init`, so a run made
inside a trial would split in two when Tune retries the trial. Here a trial's run outlives its
retries, and a report is logged once, at `step=global_step`, so a resumed trial's steps continue.

Secrets stay out: the API key is read from the environment variable the spec names when a run
starts online, and no config we log holds anything but hyperparameters and fixed settings.
"""

from __future__ import annotations

import contextlib
import logging
import math
import netrc
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

from tuner import constants as C
from tuner import layout, records, secret, space
from tuner.errors import UserError, first_line
from tuner.records import TrialRecord
from tuner.spec import Spec, WandbSpec

log = logging.getLogger("tuner")

WANDB_DIR = layout.WANDB_DIR  # under the sweep directory: wandb/offline-run-*/ for `tuner sync`
DEFAULT_HOST = "api.wandb.ai"
# Our report keys → W&B's names, in the `train/` and `eval/` panels HF's W&B integration uses.
METRICS = {
    C.TRAIN_LOSS: "train/loss",
    C.EVAL_LOSS: "eval/loss",
    C.LEARNING_RATE: "train/learning_rate",
    C.EPOCH: "train/epoch",
    C.STEP: "train/global_step",
    C.TOKENS_SEEN: "train/tokens_seen",
    C.TOKENS_PER_S: "train/tokens_per_s",
    C.GPU_MEMORY_MB: "train/gpu_memory_mb",
    C.MFU: "train/mfu",
    C.TRAINABLE_PARAMS: "train/trainable_params",
    C.PEAK_MEMORY_MB: "train/peak_memory_mb",
}
PERPLEXITY = "eval/perplexity"
# The Tracker's calls made from Tune's callbacks (see tuner/background.py).
TRIAL_CALLS = ("trial_started", "trial_reported", "trial_ended", "trial_retried")


# ---------------------------------------------------------------------------------------------
# Which mode: online with a key, else offline (and say how to upload later).


def has_api_key(settings: WandbSpec, environ: Mapping[str, str] | None = None) -> bool:
    """A key in the named environment variable, WANDB_API_KEY, or ~/.netrc (what `wandb login` writes)."""
    environ = os.environ if environ is None else environ
    if environ.get(settings.api_key_env) or environ.get("WANDB_API_KEY"):
        return True
    host = re.sub(r"^https?://", "", environ.get("WANDB_BASE_URL", DEFAULT_HOST)).split("/")[0].split(":")[0]
    try:
        return netrc.netrc(environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_mode(settings: WandbSpec, sweep_dir: Path,
                 environ: Mapping[str, str] | None = None) -> tuple[str, str | None]:
    """The mode to run in, and a one-line notice when it is not what the user may expect."""
    environ = os.environ if environ is None else environ
    if settings.mode is not None:
        return settings.mode, None
    env_mode = {"dryrun": "offline"}.get(environ.get("WANDB_MODE", ""), environ.get("WANDB_MODE", ""))
    if env_mode in ("online", "offline", "disabled"):
        return env_mode, None
    if has_api_key(settings, environ):
        return "online", None
    return "offline", (f"W&B: no API key ({settings.api_key_env} is unset and `wandb login` was not run): "
                       f"logging offline to {sweep_dir / WANDB_DIR}; upload later with "
                       f"`tuner sync {sweep_dir}`")


# ---------------------------------------------------------------------------------------------
# What a run holds.


def trial_config(spec: Spec, params: dict[str, Any]) -> dict[str, Any]:
    """The sampled hyperparameters at the top (W&B's parallel coordinates read them there), then
    the fixed settings that shape every trial."""
    hyper = space.resolve(spec, params)
    fixed_train = {k: v for k, v in vars(spec.train).items() if v is not None and k not in hyper}
    return {
        **hyper,
        "sweep": spec.name,
        "searched": sorted(params),
        "model": {"name_or_path": spec.model.name_or_path, "revision": spec.model.revision},
        "data": {"source": spec.data.dataset or spec.data.path, "config": spec.data.config,
                 "block_size": spec.data.block_size, "max_records": spec.data.max_records},
        "train": fixed_train,
        "search": {"metric": spec.search.metric, "mode": spec.search.mode, "sampler": spec.search.sampler,
                   "seed": spec.search.seed, "num_samples": spec.search.num_samples},
        "scheduler": vars(spec.scheduler),
        "resources": vars(spec.resources),
    }


def report_metrics(report: dict[str, Any]) -> dict[str, float]:
    """One report as W&B metrics, with perplexity; keys a report lacks are left out."""
    metrics = {name: report[key] for key, name in METRICS.items()
               if isinstance(report.get(key), (int, float)) and not isinstance(report.get(key), bool)}
    metrics.update({f"eval/{key[len(C.METRIC_PREFIX):]}": value for key, value in report.items()  # eval_rougeL ...
                    if key.startswith(C.METRIC_PREFIX) and key not in METRICS
                    and isinstance(value, (int, float)) and not isinstance(value, bool)})
    loss = report.get(C.EVAL_LOSS)
    if isinstance(loss, (int, float)) and math.isfinite(loss):
        metrics[PERPLEXITY] = math.exp(loss) if loss < 700 else math.inf
    return metrics


def run_id(group: str, trial_id: str) -> str:
    """A W&B run id that is the same for every attempt of a trial: letters, digits, '-' and '_'."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", f"{group}-{trial_id}")[-64:]


def trial_summary(record: TrialRecord) -> dict[str, Any]:
    """How the trial ended, in the words the leaderboard uses."""
    status = record.status
    summary = {"status": status, "best_eval_loss": record.best_eval_loss,
               "best_step": record.best_step, "reports": record.reports,
               "tokens_seen": record.tokens_seen, "retries": record.retries,
               "micro_batch": record.micro_batch, "accumulation": record.accumulation}
    if status == C.STOPPED_ASHA:
        summary.update(stopped_at_report=record.reports, stopped_at_tokens=record.rung)
    if record.error:
        summary["failure_reason"] = record.error
    return {k: v for k, v in summary.items() if v is not None}


# ---------------------------------------------------------------------------------------------
# The tracker: the driver's W&B runs for one sweep.


class Tracker:
    """Opens, logs and closes the sweep's W&B runs. Every method is safe to call when tracking is
    disabled, and a W&B failure is reported once, never raised into the sweep."""

    def __init__(self, spec: Spec, say: Callable[[str], None] = log.info):
        self.spec, self.settings, self.say = spec, spec.tracking.wandb, say
        self.dir = spec.sweep_dir / WANDB_DIR
        self.group = self.settings.group or spec.name
        self.mode, notice = resolve_mode(self.settings, spec.sweep_dir)
        if notice:
            say(notice)
        self.trials: dict[str, Any] = {}  # trial id → its open run
        self.last_step: dict[str, int] = {}
        self.sweep_run: Any | None = None  # the sweep's own W&B run, once opened
        self.progress: list[float | None] = []  # best so far after each trial; None before a usable one
        self.failed = False

    @property
    def enabled(self) -> bool:
        return self.mode != "disabled" and not self.failed

    def _init(self, **kwargs: Any):
        """`wandb.init` for one more concurrent run; an online start that fails falls back to offline."""
        import wandb

        self.dir.mkdir(parents=True, exist_ok=True)
        common: dict[str, Any] = dict(project=self.settings.project, entity=self.settings.entity, group=self.group,
                                      tags=list(self.settings.tags), dir=str(self.spec.sweep_dir),
                                      reinit="create_new", resume="allow" if "id" in kwargs else None)
        settings: dict[str, Any] = dict(silent=True, console="off", x_disable_stats=True,
                                        init_timeout=self.settings.init_timeout)
        if self.mode == "online":
            key = secret.from_env(self.settings.api_key_env)
            auth: dict[str, Any] = {"api_key": key} if key else {}
            try:
                return wandb.init(mode="online", **common, **kwargs, settings=wandb.Settings(**settings, **auth))
            except Exception as exc:  # no network, a bad key, a server down: keep the sweep going
                self.mode = "offline"
                self.say(f"W&B: could not start online ({secret.redact(first_line(exc))}); logging offline "
                         f"to {self.dir} instead; upload later with `tuner sync {self.spec.sweep_dir}`")
                if "id" in kwargs:  # W&B keeps a failed start's id taken for this process
                    kwargs = {**kwargs, "id": kwargs["id"] + "-offline"}
        return wandb.init(mode="offline", **common, **kwargs, settings=wandb.Settings(**settings))

    @contextlib.contextmanager
    def _guard(self, what: str):
        """A W&B error disables tracking for the rest of the sweep, with one notice."""
        if not self.enabled:
            yield False
            return
        try:
            yield True
        except Exception as exc:
            self.failed = True
            self.say(f"W&B: {what} failed ({secret.redact(first_line(exc))}); tracking is off for the rest "
                     "of this sweep, the sweep goes on")

    # Trials --------------------------------------------------------------------------------

    def trial_started(self, trial_id: str, params: dict[str, Any]) -> None:
        """Open the trial's run, once: a retried trial keeps the run it has."""
        with self._guard("opening a trial run") as on:
            if on and trial_id not in self.trials:
                self._sweep()  # first: an online start that fails does so here, before any trial's run
                run = self._init(id=run_id(self.group, trial_id), name=trial_id, job_type="trial",
                                 config=trial_config(self.spec, params))
                run.define_metric("eval/loss", summary="min")
                self.trials[trial_id] = run

    def trial_reported(self, trial_id: str, report: dict[str, Any]) -> None:
        """Log one report at its global step; a step already logged (a retry repeating it) is skipped."""
        with self._guard("logging a report") as on:
            run = self.trials.get(trial_id) if on else None
            step = int(report.get(C.STEP) or 0)
            if run is None or step <= self.last_step.get(trial_id, -1):
                return
            run.log(report_metrics(report), step=step)
            self.last_step[trial_id] = step

    def trial_ended(self, record: TrialRecord) -> None:
        """Write the trial's summary and close its run; add it to the sweep's progress."""
        with self._guard("closing a trial run") as on:
            if not on:
                return
            run = self.trials.pop(record.trial_id, None)
            if run is not None:
                run.summary.update(trial_summary(record))
                run.finish(exit_code=1 if record.status == C.FAILED else 0)
            self._progress(record)

    def trial_retried(self, trial_id: str) -> None:
        with self._guard("noting a retry") as on:
            run = self.trials.get(trial_id) if on else None
            if run is not None:
                run.summary["retries"] = int(run.summary.get("retries", 0) or 0) + 1

    # The sweep ------------------------------------------------------------------------------

    def _sweep(self):
        if self.sweep_run is None:
            data = self.spec.to_dict()
            data.pop("origin", None)
            run = self._init(name=f"{self.spec.name}-sweep", job_type="sweep", config=data)
            run.define_metric("search/*", step_metric="search/trials_finished")
            self.sweep_run = run
        return self.sweep_run

    def _progress(self, record: TrialRecord) -> None:
        """Best loss so far against trials finished: how fast the search converges."""
        value = record.best_metric
        usable = record.promotable
        best = self.progress[-1] if self.progress else None
        if usable and records.better(value, best, self.spec.search.mode):
            best = value
        self.progress.append(best)
        row = {"search/trials_finished": len(self.progress), "search/trial_" + self.spec.search.metric:
               value if usable else None, "search/best_" + self.spec.search.metric: best}
        self._sweep().log({k: v for k, v in row.items() if v is not None})

    def sweep_ended(self, leaderboard: list[dict[str, Any]], best_dir: Path | None) -> None:
        """The leaderboard as a Table and the best config as an artifact, then close the sweep run."""
        import wandb

        with self._guard("closing the sweep run") as on:
            if not on:
                return
            run = self._sweep()
            columns = list(leaderboard[0]) if leaderboard else ["trial_id"]
            table = wandb.Table(columns=[*columns], data=[[_cell(row.get(c)) for c in columns] for row in leaderboard])
            run.log({"leaderboard": table})
            if best_dir is not None and (best_dir / "config.yaml").exists():
                artifact = wandb.Artifact(f"{self.spec.name}-best-config", type="config",
                                          description="The best trial's spec: `tuner sweep config.yaml` retrains it")
                for name in ("config.yaml", "training_args.json", "final_eval.json"):
                    if (best_dir / name).exists():
                        artifact.add_file(str(best_dir / name))
                run.log_artifact(artifact)
            if leaderboard:
                run.summary.update({"best_trial": leaderboard[0]["trial_id"], "trials": len(leaderboard)})
            run.finish()
            self.sweep_run = None

    def final_evaluation(self, best: TrialRecord, final_eval: dict[str, Any],
                         samples: list[dict[str, Any]]) -> None:
        """The promoted model's test metrics and its generated samples as a Table."""
        import wandb

        with self._guard("logging the final evaluation") as on:
            if not on:
                return
            run = self._init(name=f"{self.spec.name}-final-eval", job_type="final-eval",
                             config={**space.resolve(self.spec, best.params), "trial_id": best.trial_id,
                                     "checkpoint_step": records.checkpoint_step(best)})
            run.summary.update({f"test/{k}": v for k, v in final_eval.items()
                                if isinstance(v, (int, float)) and not isinstance(v, bool)})
            for name in ("tuned", "base", "baseline"):  # the A/B figures, one W&B section per model
                if isinstance(final_eval.get(name), dict):
                    run.summary.update({f"{name}/{k}": v for k, v in final_eval[name].items()})
            columns = [c for c in ("prompt", "reference", "base", "baseline", "tuned") if any(c in s for s in samples)]
            if samples:
                table = wandb.Table(columns=[*columns], data=[[s.get(c) for c in columns] for s in samples])
                run.log({"samples": table})
            run.finish()

    def close(self) -> None:
        """Finish whatever is still open (a Ctrl-C, a failed sweep): nothing is left half-written."""
        for trial_id in list(self.trials):
            with self._guard("closing a trial run") as on:
                if on:
                    run = self.trials.pop(trial_id)
                    if run.summary.get("status") is None:  # W&B's summary has no setdefault
                        run.summary["status"] = C.STOPPED_BUDGET
                    run.finish()
        if self.sweep_run is not None:
            with self._guard("closing the sweep run") as on:
                if on:
                    self.sweep_run.finish()
            self.sweep_run = None


def _cell(value: Any) -> Any:
    return value if isinstance(value, (int, float, str, bool)) or value is None else str(value)


# ---------------------------------------------------------------------------------------------
# Uploading offline runs later.


def offline_runs(sweep_dir: Path) -> list[Path]:
    return sorted((Path(sweep_dir) / WANDB_DIR).glob("offline-run-*"))


def sync_command(runs: list[Path], settings: WandbSpec, dry_run: bool = False) -> list[str]:
    return [sys.executable, "-m", "wandb", "sync", *(["--dry-run"] if dry_run else []),
            *(["--project", settings.project] if settings.project else []),
            *(["--entity", settings.entity] if settings.entity else []), *map(str, runs)]


def sync(sweep_dir: Path, settings: WandbSpec, dry_run: bool = False,
         run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> int:
    """Upload a sweep's offline runs with `wandb sync`, the key passed in the environment only."""
    runs = offline_runs(sweep_dir)
    if not runs:
        raise UserError(f"{sweep_dir}: no offline W&B runs under {Path(sweep_dir) / WANDB_DIR}; "
                        "nothing to upload (was the sweep run with tracking.wandb.mode: disabled?)")
    env = dict(os.environ)
    key = secret.from_env(settings.api_key_env)
    if key:
        env["WANDB_API_KEY"] = key
    if not dry_run and not has_api_key(settings, env):
        raise UserError(f"tracking.wandb.api_key_env: {settings.api_key_env} is not set; export your W&B "
                        f"API key in it (or run `wandb login`), then rerun `tuner sync {sweep_dir}`")
    return run(sync_command(runs, settings, dry_run), env=env).returncode
