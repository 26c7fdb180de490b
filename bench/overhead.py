"""Where a sweep's trial slots spend their time: training steps against everything else.

    python bench/overhead.py [--spec search_spaces/tiny.yaml] [--no-baseline] [--set key.path=value ...]

Runs the spec's sweep for real (local Ray, Optuna, ASHA, W&B offline as shipped) in a temporary
directory and reads each trial's time breakdown from its record: worker process start and imports
(the first trial of a worker only), data load, model load, training steps, evaluation, and
checkpoint save with its hand-over to Tune.

    overhead = 1 - training-step time / (search wall time x concurrent trial slots)

The search wall time runs from Ray's start to its shutdown, so start-up, evaluation, checkpoints,
scheduling gaps and slots left idle all count as overhead. The baseline, in the same run, is the same
sweep evaluating the whole validation split at every report (`train.eval_blocks: null`) instead of the
spec's fixed sample. Prints a Markdown table and, last, a JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import timed_search  # noqa: E402  (bench/, beside this script)


def run(spec_path: str, storage: str, name: str, overrides: list[str]) -> dict:
    """One sweep; its search wall time and the summed breakdown of its trials."""
    from tuner import constants as C
    from tuner import pipeline

    with timed_search() as walls:
        result = pipeline.run_sweep(spec_path, overrides=[f"storage={Path(storage) / name}", *overrides], name=name)
    records = [json.loads(p.read_text()) for p in sorted((result.sweep_dir / "trials").glob("*.json"))]
    totals = {key: sum(r.get("timing", {}).get(key, 0.0) for r in records) for key in C.TIME_KEYS}
    slots = _slots(result.sweep_dir)
    wall = sum(walls)
    return {"wall_s": wall, "slots": slots, "trials": len(records),
            "overhead": 1 - totals[C.TIME_TRAIN] / (wall * slots), "breakdown_s": totals,
            "best_eval_loss": min(r["best_eval_loss"] for r in records if r["best_eval_loss"] is not None)}


def _slots(sweep_dir: Path) -> int:
    from tuner.spec import load_spec

    return int(load_spec(sweep_dir / "spec.yaml").search.max_concurrent_trials or 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default=str(ROOT / "search_spaces" / "tiny.yaml"))
    parser.add_argument("--no-baseline", action="store_true", help="skip the full-validation baseline sweep")
    parser.add_argument("--set", action="append", default=[], help="spec overrides for both sweeps (key.path=value)")
    args = parser.parse_args()

    from tuner import constants as C

    variants = {"tuner (as shipped)": list(args.set)}
    if not args.no_baseline:
        variants["baseline: full validation split at every report"] = [*args.set, "train.eval_blocks=null"]
    rows = {}
    with tempfile.TemporaryDirectory(prefix="tuner-overhead-") as tmp:
        for i, (label, overrides) in enumerate(variants.items()):
            rows[label] = run(args.spec, tmp, f"overhead-{i}", overrides)

    columns = [(C.TIME_START, "start + imports"), (C.TIME_DATA, "data load"), (C.TIME_MODEL, "model load"),
               (C.TIME_TRAIN, "training steps"), (C.TIME_EVAL, "evaluation"), (C.TIME_SAVE, "checkpoint save")]
    print(f"Workload: {args.spec} {' '.join(args.set)}; seconds summed over the sweep's trials\n")
    print("| sweep | trials | slots | search wall | " + " | ".join(name for _, name in columns) + " | overhead |")
    print("|---|---|---|---|" + "---|" * len(columns) + "---|")
    for label, row in rows.items():
        cells = " | ".join(f"{row['breakdown_s'][key]:.1f}" for key, _ in columns)
        print(f"| {label} | {row['trials']} | {row['slots']} | {row['wall_s']:.1f} | {cells} | {row['overhead']:.1%} |")
    shipped = next(iter(rows.values()))
    out = {"overhead": round(shipped["overhead"], 4),
           "breakdown": {key: round(value, 2) for key, value in shipped["breakdown_s"].items()},
           "wall_s": round(shipped["wall_s"], 1), "slots": shipped["slots"], "trials": shipped["trials"],
           "best_eval_loss": shipped["best_eval_loss"]}
    if len(rows) > 1:
        base = list(rows.values())[1]
        out["baseline"] = {"overhead": round(base["overhead"], 4), "wall_s": round(base["wall_s"], 1),
                           "breakdown": {key: round(value, 2) for key, value in base["breakdown_s"].items()},
                           "best_eval_loss": base["best_eval_loss"]}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
