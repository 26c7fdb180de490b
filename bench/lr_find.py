"""Does a sweep inside lr-find's bounds reach the full-range sweep's best with less compute?

    python bench/lr_find.py [--trials 16] [--seeds 0 1 2] [--steps 100] [--set key=value ...]

For each seed, side by side in one run: `tuner lr-find` on the spec (its trial seeded by the seed),
then two real sweeps (local Ray, Optuna, ASHA, the spec's space and data, W&B off, no baseline trial,
a light promotion) of `--trials` trials, the sampler seeded by the seed:

- `full`: the spec's own `search.space.learning_rate`;
- `narrowed`: the same sweep with `learning_rate` searched between lr-find's bounds (log scale); the
  range test's training tokens are counted as spent before its first trial.

Compute is training tokens, reports taken in the order the driver received them (`bench/search.py`'s
curve). Per seed: each arm's best validation loss and tokens; `full_to_best`, the tokens the full
sweep had used when it reached its own best; `narrowed_to_match`, the tokens (the range test's
included) the narrowed sweep had used when its best first reached the full sweep's best (inf: never);
`ratio` = narrowed_to_match / full_to_best (< 1: the narrowed sweep got there with less). Medians over
seeds with a 95% bootstrap interval. Prints a Markdown table and, last, a JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import bootstrap  # bench/, beside this script
from search import curve, tokens_to_reach

QUIET = ["search.baseline=null", "tracking.wandb.mode=disabled", "promote.num_prompts=0", "promote.top_k=1",
         "promote.evaluate_base=false"]


def sweep(spec: str, name: str, seed: int, trials: int, root: Path, extra: list[str]) -> list[tuple[int, float, int]]:
    from tuner import pipeline

    result = pipeline.run_sweep(spec, name=name, num_samples=trials, overrides=[
        f"storage={root / name}", f"search.seed={seed}", *QUIET, *extra])
    return curve(result.sweep_dir)


def one_seed(spec: str, seed: int, trials: int, steps: int, root: Path, extra: list[str]) -> dict:
    """The range test and both sweeps of one seed, and their figures."""
    from tuner import lrfind

    # as a user runs it: the spec's own baseline (if any) sets the batch the range test trains at
    found = lrfind.find(Path(spec), [f"storage={root / f'lrfind-{seed}'}", f"train.seed={seed}", *extra], steps=steps)
    if found.suggestion is None:
        raise SystemExit(f"seed {seed}: lr-find suggested nothing (the loss never fell)")
    low, high = found.suggestion.low, found.suggestion.high
    full = sweep(spec, f"full-{seed}", seed, trials, root, extra)
    bounds = f"search.space.learning_rate={{type: float, low: {low:.3e}, high: {high:.3e}, log: true}}"
    narrowed = [(used + found.curve.tokens, best, holder)
                for used, best, holder in sweep(spec, f"narrowed-{seed}", seed, trials, root, [*extra, bounds])]
    target = full[-1][1]
    full_to_best, _ = tokens_to_reach(full, target)
    narrowed_to_match, _ = tokens_to_reach(narrowed, target)
    return {"seed": seed, "low": low, "high": high, "lrfind_tokens": found.curve.tokens,
            "lrfind_steps": len(found.curve.lrs), "full_best": target, "full_tokens": full[-1][0],
            "full_to_best": full_to_best, "narrowed_best": narrowed[-1][1], "narrowed_tokens": narrowed[-1][0],
            "narrowed_to_match": narrowed_to_match, "ratio": narrowed_to_match / full_to_best}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default=str(ROOT / "search_spaces" / "tiny.yaml"))
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=100, help="lr-find's steps")
    parser.add_argument("--set", action="append", default=[], help="extra spec overrides for every run")
    args = parser.parse_args()

    start = time.time()
    with tempfile.TemporaryDirectory(prefix="tuner-lrfind-bench-") as tmp:
        rows = [one_seed(args.spec, seed, args.trials, args.steps, Path(tmp), args.set) for seed in args.seeds]
    ratio = bootstrap([r["ratio"] for r in rows])

    def show(x: float) -> str:
        return f"{x:,.0f}" if math.isfinite(x) else "never"

    print(f"Workload: {args.spec} {' '.join(args.set)}, {args.trials} trials per sweep, lr-find {args.steps} "
          f"steps, seeds {args.seeds}, CPU, {time.time() - start:.0f} s\n")
    print("| seed | lr-find bounds | lr-find tokens | full: best | full: tokens | full: tokens to its best | "
          "narrowed: best | narrowed: tokens (with lr-find) | narrowed: tokens to full's best | ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['seed']} | [{r['low']:.2g}, {r['high']:.2g}] | {r['lrfind_tokens']:,} | {r['full_best']:.4f} | "
              f"{r['full_tokens']:,} | {show(r['full_to_best'])} | {r['narrowed_best']:.4f} | "
              f"{r['narrowed_tokens']:,} | {show(r['narrowed_to_match'])} | {r['ratio']:.3f} |")

    def median(key: str) -> float:
        return statistics.median(r[key] for r in rows)

    print(f"\nmedians: full best {median('full_best'):.4f}, narrowed best {median('narrowed_best'):.4f}, "
          f"full tokens {show(median('full_tokens'))}, narrowed tokens {show(median('narrowed_tokens'))}; "
          f"ratio {ratio['median']:.3f} [95% CI {ratio['lo']:.3f}, {ratio['hi']:.3f}]")

    def finite(x: object) -> object:
        return x if not isinstance(x, float) or math.isfinite(x) else "inf"

    print(json.dumps({"ratio": {k: finite(v) for k, v in ratio.items()},
                      "seeds": [{k: finite(v) for k, v in r.items()} for r in rows]}))


if __name__ == "__main__":
    main()
