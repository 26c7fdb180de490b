"""The driver at scale: does its work per trial report stay flat over a 1,000-trial sweep?

    python bench/driver_scale.py [--trials 1000] [--reports 20] [--concurrency 8]

One sweep through the public `tuner.run_sweep(trial_fn=…)` on a local Ray runtime started here
(`--concurrency` logical CPUs, one per trial), the tiny preset's data, no scheduler (every trial
makes all its reports), W&B offline. The trials are instant: each report comes with a checkpoint
made of hard links to the tiny model's files (a real, loadable checkpoint that costs no copy), so
what is measured is the driver: Tune's loop, the searcher, the ledger, retention, the mirror.

- `per_report_ms`: the driver's time for each report, Tune's `TuneController._on_training_result`
  from entry to return (the scheduler, the searcher, the ledger's record, checkpoint registration
  and, at a trial's last report, its end: retention, the leaderboard, the tracker), by the trial's
  place in arrival order; p50 and p99 over the reports of trials 1–100 and of the last 100.
  Target: p99 of the last 100 within 1.5× that of the first 100.
- `attribution`: per window, where the handler's time went: the searcher's and the ledger's methods
  inside it and the garbage collector's pauses, in ms per report, and their shares of the slowest 1%
  of reports (what sets p99).
- `pace`: per window, the wall clock per report while its trials ran (the driver is the bottleneck
  of instant trials: this is its whole cost per report, snapshots included), and Tune's experiment
  snapshots then (`TuneController.save_to_dir`): how many, their mean, their share of the time.
- `suggest_ms`: Optuna's TPE proposing each trial (grows with the trials it has seen, by design),
  reported, no target.
- `driver_peak_rss_mb`: the driver process's peak resident memory (`ru_maxrss`). Target: ≤ 1 GB.
- `checkpoints_max`: the most checkpoint folders on disk at any moment, sampled every 0.2 s while
  the sweep runs, against `promote.keep_best` + concurrent trials (+ the baseline's: none here);
  with how many trials held them then, and the most one trial held.
- `sweep_dir_mb`, `sweep_dir_files`: the sweep directory at the end; `sweep_dir_parts`, the same
  for each of its entries of 1 MB or 10 files at least.

Prints a Markdown table and, last, a JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import spans  # noqa: E402


class Instant:
    """A trial that reports `reports` times at once, each report with a checkpoint of hard links."""

    def __init__(self, reports: int, model_dir: str):
        self.reports, self.model_dir = reports, model_dir

    def __call__(self, config: dict, report) -> None:
        lr = float(config["learning_rate"])
        for step in range(1, self.reports + 1):
            with tempfile.TemporaryDirectory(prefix="ckpt-") as folder:  # the report persists a copy
                for name in os.listdir(self.model_dir):
                    os.link(os.path.join(self.model_dir, name), os.path.join(folder, name))
                report({"eval_loss": 6.0 - step * 0.01 + abs(np.log10(lr) + 4) * 0.1, "tokens_seen": 1000 * step,
                        "step": step}, folder)


def count_checkpoints(folder: Path) -> int:
    return sum(1 for _ in folder.rglob("checkpoint_*")) if folder.exists() else 0


class Sampler(threading.Thread):
    """The most checkpoint folders the sweep directory held at any moment."""

    def __init__(self, folder: Path, every: float = 0.2):
        super().__init__(daemon=True)
        self.folder, self.every, self.most, self.samples = folder, every, 0, 0
        self.trials_at_most, self.most_in_one_trial = 0, 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                found = [p.parent.name for p in self.folder.rglob("checkpoint_*")] if self.folder.exists() else []
                per_trial = max((found.count(t) for t in set(found)), default=0)
                if len(found) > self.most:
                    self.most, self.trials_at_most = len(found), len(set(found))
                self.most_in_one_trial = max(self.most_in_one_trial, per_trial)
                self.samples += 1
            except OSError:  # a folder removed mid-walk
                pass
            self.done.wait(self.every)


class Parts:
    """Where the report handler's time goes: the searcher's and the ledger's methods that run inside
    it, and the garbage collector's pauses (which land in whichever call is running)."""

    METHODS = (("tuner.searcher", "TruthfulOptunaSearch", "on_trial_result"),
               ("tuner.searcher", "TruthfulOptunaSearch", "on_trial_complete"),
               ("tuner.ledger", "TrialLedger", "on_trial_result"),
               ("tuner.ledger", "TrialLedger", "on_checkpoint"),
               ("tuner.ledger", "TrialLedger", "on_trial_complete"))

    def __init__(self) -> None:
        self.spans: dict[str, list[tuple[float, float]]] = {"gc": []}
        self.originals: list[tuple[type, str, object]] = []
        self._gc_start = 0.0

    def start(self) -> None:
        import gc
        import importlib

        for module, cls_name, method in self.METHODS:
            cls = getattr(importlib.import_module(module), cls_name)
            name = f"{cls_name}.{method}"
            self.spans[name] = []
            self.originals.append((cls, method, getattr(cls, method)))
            setattr(cls, method, self._wrap(getattr(cls, method), self.spans[name]))
        gc.callbacks.append(self._gc)

    def stop(self) -> None:
        import gc

        for cls, method, function in self.originals:
            setattr(cls, method, function)
        if self._gc in gc.callbacks:
            gc.callbacks.remove(self._gc)

    @staticmethod
    def _wrap(function, found):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                found.append((start, time.perf_counter()))
        return timed

    def _gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_start = time.perf_counter()
        else:
            self.spans["gc"].append((self._gc_start, time.perf_counter()))

    def share(self, calls: list[tuple[float, float]]) -> dict[str, float]:
        """Per part, its mean time inside the handler calls `calls` (ms per call), then its share of
        the time of the slowest 1% of them."""
        if not calls:
            return {}
        slow = sorted(calls, key=lambda c: c[0] - c[1])[:max(1, len(calls) // 100)]
        out: dict[str, float] = {"handler total": sum(e - b for b, e in calls) / len(calls) * 1000}
        for name, part in self.spans.items():
            out[name] = overlap(calls, part) / len(calls) * 1000
        slow_total = sum(e - b for b, e in slow)
        out["slowest 1%: mean ms"] = slow_total / len(slow) * 1000
        for name, part in self.spans.items():
            out[f"slowest 1%: share in {name}"] = overlap(slow, part) / slow_total
        return out


def overlap(calls: list[tuple[float, float]], spans: list[tuple[float, float]]) -> float:
    """The seconds of `spans` that fall inside `calls` (each list of (start, end))."""
    starts = np.array([b for b, _ in spans]) if spans else np.zeros(0)
    order = np.argsort(starts)
    ordered = [spans[i] for i in order]
    starts = starts[order]
    total = 0.0
    for begin, end in calls:
        i = max(int(np.searchsorted(starts, begin)) - 1, 0)
        while i < len(ordered) and ordered[i][0] < end:
            total += max(0.0, min(end, ordered[i][1]) - max(begin, ordered[i][0]))
            i += 1
    return total


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def folder_size(folder: Path) -> tuple[float, int]:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 2**20, len(files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--reports", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--window", type=int, default=100, help="trials compared at each end")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()

    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import ray
    from ray.tune.execution.tune_controller import TuneController

    from tuner import model, pipeline, records, searcher
    from tuner.spec import load_spec

    ray.init(address="local", num_cpus=args.concurrency, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    root = Path(tempfile.mkdtemp(prefix="driver-scale-"))
    sweep_dir = root / "scale"
    overrides = [f"storage={sweep_dir}", "search.baseline=null", "scheduler=none", "resources.cpus_per_trial=1",
                 f"search.max_concurrent_trials={args.concurrency}", "tracking.wandb.mode=offline",
                 "promote.num_prompts=0", "promote.top_k=1", "promote.evaluate_base=false",
                 "search.stall_timeout=600s"]
    sampler = Sampler(sweep_dir)
    per_report: dict[str, list[float]] = {}
    calls: dict[str, list[tuple[float, float]]] = {}  # each handler call's (start, end), by trial
    original = TuneController._on_training_result

    def timed(self, trial, result):
        start = time.perf_counter()
        try:
            return original(self, trial, result)
        finally:
            end = time.perf_counter()
            per_report.setdefault(trial.trial_id, []).append((end - start) * 1000)
            calls.setdefault(trial.trial_id, []).append((start, end))

    TuneController._on_training_result = timed
    parts = Parts()
    parts.start()
    sampler.start()
    start = time.perf_counter()
    try:
        with spans(searcher.TruthfulOptunaSearch, "suggest") as suggests, \
                spans(TuneController, "save_to_dir") as snapshots:
            pipeline.run_sweep(str(ROOT / "search_spaces" / "tiny.yaml"), name="scale",
                                        num_samples=args.trials, overrides=overrides,
                                        trial_fn=Instant(args.reports, model.resolve("builtin:tiny-gpt2")))
    finally:
        TuneController._on_training_result = original
        parts.stop()
        sampler.done.set()
        sampler.join()
    wall = time.perf_counter() - start
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    found = sorted(records.load_all(sweep_dir), key=lambda r: r.started_at or 0)
    order = [r.trial_id for r in found]
    first = [ms for t in order[:args.window] for ms in per_report.get(t, [])]
    last = [ms for t in order[-args.window:] for ms in per_report.get(t, [])]
    suggest_ms = [(end - begin) * 1000 for begin, end in suggests]
    windows = {"first": found[:args.window], "last": found[-args.window:]}
    pace = {}
    for name, trials in windows.items():  # the wall clock per report while the window's trials ran
        begin, end = min(r.started_at for r in trials), max(r.ended_at for r in trials)
        reports = sum(1 for r in found for h in r.history if begin <= h["reported_at"] <= end)
        taken = [(b, e) for b, e in snapshots if begin <= b <= end]
        pace[name] = {"wall_ms_per_report": (end - begin) / max(reports, 1) * 1000,
                      "snapshots": len(taken), "snapshot_ms_mean": float(np.mean([(e - b) * 1000 for b, e in taken]))
                      if taken else 0.0, "snapshot_share": sum(e - b for b, e in taken) / (end - begin)}
    attribution = {name: parts.share([c for t in trials for c in calls.get(t, [])])
                   for name, trials in (("first", order[:args.window]), ("last", order[-args.window:]))}
    keep = load_spec(str(ROOT / "search_spaces" / "tiny.yaml"), overrides).promote.keep_best
    size_mb, files = folder_size(sweep_dir)
    parts = {entry.name: [round(v, 1) for v in folder_size(entry)] if entry.is_dir()
             else [round(entry.stat().st_size / 2**20, 1), 1] for entry in sorted(sweep_dir.iterdir())}
    bound = keep + args.concurrency
    figures = {
        "trials": len(found), "reports": sum(len(v) for v in per_report.values()), "concurrency": args.concurrency,
        "wall_s": round(wall, 1),
        "per_report_ms": {"first": {"p50": percentile(first, 50), "p99": percentile(first, 99), "n": len(first)},
                          "last": {"p50": percentile(last, 50), "p99": percentile(last, 99), "n": len(last)}},
        "p99_ratio": percentile(last, 99) / percentile(first, 99),
        "pace": pace, "attribution": attribution,
        "p50_ratio_interval": ratio_interval(first, last),
        "suggest_ms": {"first": percentile(suggest_ms[:args.window], 50),
                       "last": percentile(suggest_ms[-args.window:], 50)},
        "driver_peak_rss_mb": round(peak_rss_mb, 1),
        "checkpoints_max": sampler.most, "checkpoints_bound": bound, "checkpoint_samples": sampler.samples,
        "trials_holding_checkpoints_at_max": sampler.trials_at_most,
        "most_checkpoints_of_one_trial": sampler.most_in_one_trial,
        "checkpoints_at_end": count_checkpoints(sweep_dir),
        "sweep_dir_mb": round(size_mb, 1), "sweep_dir_files": files,
        "sweep_dir_parts": {name: {"mb": mb, "files": n} for name, (mb, n) in parts.items() if mb >= 1 or n >= 10},
        "targets": {"p99_flat": percentile(last, 99) <= 1.5 * percentile(first, 99),
                    "rss_le_1gb": peak_rss_mb <= 1024, "checkpoints_bounded": sampler.most <= bound},
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
    }
    print("| figure | trials 1–100 | last 100 |\n| --- | --- | --- |")
    for key in ("p50", "p99"):
        print(f"| per-report driver time {key} (ms) | {figures['per_report_ms']['first'][key]:.2f} | "
              f"{figures['per_report_ms']['last'][key]:.2f} |")
    print(f"| TPE suggest p50 (ms) | {figures['suggest_ms']['first']:.1f} | {figures['suggest_ms']['last']:.1f} |")
    for key, label in (("wall_ms_per_report", "wall clock per report (ms)"), ("snapshots", "Tune snapshots"),
                       ("snapshot_ms_mean", "snapshot mean (ms)"),
                       ("snapshot_share", "share of the time in snapshots")):
        print(f"| {label} | {pace['first'][key]:.3g} | {pace['last'][key]:.3g} |")
    print("\n" + ", ".join(f"{name} {mb:.0f} MB in {n} files" for name, (mb, n) in parts.items() if mb >= 1 or n >= 10))
    print("\n| where the handler's time went (ms per report; slowest 1%: share) | trials 1–100 | last 100 |\n"
          "| --- | --- | --- |")
    for key in attribution["first"]:
        print(f"| {key} | {attribution['first'][key]:.3g} | {attribution['last'][key]:.3g} |")
    print(f"\npeak driver RSS {peak_rss_mb:.0f} MB; checkpoints on disk at most {sampler.most} (bound {bound}); "
          f"sweep directory {size_mb:.0f} MB in {files} files; {len(found)} trials in {wall:.0f} s")
    line = json.dumps(figures)
    print(line)
    if args.out:
        args.out.write_text(line + "\n")
    ray.shutdown()
    shutil.rmtree(root, ignore_errors=True)


def ratio_interval(first: list[float], last: list[float]) -> dict[str, float]:
    """The last window's median per-report time over the first's, with a 95% bootstrap interval
    (the reports of each window resampled)."""
    rng = np.random.default_rng(0)
    a, b = np.array(first), np.array(last)
    ratios = np.sort([np.median(rng.choice(b, b.size)) / np.median(rng.choice(a, a.size)) for _ in range(2000)])
    return {"median": float(np.median(b) / np.median(a)), "lo": float(ratios[50]), "hi": float(ratios[1949])}


if __name__ == "__main__":
    main()
