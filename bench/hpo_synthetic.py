"""Search quality with a known optimum: search arms on a synthetic learning curve.

    python bench/hpo_synthetic.py [--seeds 20] [--trials 30] [--concurrency 2]

Every sweep goes through the public `tuner.run_sweep(trial_fn=…)` on one local Ray runtime (started
here, shared by all the sweeps), with the tiny preset's data and report points, so ASHA's rungs and
Optuna's bookkeeping are the real ones; only the training is simulated. Arms, each over the same
seeds (a seed is the sampler's seed and the curve noise's):

- `random`: random search without early stopping;
- `random_asha`: random search, ASHA;
- `tpe_asha`: TPE + ASHA, as tuner tells Optuna (ASHA's stops PRUNED with their intermediate
  values, failures FAIL, a completed trial's value its best report);
- `tpe_asha_stock`: TPE + ASHA, as Ray's stock `OptunaSearch` tells it (every ended trial COMPLETE
  at its last reported value);
- `gp_asha`, `nsga2_asha`: Optuna's GP sampler (the same 4 random start-up trials as TPE) and
  NSGA-II (generations of 10), ASHA; both model only the trials that completed;
- `grid_asha`: a 30-point grid (`GRID`: the learning rate by decades, two batch sizes, three
  warm-ups, 2 epochs) in a seeded order, ASHA; it needs `--trials` ≤ 30.
- `tpe_asha_warm`: `tpe_asha` with `search.warm_start` from a `tpe_asha` sweep of the same size on
  the shifted task (`SHIFT`: every batch size's best learning rate ×2, the best warm-up 0.06 → 0.09;
  its own seed), which runs first, once per seed, and whose tokens are not counted: it stands for
  last week's sweep. Its trials are TPE's priors and its best 3 configs run first.
  `tpe_asha_warm_priors`: the same with `search.warm_start_top_k=0` (the priors alone).
  `tpe_asha_warm_full`, `tpe_asha_warm_full_priors`: the same from a TPE sweep that trained every
  trial to its end (no ASHA), whose best trials are the ones best at the end of training.

The learning-curve family (`curve`), with T the train split's tokens per epoch and t the tokens
a trial has trained on (reports every `train.report_every_tokens`, each instant):

    lr*(b)   = 1e-3 · sqrt(b / 16)                      the best learning rate grows with the batch
    L∞       = 2 + 0.25·log10(lr / lr*(b))² + 2·(w − 0.06)² + 0.01·log2(b / 16)²
    τ        = 0.15·T · sqrt(lr*(b) / lr)                a larger rate learns faster early on
    t'       = max(0, t − 0.5·w·e·T)                     warm-up delays progress
    L(t)     = L∞ + 2.5·(1 + t'/τ)^−0.7 + 0.05·max(0, t/T − 1)²    (the last term: over-fitting)
    observed = L(t) + N(0, 0.01²), seeded by the sweep's seed and the trial's hyperparameters

with lr the learning rate, b the batch size, w the warm-up ratio and e the epochs (the space below).
Large rates win early and lose late, so a rung's ranking is not the final one: the case where what
the scheduler tells the sampler matters. The optimum (noise-free loss at the end of training,
minimised over the space on a fine grid) is known: `final_regret` is the noise-free loss of each
sweep's best trial at its best report, less the optimum.

- `compute_to_match` per arm: the training tokens the arm had used (its reports in arrival order)
  when its best observed loss first reached `random`'s final best, as a fraction of all of
  `random`'s tokens; never reached counts as inf; median and a 95% bootstrap interval over seeds.
- `final_regret` per arm: median and 95% bootstrap interval; `tpe_asha` against `tpe_asha_stock`
  paired over seeds: a one-sided sign test and Wilcoxon signed-rank test.
- `curves`: per arm, the median over seeds of the best regret so far against tokens used.

Prints Markdown tables and, last, a JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import arrival_order, bootstrap, trial_records  # bench/, beside this script

SPACE = ("search.space={learning_rate: {type: float, low: 1.0e-5, high: 1.0e-1, log: true}, "
         "per_device_train_batch_size: {type: categorical, choices: [8, 16, 32, 64]}, "
         "warmup_ratio: {type: float, low: 0.0, high: 0.2}, num_train_epochs: {type: int, low: 1, high: 4}}")
# The grid a user would write blind for 30 trials: the learning rate by decades, two batch sizes, three
# warm-ups, the epochs at the middle of their range.
GRID = ("search.space={learning_rate: {type: categorical, choices: [1.0e-5, 1.0e-4, 1.0e-3, 1.0e-2, 1.0e-1]}, "
        "per_device_train_batch_size: {type: categorical, choices: [16, 64]}, "
        "warmup_ratio: {type: float, low: 0.0, high: 0.2, step: 0.1}, num_train_epochs: 2}")
GRID_FIXED = {"num_train_epochs": 2}  # the grid's one fixed value: its trials' records don't hold it
ARMS = {
    "random": ["search.sampler=random", "scheduler.type=none"],
    "random_asha": ["search.sampler=random", "scheduler.type=asha"],
    "tpe_asha": ["search.sampler=tpe", "scheduler.type=asha"],
    "tpe_asha_stock": ["search.sampler=tpe", "scheduler.type=asha"],
    "gp_asha": ["search.sampler=gp", "scheduler.type=asha"],
    "nsga2_asha": ["search.sampler=nsga2", "search.n_startup_trials=10", "scheduler.type=asha"],
    "grid_asha": ["search.sampler=grid", "scheduler.type=asha", GRID],
    "tpe_asha_warm": ["search.sampler=tpe", "scheduler.type=asha", "search.warm_start_top_k=3"],
    "tpe_asha_warm_priors": ["search.sampler=tpe", "scheduler.type=asha", "search.warm_start_top_k=0"],
    "tpe_asha_warm_full": ["search.sampler=tpe", "scheduler.type=asha", "search.warm_start_top_k=3"],
    "tpe_asha_warm_full_priors": ["search.sampler=tpe", "scheduler.type=asha", "search.warm_start_top_k=0"],
}
# A warm arm → the arm its earlier sweep ran, on the shifted task.
WARM = {"tpe_asha_warm": "tpe_asha", "tpe_asha_warm_priors": "tpe_asha", "tpe_asha_warm_full": "tpe",
        "tpe_asha_warm_full_priors": "tpe"}
SOURCES = {"tpe_asha": ["search.sampler=tpe", "scheduler.type=asha"],
           "tpe": ["search.sampler=tpe", "scheduler.type=none"]}
SHIFT = (np.log10(2.0), 0.03)  # the source task's move: log10 of the best rate's factor, the best warm-up's
NOISE = 0.01


def curve(lr: float, batch: int, warmup: float, epochs: int, tokens: float, per_epoch: float,
          shift: tuple[float, float] = (0.0, 0.0)) -> float:
    """The noise-free validation loss after `tokens` training tokens (see the module's docstring);
    `shift` moves the optimum: log10 of the best rate's factor, and the best warm-up's offset."""
    best_lr = 1e-3 * np.sqrt(batch / 16) * 10 ** shift[0]  # numpy throughout: `optimum` passes whole grids
    floor = (2 + 0.25 * np.log10(lr / best_lr) ** 2 + 2 * (warmup - 0.06 - shift[1]) ** 2
             + 0.01 * np.log2(batch / 16) ** 2)
    tau = 0.15 * per_epoch * np.sqrt(best_lr / lr)
    progress = np.maximum(0.0, tokens - 0.5 * warmup * epochs * per_epoch)
    return floor + 2.5 * (1 + progress / tau) ** -0.7 + 0.05 * np.maximum(0.0, tokens / per_epoch - 1) ** 2


def optimum(per_epoch: float) -> float:
    """The least noise-free final loss over the space (a 4001 x 2001 grid of rate x warm-up per batch
    size and epoch count: fine to about 1e-5)."""
    lr, warmup = np.meshgrid(np.geomspace(1e-5, 1e-1, 4001), np.linspace(0.0, 0.2, 2001))
    return float(min(curve(lr, batch, warmup, epochs, epochs * per_epoch, per_epoch).min()
                     for batch in (8, 16, 32, 64) for epochs in (1, 2, 3, 4)))


@dataclasses.dataclass
class Synthetic:
    """A trial function: reports the curve's noisy value every `every` tokens to the end of training."""

    per_epoch: int
    every: int
    seed: int
    shift: tuple[float, float] = (0.0, 0.0)

    def __call__(self, config: dict, report) -> None:
        lr, batch = float(config["learning_rate"]), int(config["per_device_train_batch_size"])
        warmup, epochs = float(config["warmup_ratio"]), int(config["num_train_epochs"])
        key = f"{self.seed}:{lr!r}:{batch}:{warmup!r}:{epochs}".encode()
        rng = random.Random(int.from_bytes(hashlib.sha256(key).digest()[:8], "big"))
        total = epochs * self.per_epoch
        points = list(range(self.every, total, self.every)) + [total]
        for tokens in points:
            loss = float(curve(lr, batch, warmup, epochs, tokens, self.per_epoch, self.shift))
            report({"eval_loss": loss + rng.gauss(0, NOISE),
                    "tokens_seen": tokens})


def run_arm(arm: str, seed: int, trials: int, concurrency: int, root: Path, template: Path, per_epoch: int,
            every: int, extra: list[str]) -> dict:
    """One sweep; its reports in arrival order: (tokens used so far, best observed, its trial)."""
    from tuner import pipeline

    name = f"{arm}-{seed}"
    shutil.copytree(template / "data", root / name / "data", copy_function=_link)  # prepared once
    overrides = sweep_overrides(root / name, seed, concurrency, [*ARMS[arm], *extra])
    if arm in WARM:
        source = source_sweep(WARM[arm], seed, trials, concurrency, root, template, per_epoch, every, extra)
        overrides.append(f"search.warm_start={source}")
    with stock_optuna(arm == "tpe_asha_stock"):
        start = time.perf_counter()
        result = pipeline.run_sweep(str(ROOT / "search_spaces" / "tiny.yaml"), name=name, num_samples=trials,
                                    overrides=overrides, trial_fn=Synthetic(per_epoch, every, seed))
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "reports": reports(result.sweep_dir)}


def sweep_overrides(storage: Path, seed: int, concurrency: int, arm: list[str]) -> list[str]:
    """What every benchmark sweep sets, then the arm's own overrides."""
    return [f"storage={storage}", f"search.seed={seed}", "search.baseline=null", SPACE,
            f"search.max_concurrent_trials={concurrency}", "tracking.wandb.mode=disabled", "promote.num_prompts=0",
            *arm]


def source_sweep(kind: str, seed: int, trials: int, concurrency: int, root: Path, template: Path, per_epoch: int,
                 every: int, extra: list[str]) -> Path:
    """A warm arm's earlier sweep (`SOURCES[kind]`) on the shifted task with its own seed, run once per seed."""
    from tuner import pipeline

    name = f"source-{kind}-{seed}"
    if not (root / name).exists():
        shutil.copytree(template / "data", root / name / "data", copy_function=_link)
        overrides = sweep_overrides(root / name, 1000 + seed, concurrency, [*SOURCES[kind], *extra])
        pipeline.run_sweep(str(ROOT / "search_spaces" / "tiny.yaml"), name=name, num_samples=trials,
                           overrides=overrides, trial_fn=Synthetic(per_epoch, every, 1000 + seed, SHIFT))
    return root / name


def _link(src: str, dst: str) -> None:
    try:
        Path(dst).hardlink_to(src)
    except OSError:
        shutil.copy2(src, dst)


class stock_optuna:
    """While on, tuner's searcher tells Optuna what Ray's stock `OptunaSearch` does."""

    def __init__(self, on: bool) -> None:
        self.on = on

    def __enter__(self) -> None:
        from ray.tune.search.optuna import OptunaSearch

        from tuner.searcher import TruthfulOptunaSearch

        self.saved = {k: TruthfulOptunaSearch.__dict__[k] for k in ("on_trial_result", "on_trial_complete")}
        if self.on:
            for k in self.saved:
                setattr(TruthfulOptunaSearch, k, getattr(OptunaSearch, k))

    def __exit__(self, *exc) -> None:
        from tuner.searcher import TruthfulOptunaSearch

        for k, v in self.saved.items():
            setattr(TruthfulOptunaSearch, k, v)


def reports(sweep_dir: Path) -> list[tuple[int, float, dict, int]]:
    """Every report in arrival order: (tokens it added, observed loss, its trial's config, tokens seen)."""
    return [(added, point["eval_loss"], {**GRID_FIXED, **record["params"]}, int(point["tokens_seen"]))
            for record, point, added in arrival_order(trial_records(sweep_dir))]


def summarise(rows: list, per_epoch: int, best: float) -> dict:
    """Tokens used and best observed so far after each report; the true regret of the best so far."""
    used, observed, regret, points = 0, math.inf, math.inf, []
    for added, loss, config, tokens in rows:
        used += added
        if loss is not None and math.isfinite(loss) and loss < observed:
            observed = loss
            truth = curve(float(config["learning_rate"]), int(config["per_device_train_batch_size"]),
                          float(config["warmup_ratio"]), int(config["num_train_epochs"]), tokens, per_epoch)
            regret = float(truth) - best
        points.append((used, observed, regret))
    return {"points": points, "tokens": used, "best": observed, "regret": regret}


def paired_tests(ours: list[float], theirs: list[float]) -> dict:
    """One-sided: ours lower than theirs. Sign test over the seeds that differ; Wilcoxon signed-rank."""
    from scipy import stats

    diffs = [a - b for a, b in zip(ours, theirs)]
    lower, higher = sum(d < 0 for d in diffs), sum(d > 0 for d in diffs)
    sign = stats.binomtest(lower, lower + higher, 0.5, alternative="greater").pvalue if lower + higher else 1.0
    nonzero = [d for d in diffs if d != 0]
    wilcoxon = stats.wilcoxon(nonzero, alternative="less").pvalue if nonzero else 1.0
    return {"lower": lower, "higher": higher, "ties": len(diffs) - lower - higher, "sign_p": float(sign),
            "wilcoxon_p": float(wilcoxon), "median_diff": float(np.median(diffs))}


def fmt(stat: dict, digits: int = 3) -> str:
    def show(v: float) -> str:
        return "inf" if not math.isfinite(v) else f"{v:.{digits}f}"

    return f"{show(stat['median'])} [{show(stat['lo'])}, {show(stat['hi'])}]"


def prepare_template(root: Path, extra: list[str]) -> tuple[Path, int, int]:
    """The tiny preset's data, prepared once: its train tokens per epoch and report interval."""
    from tuner import data, pipeline

    spec = pipeline.resolve_spec(str(ROOT / "search_spaces" / "tiny.yaml"), [f"storage={root / 'template'}", *extra],
                                 "template")
    spec.sweep_dir.mkdir(parents=True, exist_ok=True)
    prepared = data.prepare(spec, spec.sweep_dir)
    return spec.sweep_dir, prepared.train_tokens(), spec.train.report_every_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=20, help="seeds 0..N-1")
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--set", action="append", default=[], help="extra spec overrides for every sweep")
    args = parser.parse_args()

    import ray

    from tuner import logs

    logs.setup(verbose=False)
    ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False)
    results: dict[str, dict[int, dict]] = {arm: {} for arm in args.arms}
    try:
        with tempfile.TemporaryDirectory(prefix="tuner-hpo-synthetic-") as tmp:
            template, per_epoch, every = prepare_template(Path(tmp), args.set)
            best = optimum(per_epoch)
            for seed in range(args.seeds):
                for arm in args.arms:
                    run = run_arm(arm, seed, args.trials, args.concurrency, Path(tmp), template, per_epoch, every,
                                  args.set)
                    results[arm][seed] = {**summarise(run["reports"], per_epoch, best), "seconds": run["seconds"]}
                    print(f"seed {seed} {arm}: best {results[arm][seed]['best']:.4f} regret "
                          f"{results[arm][seed]['regret']:.4f} tokens {results[arm][seed]['tokens']:,} "
                          f"({run['seconds']:.0f} s)", file=sys.stderr, flush=True)
    finally:
        ray.shutdown()
    report(args, results, per_epoch, every, best)


def report(args, results: dict, per_epoch: int, every: int, best: float) -> None:
    seeds = sorted(results[args.arms[0]])
    match: dict[str, list[float]] = {}
    for arm in args.arms:
        match[arm] = []
        for seed in seeds:
            base = results["random"][seed]
            reached = next((used for used, observed, _ in results[arm][seed]["points"] if observed <= base["best"]),
                           math.inf)
            match[arm].append(reached / base["tokens"])
    regret = {arm: [results[arm][s]["regret"] for s in seeds] for arm in args.arms}
    tokens = {arm: [results[arm][s]["tokens"] for s in seeds] for arm in args.arms}
    out = {"compute_to_match": {arm: bootstrap(match[arm]) for arm in args.arms},
           "final_regret": {arm: bootstrap(regret[arm]) for arm in args.arms},
           "tokens": {arm: statistics.median(tokens[arm]) for arm in args.arms},
           "never_matched": {arm: sum(not math.isfinite(v) for v in match[arm]) for arm in args.arms},
           "per_seed": {arm: {"compute_to_match": match[arm], "final_regret": regret[arm], "tokens": tokens[arm]}
                        for arm in args.arms}}
    if {"tpe_asha", "tpe_asha_stock"} <= set(args.arms):
        out["tpe_asha_vs_stock"] = paired_tests(regret["tpe_asha"], regret["tpe_asha_stock"])
    for arm in WARM:
        if {arm, "tpe_asha"} <= set(args.arms):
            cold = statistics.median(match["tpe_asha"])
            out[f"{arm}_vs_cold"] = {"ratio_of_medians": statistics.median(match[arm]) / cold if cold else math.nan,
                                     **paired_tests(_capped(match[arm]), _capped(match["tpe_asha"]))}
    grid = [per_epoch * 4 * args.trials * k // 40 for k in range(1, 41)]
    out["curves"] = {"tokens": grid, **{arm: [round(statistics.median(_regret_at(results[arm][s]["points"], g)
                                                                      for s in seeds), 5) for g in grid]
                                        for arm in args.arms}}
    out.update(optimum=best, tokens_per_epoch=per_epoch, report_every_tokens=every, seeds=len(seeds),
               trials=args.trials, concurrency=args.concurrency, machine=f"{platform.machine()}, "
               f"{os.cpu_count()} CPUs", versions=_versions())
    print(f"\nSynthetic curve, optimum {best:.4f}; {len(seeds)} seeds x {args.trials} trials, {args.concurrency} "
          f"at a time; tokens per epoch {per_epoch:,}, a report every {every:,}\n")
    print("| arm | compute_to_match, median [95% CI] | never matched | final regret, median [95% CI] | "
          "tokens used (median) |")
    print("|---|---|---|---|---|")
    for arm in args.arms:
        print(f"| {arm} | {fmt(out['compute_to_match'][arm])} | {out['never_matched'][arm]} of {len(seeds)} | "
              f"{fmt(out['final_regret'][arm], 4)} | {out['tokens'][arm]:,.0f} |")
    if "tpe_asha_vs_stock" in out:
        t = out["tpe_asha_vs_stock"]
        print(f"\ntpe_asha against tpe_asha_stock, final regret paired over seeds: lower on {t['lower']}, higher on "
              f"{t['higher']}, tied on {t['ties']}; median difference {t['median_diff']:+.4f}; one-sided sign test "
              f"p = {t['sign_p']:.3g}, Wilcoxon p = {t['wilcoxon_p']:.3g}")
    for arm in WARM:
        if f"{arm}_vs_cold" in out:
            t = out[f"{arm}_vs_cold"]
            print(f"\n{arm} against tpe_asha (cold), compute_to_match: median ratio {t['ratio_of_medians']:.3f} "
                  f"(target <= 0.5); lower on {t['lower']}, higher on {t['higher']}, tied on {t['ties']} seeds; "
                  f"one-sided sign test p = {t['sign_p']:.3g}, Wilcoxon p = {t['wilcoxon_p']:.3g}")
    print(json.dumps(_finite(out)))


def _capped(values: list[float]) -> list[float]:
    """Never matched (inf) as a number above every reached one, so paired tests can rank it."""
    return [min(v, 1e9) for v in values]


def _regret_at(points: list, tokens: int) -> float:
    """The true regret of the best observed so far once `tokens` had been used (inf before any)."""
    last = math.inf
    for used, _, regret in points:
        if used > tokens:
            break
        last = regret
    return last


def _finite(value):
    """JSON without NaN/Infinity literals: inf as the string "inf"."""
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else "-inf" if value < 0 else "nan"
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _versions() -> dict:
    import optuna
    import ray

    return {"ray": ray.__version__, "optuna": optuna.__version__, "python": platform.python_version()}


if __name__ == "__main__":
    main()
