"""Does the search find good configurations with less compute? TPE + ASHA against random + ASHA
against random search without early stopping.

    python bench/search.py [--trials 30] [--seeds 0 1 2] [--startup 5] [--spec search_spaces/tiny.yaml]

Each method runs real sweeps (local Ray, Optuna, the spec's space and data, W&B off, no baseline
trial) of `--trials` trials for each seed; TPE starts modelling after `--startup` random trials (fewer
than its default 10). Compute is training tokens. Reports are put in the order the driver received
them, so a sweep's compute curve is its best validation loss so far against the training tokens all
its trials had used by then.

`compute_to_match` per method: for each seed, the training tokens the method had used when its best
loss first reached the final best loss of random search without early stopping, divided by all the
tokens that random search used (the denominator is random search's, for every method: "what
fraction of random search's compute did it need to match it"); never reached counts as infinite.
Median over seeds with a 95% bootstrap interval. `matched_in_startup`: the seeds on which TPE's
match came from one of its random start-up trials, drawn before TPE models anything (with the same
seed they are random + ASHA's first draws: the two then match at the same point, and the figure
says nothing of TPE). Prints a Markdown table and, last, a JSON line with the curves.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import arrival_order, bootstrap, trial_records  # bench/, beside this script

METHODS = {
    "tpe_asha": ["search.sampler=tpe", "scheduler.type=asha"],
    "random_asha": ["search.sampler=random", "scheduler.type=asha"],
    "random": ["search.sampler=random", "scheduler.type=none"],
}


def curve(sweep_dir: Path) -> list[tuple[int, float, int]]:
    """(training tokens used so far, best eval loss so far, the order in which the trial holding it
    started) after each report, in arrival order."""
    from tuner import constants as C

    found = trial_records(sweep_dir)
    started = sorted((record.get("started_at") or math.inf, record["trial_id"]) for record in found)
    order = {trial: rank for rank, (_, trial) in enumerate(started)}
    used, best, holder, points = 0, math.inf, -1, []
    for record, point, tokens in arrival_order(found):
        used += tokens
        loss = point[C.EVAL_LOSS]
        if loss is not None and math.isfinite(loss) and loss < best:
            best, holder = loss, order[record["trial_id"]]
        points.append((used, best, holder))
    return points


def tokens_to_reach(points: list[tuple[int, float, int]], target: float) -> tuple[float, int | None]:
    """Tokens used when the best first reached `target`, and the start order of the trial that did."""
    return next(((used, holder) for used, best, holder in points if best <= target), (math.inf, None))


def run(spec_path: str, method: str, seed: int, trials: int, startup: int, root: Path,
        extra: list[str]) -> list[tuple[int, float]]:
    from tuner import pipeline

    name = f"{method}-{seed}"
    result = pipeline.run_sweep(spec_path, name=name, num_samples=trials, overrides=[
        f"storage={root / name}", f"search.seed={seed}", f"search.n_startup_trials={startup}",
        "search.baseline=null", "tracking.wandb.mode=disabled", *METHODS[method], *extra])
    return curve(result.sweep_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default=str(ROOT / "search_spaces" / "tiny.yaml"))
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--startup", type=int, default=5, help="TPE's random start-up trials")
    parser.add_argument("--set", action="append", default=[], help="extra spec overrides for every sweep")
    args = parser.parse_args()

    curves: dict[str, dict[int, list]] = {method: {} for method in METHODS}
    with tempfile.TemporaryDirectory(prefix="tuner-search-bench-") as tmp:
        for seed in args.seeds:
            for method in METHODS:
                curves[method][seed] = run(args.spec, method, seed, args.trials, args.startup, Path(tmp), args.set)

    rows = []
    for seed in args.seeds:
        baseline = curves["random"][seed]
        target, total = baseline[-1][1], baseline[-1][0]
        row = {"seed": seed, "target_loss": target, "random_tokens": total}
        for method in ("tpe_asha", "random_asha"):
            points = curves[method][seed]
            reached, holder = tokens_to_reach(points, target)
            row[f"{method}_best"] = points[-1][1]
            row[f"{method}_tokens"] = points[-1][0]
            row[f"{method}_to_match"] = reached / total
            if method == "tpe_asha":
                row[f"{method}_matched_in_startup"] = holder is not None and holder < args.startup
        rows.append(row)
    match = {m: bootstrap([r[f"{m}_to_match"] for r in rows]) for m in ("tpe_asha", "random_asha")}

    print(f"Workload: {args.spec} {' '.join(args.set)}, {args.trials} trials per sweep, TPE start-up "
          f"{args.startup}, CPU\n")
    print("| seed | random: best loss | random: tokens | TPE+ASHA: best | TPE+ASHA: tokens | "
          "TPE+ASHA: tokens to match | random+ASHA: best | random+ASHA: tokens | random+ASHA: tokens to match |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['seed']} | {r['target_loss']:.4f} | {r['random_tokens']:,} | {r['tpe_asha_best']:.4f} | "
              f"{r['tpe_asha_tokens']:,} | {r['tpe_asha_to_match']:.3f} | {r['random_asha_best']:.4f} | "
              f"{r['random_asha_tokens']:,} | {r['random_asha_to_match']:.3f} |")

    def finite(x: object) -> object:
        return x if not isinstance(x, float) or math.isfinite(x) else "inf"

    def show(x: float) -> str:
        return f"{x:.3f}" if math.isfinite(x) else "inf"

    for m, stat in match.items():
        print(f"\n{m}: compute_to_match {show(stat['median'])} [95% CI {show(stat['lo'])}, {show(stat['hi'])}] of "
              f"random search's tokens" + (f"; matched by one of its random start-up trials on "
                                             f"{sum(r[m + '_matched_in_startup'] for r in rows)} of {len(rows)} seeds"
                                             if m == "tpe_asha" else ""))
    print(json.dumps({"compute_to_match": {m: {k: finite(v) for k, v in stat.items()} for m, stat in match.items()},
                      "seeds": [{k: finite(v) for k, v in row.items()} for row in rows],
                      "curves": {m: {str(s): [[used, finite(best)] for used, best, _ in c] for s, c in by_seed.items()}
                                 for m, by_seed in curves.items()}}))


if __name__ == "__main__":
    main()
