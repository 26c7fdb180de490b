"""A sweep driver for the chaos test: `tuner.run_sweep(trial_fn=…)` with trials of a few seconds.

    python tests/chaos_driver.py SWEEP CHAOS_DIR NUM_SAMPLES [--no-roles] [--resume] [--restart-search]

Each trial trains nothing: it reports a loss that falls with its steps (lower for learning rates
near 1e-3), every other report with a checkpoint (the tiny base model's files, which promotion can
load, and the step reached), and goes on from its checkpoint when restarted. The first trial to
reach its third step hangs there, the second one to do so raises there, every time: the test kills
drivers and trials around them. Each trial writes its pid to CHAOS_DIR/pids/ so the test can kill
one mid-run. Its functions live in `__main__`, so Ray ships them by value.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STEPS = 8
TOKENS_PER_STEP = 1000
STEP_SECONDS = 0.6


def chaos_trial(config, report, checkpoint):
    import json
    import math
    import os
    import shutil
    import tempfile
    import time

    from ray import tune

    from tuner import model

    chaos = Path(os.environ["TUNER_CHAOS_DIR"])
    trial_id = tune.get_context().get_trial_id()
    (chaos / "pids").mkdir(parents=True, exist_ok=True)
    (chaos / "pids" / trial_id).write_text(str(os.getpid()))
    step = json.loads((Path(checkpoint) / "state.json").read_text())["step"] if checkpoint else 0
    base = model.resolve("builtin:tiny-gpt2")
    distance = abs(math.log10(config["learning_rate"]) + 3)
    while step < STEPS:
        time.sleep(STEP_SECONDS)
        step += 1
        role = _role(chaos, trial_id) if step == 3 else ""  # past ASHA's first rung: it will get here
        if role == "hang":
            time.sleep(3600)  # a dead NCCL peer, a stuck loader: only the driver's clock ends it
        if role == "raise":
            raise RuntimeError("chaos: this trial raises at step 3")
        metrics = {"eval_loss": 5.0 + distance - 0.2 * step, "tokens_seen": step * TOKENS_PER_STEP, "step": step}
        if step % 2:
            report(metrics)
            continue
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copytree(base, tmp, dirs_exist_ok=True)
            (Path(tmp) / "state.json").write_text(json.dumps({"step": step}))
            report(metrics, tmp)


def _role(chaos: Path, trial_id: str) -> str:
    """'hang' for the first trial that asks, 'raise' for the second, then '' (kept per trial id, so a
    restarted trial plays the same part again)."""
    import os

    for role in ("hang", "raise"):
        path = chaos / f"{role}.trial"
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            os.write(fd, trial_id.encode())
            os.close(fd)
            return role
        except FileExistsError:
            if path.read_text() == trial_id:
                return role
    return ""


def main(argv: list[str]) -> int:
    """`SWEEP CHAOS_DIR NUM_SAMPLES [--no-roles] [--resume] [--restart-search]`: SWEEP is the storage
    (a directory or an s3:// URI); --resume goes on through `resume_sweep(SWEEP)` instead."""
    import argparse
    import os

    parser = argparse.ArgumentParser()
    parser.add_argument("sweep")
    parser.add_argument("chaos_dir")
    parser.add_argument("samples", type=int)
    parser.add_argument("--no-roles", action="store_true", help="no trial hangs or raises")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--restart-search", action="store_true")
    args = parser.parse_args(argv)
    os.environ["TUNER_CHAOS_DIR"] = args.chaos_dir
    if args.no_roles:
        for role in ("hang", "raise"):
            (Path(args.chaos_dir) / f"{role}.trial").write_text("nobody")
    from launch import _run
    from tuner.errors import UserError
    from tuner.pipeline import resume_sweep, run_sweep

    overrides = [f"storage={args.sweep}", f"search.num_samples={args.samples}", "search.n_startup_trials=4",
                 "data.max_records=300", "search.max_failures=1", "search.trial_timeout=30s",
                 f"scheduler.max_t={STEPS * TOKENS_PER_STEP}", f"scheduler.grace_period={2 * TOKENS_PER_STEP}",
                 "scheduler.reduction_factor=2",
                 "promote.num_prompts=0", "promote.top_k=1", "promote.evaluate_base=false",
                 "tracking.wandb.mode=disabled"]
    try:
        if args.resume:
            return _run(lambda: resume_sweep(args.sweep, restart_search=args.restart_search, trial_fn=chaos_trial,
                                             num_samples=args.samples))
        return _run(lambda: run_sweep(ROOT / "search_spaces" / "tiny.yaml", name="chaos", overrides=overrides,
                                      trial_fn=chaos_trial, restart_search=args.restart_search))
    except UserError as exc:
        print(f"tuner: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    import logging

    Path(sys.argv[2]).mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.WARNING, format="[%(name)s] %(message)s")
    logging.getLogger("tuner").setLevel(logging.INFO)
    sys.exit(main(sys.argv[1:]))
