"""Trials sharing GPUs through the training core alone, without Ray.

    python bench/gpu_share.py [--trials 4] [--gpus-per-trial 1 0.5] [--spec search_spaces/tiny.yaml]

Runs the same trials (sampled once, seeded, from the spec's space) for each `gpus_per_trial`: with 1,
one trial process per GPU at a time; with 0.5, two trial processes on each GPU at once; as Ray would
place them. Each trial is a separate process that calls `tuner.trial.run_trial` and records the GPU
it saw and its peak memory. Prints a Markdown table and, last, a JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def sample(spec, count: int, seed: int) -> list[dict]:
    """Seeded random draws from the spec's space (the sampler is not what is measured here)."""
    from tuner.spec import as_number, is_distribution

    rng = random.Random(seed)
    trials = []
    for _ in range(count):
        params = {}
        for name, entry in spec.search.space.items():
            if not is_distribution(entry):
                continue
            if entry["type"] == "categorical":
                params[name] = rng.choice(entry["choices"])
                continue
            low, high = as_number(entry["low"]), as_number(entry["high"])
            value = math.exp(rng.uniform(math.log(low), math.log(high))) if entry.get("log") else rng.uniform(low, high)
            params[name] = int(round(value)) if entry["type"] == "int" else value
        trials.append(params)
    return trials


def run_one(args: argparse.Namespace) -> None:
    """Child process: one trial on the GPU it was given, then a JSON summary on stdout."""
    import pickle

    import torch

    from tuner.trial import run_trial

    ctx = pickle.loads(Path(args.ctx).read_bytes())
    params = json.loads(args.params)
    torch.cuda.reset_peak_memory_stats() if torch.cuda.is_available() else None
    start = time.perf_counter()
    summary = run_trial(params, ctx, lambda metrics, checkpoint: None)
    print(json.dumps({
        "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "peak_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else 0,
        "seconds": round(time.perf_counter() - start, 2), "best_eval_loss": summary["best_eval_loss"],
        "tokens_seen": summary["tokens_seen"]}))


def schedule(trials: list[dict], ctx_path: str, gpus_per_trial: float, gpus: int) -> tuple[list[dict], float]:
    """Run the trials as Ray would place them: floor(1 / share) processes per GPU at a time."""
    per_gpu = max(1, math.floor(1 / gpus_per_trial)) if gpus_per_trial <= 1 else 1
    slots = [(gpu, k) for gpu in range(gpus) for k in range(per_gpu)]
    pending, running, done = list(enumerate(trials)), {}, []
    start = time.perf_counter()
    while pending or running:
        while pending and len(running) < len(slots):
            free = next(s for s in slots if s not in running.values())
            index, params = pending.pop(0)
            env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(free[0])}
            proc = subprocess.Popen([sys.executable, __file__, "--child", "--ctx", ctx_path,
                                     "--params", json.dumps(params)], env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL, text=True)
            running[proc] = free
            proc.index, proc.started = index, time.perf_counter() - start  # type: ignore[attr-defined]
        for proc in list(running):
            if proc.poll() is not None:
                gpu, _ = running.pop(proc)
                out = proc.stdout.read().strip().splitlines()
                row = json.loads(out[-1]) if proc.returncode == 0 and out else {"error": proc.returncode}
                row.update(trial=proc.index, gpu=gpu, started=round(proc.started, 2),
                           ended=round(time.perf_counter() - start, 2))
                done.append(row)
        time.sleep(0.2)
    return sorted(done, key=lambda r: r["trial"]), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spec", default=str(ROOT / "search_spaces" / "tiny.yaml"))
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--gpus-per-trial", type=float, nargs="+", default=[1.0, 0.5])
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--ctx")
    parser.add_argument("--params")
    args = parser.parse_args()
    if args.child:
        return run_one(args)

    import pickle

    import torch

    from tuner import data, model
    from tuner.spec import load_spec
    from tuner.trial import TrialContext

    work = Path(tempfile.mkdtemp(prefix="gpu-share-"))
    spec = load_spec(args.spec, [*args.set, f"storage={work}"])
    prepared = data.prepare(spec, spec.sweep_dir)
    ctx_path = work / "ctx.pkl"
    ctx_path.write_bytes(pickle.dumps(TrialContext(spec, prepared, model.resolve(spec.model.name_or_path))))
    gpus = max(torch.cuda.device_count(), 1)
    trials = sample(spec, args.trials, spec.search.seed)
    results = {}
    print("| gpus_per_trial | trial | GPU | device | peak MiB | started s | ended s | best eval_loss |")
    print("|---|---|---|---|---|---|---|---|")
    for share in args.gpus_per_trial:
        rows, wall = schedule(trials, str(ctx_path), share, gpus)
        results[str(share)] = {"wall_s": round(wall, 2), "trials": rows}
        for r in rows:
            print(f"| {share:g} | {r['trial']} | {r['gpu']} | {r.get('device')} | {r.get('peak_memory_mb')} | "
                  f"{r['started']} | {r['ended']} | {r.get('best_eval_loss')} |")
        print(f"| {share:g} | sweep wall time | | | | | {wall:.1f} s | |")
    print(json.dumps({"gpus": gpus, "results": results}))


if __name__ == "__main__":
    main()
