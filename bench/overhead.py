"""What a sweep costs beyond training, in seconds a user can compare across machines.

    python bench/overhead.py [--spec search_spaces/tiny.yaml] [--set key.path=value ...] [--no-long]

Runs the spec's sweep for real (local Ray, Optuna, ASHA, W&B offline as shipped) in a temporary
directory, its data prepared beforehand (preparing is `bench/prepare.py`'s subject), and reads each
trial's record (start and end times, its time by part) and the search's wall time:

- `startup_s`: from the sweep's start (`run_sweep` called) to the first training step of its first
  trial: spec, lock, study, Ray's start, the first worker's start and imports, data and model load;
- `trial_fixed_s`: per trial, its wall time (start to end, as the driver saw it) less its training
  and evaluation time, the median over trials: `first` for a worker's first trial (it starts the
  process and imports torch and transformers), `reused` for the trials a reused worker runs after;
- `teardown_s`: from the last trial's end to the search's end (Ray's shutdown included);
- `overhead`: 1 - training-step time / (search wall time x concurrent trial slots), for the spec as
  given (`tiny`, no target) and, unless --no-long, for a workload whose trials train >= 60 s each
  (`overhead_long`: the tiny preset at 15 epochs, batch 8, no early stopping, through `--set`).
  `startup_parts` splits `startup_s`: before Ray, Ray's start, Tune's set-up until the first trial starts,
  that worker's start and imports, its data and model load.

Targets: `trial_fixed_s.reused` <= 1.0 s, `startup_s` <= 15 s on this machine, `overhead_long` <=
0.05. Prints a Markdown table and, last, a JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import seconds, spans, timed_search  # bench/, beside this script

# Trials that train >= 60 s each on 2 cores (two at a time): 15 epochs of the tiny preset's corpus.
LONG = ["search.num_samples=4", "search.space.num_train_epochs={type: int, low: 15, high: 15}",
        "search.baseline.num_train_epochs=15",
        ("search.space.per_device_train_batch_size={type: categorical, choices: [8]}"),
        "scheduler=none", "promote.num_prompts=0", "promote.top_k=1", "promote.evaluate_base=false"]


def run(spec_path: str, storage: Path, name: str, overrides: list[str]) -> dict:
    """One sweep after its data is prepared: startup, per-trial fixed cost, teardown, overhead."""
    from tuner import constants as C
    from tuner import data, pipeline, records, sweep

    spec = pipeline.resolve_spec(spec_path, [f"storage={storage / name}", *overrides], name)
    data.prepare(spec, spec.sweep_dir)  # cached: the sweep below reuses it
    started = time.time()
    with timed_search() as walls, spans(sweep, "init_ray") as ray:
        result = pipeline.run_sweep(spec_path, overrides=[f"storage={storage / name}", *overrides], name=name)
    search_end = walls[-1][1]  # when the search returned (Ray shut down)
    ray_start, ray_end = ray[-1]
    found = records.load_all(result.sweep_dir)
    timing = {r.trial_id: r.timing or {} for r in found}
    first_step = min(r.started_at + sum(timing[r.trial_id].get(k, 0.0) for k in (C.TIME_START, C.TIME_DATA,
                                                                                 C.TIME_MODEL)) for r in found)
    first = min(found, key=lambda r: r.started_at)
    parts = {"before_ray": ray_start - started, "ray_start": ray_end - ray_start,
             "tune_setup": first.started_at - ray_end,
             "worker_start_and_imports": timing[first.trial_id].get(C.TIME_START, 0.0),
             "data_and_model": sum(timing[first.trial_id].get(k, 0.0) for k in (C.TIME_DATA, C.TIME_MODEL))}
    fixed = {"first": [], "reused": []}
    for r in found:
        t = timing[r.trial_id]
        kind = "first" if t.get(C.TIME_START, 0.0) > 0 else "reused"
        fixed[kind].append((r.ended_at - r.started_at) - t.get(C.TIME_TRAIN, 0.0) - t.get(C.TIME_EVAL, 0.0))
    slots = int(spec.search.max_concurrent_trials or 1)
    train = sum(t.get(C.TIME_TRAIN, 0.0) for t in timing.values())
    return {"trials": len(found), "slots": slots, "wall_s": seconds(walls), "startup_s": first_step - started,
            "startup_parts": parts,
            "trial_fixed_s": {k: statistics.median(v) if v else None for k, v in fixed.items()},
            "trial_fixed_n": {k: len(v) for k, v in fixed.items()},
            "teardown_s": search_end - max(r.ended_at for r in found),
            "train_s_per_trial": statistics.median(t.get(C.TIME_TRAIN, 0.0) for t in timing.values()),
            "overhead": 1 - train / (seconds(walls) * slots)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default=str(ROOT / "search_spaces" / "tiny.yaml"))
    parser.add_argument("--set", action="append", default=[], help="spec overrides (key.path=value)")
    parser.add_argument("--no-long", action="store_true", help="skip the >= 60 s-per-trial workload")
    args = parser.parse_args()

    rows = {}
    with tempfile.TemporaryDirectory(prefix="tuner-overhead-") as tmp:
        rows["tiny (as given)"] = run(args.spec, Path(tmp), "overhead-tiny", list(args.set))
        if not args.no_long:
            rows["long (trials train >= 60 s)"] = run(args.spec, Path(tmp), "overhead-long", [*LONG, *args.set])

    print(f"Workload: {args.spec} {' '.join(args.set)}; long: {' '.join(LONG)}\n")
    print("| sweep | trials | slots | training s per trial | startup s | fixed s per trial, first (n) "
          "| fixed s per trial, reused (n) | teardown s | search wall s | overhead |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, r in rows.items():
        fixed = {k: (f"{v:.2f}" if v is not None else "-") + f" ({r['trial_fixed_n'][k]})"
                 for k, v in r["trial_fixed_s"].items()}
        print(f"| {label} | {r['trials']} | {r['slots']} | {r['train_s_per_trial']:.1f} | {r['startup_s']:.1f} | "
              f"{fixed['first']} | {fixed['reused']} | {r['teardown_s']:.1f} | {r['wall_s']:.1f} | "
              f"{r['overhead']:.1%} |")
    print("\nStart-up, s: " + "; ".join(f"{label}: " + ", ".join(f"{k.replace('_', ' ')} {v:.1f}"
                                                                  for k, v in r["startup_parts"].items())
                                         for label, r in rows.items()))
    tiny = rows["tiny (as given)"]
    out = {"startup_s": round(tiny["startup_s"], 2),
           "startup_parts": {k: round(v, 2) for k, v in tiny["startup_parts"].items()},
           "trial_fixed_s": {k: round(v, 3) if v is not None else None for k, v in tiny["trial_fixed_s"].items()},
           "teardown_s": round(tiny["teardown_s"], 2), "overhead_tiny": round(tiny["overhead"], 4)}
    if "long (trials train >= 60 s)" in rows:
        long = rows["long (trials train >= 60 s)"]
        out.update(overhead_long=round(long["overhead"], 4), long_train_s_per_trial=round(long["train_s_per_trial"], 1),
                   long_trial_fixed_s={k: round(v, 3) if v is not None else None
                                       for k, v in long["trial_fixed_s"].items()})
    out["targets"] = {"trial_fixed_s.reused <= 1.0": (out["trial_fixed_s"]["reused"] or 0) <= 1.0,
                      "startup_s <= 15": out["startup_s"] <= 15,
                      **({"overhead_long <= 0.05": out["overhead_long"] <= 0.05} if "overhead_long" in out else {})}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
