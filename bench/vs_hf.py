"""This project's sweep against transformers' `Trainer.hyperparameter_search(backend="ray")`.

    python bench/vs_hf.py [--seeds 0 1 2] [--spec search_spaces/tiny.yaml]

Both sides, for each seed, on CPU: the spec's packed data (prepared once, by tuner), its model, the
same seeded Optuna sampler over the same distributions through Ray Tune's OptunaSearch (the spec's
baseline trial queued first on both), the same number of trials, the same concurrency, ASHA with the
same grace period and reduction factor at the same report points (every `report_every_tokens`
training tokens: tuner's ReportCallback; on the Hugging Face side a callback asks HF's own loop to
evaluate and checkpoint there, and HF reports to Tune itself), the same validation split.

- `tuner_s`, `hf_s`: wall seconds of the search, from Ray's start to the search's return
  (`launch.py sweep`'s promotion and export are not counted; they have no HF counterpart);
- `tuner_best`, `hf_best`: the validation loss, on the whole validation split, of the model each
  hands back (tuner: the exported best model, re-evaluated with promotion's token-weighted loss;
  HF: `BestRun.objective`);
- `tuner_disk_mb`, `hf_disk_mb`: what each leaves in its storage directory.

Prints a Markdown table and, last, a JSON line (medians over seeds, and each seed).
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

from common import timed_search  # noqa: E402  (bench/, beside this script)

HF_NAMES = {"warmup_ratio": "warmup_steps"}  # transformers 5 reads a float < 1 in warmup_steps as a ratio


def disk_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def run_tuner(spec_path: str, seed: int, root: Path) -> dict:
    from tuner import model, pipeline, promote
    from tuner.data import load_prepared, read_prepared
    from tuner.spec import load_spec

    with timed_search() as walls:
        result = pipeline.run_sweep(spec_path, name=f"tuner-{seed}", overrides=[
            f"storage={root / f'tuner-{seed}'}", f"search.seed={seed}", "tracking.wandb.mode=disabled"])
    spec = load_spec(result.sweep_dir / "spec.yaml")
    prepared = read_prepared(next((result.sweep_dir / "data").glob("*/prepared.json")).parent)
    validation = load_prepared(prepared)["validation"]["input_ids"]
    best = promote.evaluate(model.load_model(result.paths["best"] / "model"), validation,
                            spec.train.per_device_eval_batch_size)["eval_loss"]
    return {"seconds": sum(walls), "best": best, "disk_mb": disk_mb(result.sweep_dir),
            "trials": len(result.leaderboard)}


def run_hf(spec_path: str, seed: int, root: Path, prepared_dir: Path) -> dict:
    """The same search through `Trainer.hyperparameter_search(backend="ray")`."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    from tuner import model as model_lib
    from tuner import searcher as tuner_searcher
    from tuner import space
    from tuner.data import load_prepared, read_prepared
    from tuner.spec import load_spec
    from tuner.trial import collate

    spec = load_spec(spec_path, [f"search.seed={seed}"])
    prepared = read_prepared(prepared_dir)
    splits = load_prepared(prepared)
    every = spec.train.report_every_tokens
    model_path = model_lib.resolve(spec.model.name_or_path)
    largest = max(space.largest(spec, "num_train_epochs"), 1)
    reports = math.ceil(largest * prepared.train_tokens() / every)

    class EveryTokens(TrainerCallback):
        """Evaluate and checkpoint every `every` tokens and at the end: tuner's report points."""

        def on_train_begin(self, args, state, control, **kwargs):
            self.next = every

        def on_step_end(self, args, state, control, **kwargs):
            if state.num_input_tokens_seen >= self.next or state.global_step >= state.max_steps:
                control.should_evaluate = control.should_save = True
                while self.next <= state.num_input_tokens_seen:
                    self.next += every

    train = spec.train
    args = TrainingArguments(
        output_dir=str(root / f"hf-{seed}-out"), eval_strategy="steps", eval_steps=10**9,
        save_strategy="steps", save_steps=10**9, logging_steps=10, per_device_eval_batch_size=train.per_device_eval_batch_size,
        lr_scheduler_type=train.lr_scheduler_type, warmup_steps=0.0, seed=train.seed, use_cpu=True,
        include_num_input_tokens_seen=True, prediction_loss_only=True, report_to="none", disable_tqdm=True)
    trainer = Trainer(model_init=lambda trial=None: AutoModelForCausalLM.from_pretrained(model_path), args=args,
                      data_collator=collate, train_dataset=splits["train"].with_format("torch"),
                      eval_dataset=splits["validation"].with_format("torch"), callbacks=[EveryTokens()])
    distributions = {HF_NAMES.get(k, k): v for k, v in space.distributions(spec).items()}
    baseline = [{HF_NAMES.get(k, k): v for k, v in spec.search.baseline.items()}] if spec.search.baseline else None
    searcher = OptunaSearch(space=distributions, metric="objective", mode="min",
                            points_to_evaluate=baseline, sampler=tuner_searcher.sampler(spec))
    scheduler = ASHAScheduler(time_attr="training_iteration", metric="objective", mode="min", max_t=reports,
                              grace_period=max(1, round(spec.scheduler.grace_period / every)),
                              reduction_factor=spec.scheduler.reduction_factor)
    storage = root / f"hf-{seed}"
    start = time.perf_counter()
    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        best = trainer.hyperparameter_search(
            hp_space=lambda _: {}, compute_objective=lambda metrics: metrics["eval_loss"],
            n_trials=spec.search.num_samples, direction="minimize", backend="ray",
            search_alg=searcher, scheduler=scheduler, max_concurrent_trials=spec.search.max_concurrent_trials,
            resources_per_trial={"cpu": spec.resources.cpus_per_trial}, storage_path=str(storage),
            name="search", verbose=0, progress_reporter=tune.CLIReporter(max_report_frequency=3600))
        seconds = time.perf_counter() - start
    finally:
        ray.shutdown()
    return {"seconds": seconds, "best": float(best.objective), "disk_mb": disk_mb(storage),
            "trials": spec.search.num_samples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default=str(ROOT / "search_spaces" / "tiny.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()

    import transformers

    transformers.utils.logging.set_verbosity_error()
    rows = []
    with tempfile.TemporaryDirectory(prefix="tuner-vs-hf-") as tmp:
        root = Path(tmp)
        for seed in args.seeds:
            ours = run_tuner(args.spec, seed, root)
            prepared_dir = next((root / f"tuner-{seed}" / "data").glob("*/prepared.json")).parent
            theirs = run_hf(args.spec, seed, root, prepared_dir)
            rows.append({"seed": seed, "tuner_s": ours["seconds"], "hf_s": theirs["seconds"],
                         "tuner_best": ours["best"], "hf_best": theirs["best"],
                         "tuner_disk_mb": ours["disk_mb"], "hf_disk_mb": theirs["disk_mb"]})
            print(json.dumps(rows[-1]), flush=True)

    print(f"\nWorkload: {args.spec}, CPU; seeds {args.seeds}\n")
    print("| seed | tuner s | HF s | tuner / HF | tuner best val loss | HF best val loss | tuner disk MB | HF disk MB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['seed']} | {r['tuner_s']:.1f} | {r['hf_s']:.1f} | {r['tuner_s'] / r['hf_s']:.2f} | "
              f"{r['tuner_best']:.4f} | {r['hf_best']:.4f} | {r['tuner_disk_mb']:.1f} | {r['hf_disk_mb']:.1f} |")
    median = {key: round(statistics.median(r[key] for r in rows), 4)
              for key in ("tuner_s", "hf_s", "tuner_best", "hf_best", "tuner_disk_mb", "hf_disk_mb")}
    print(json.dumps({**median, "seeds": rows}))


if __name__ == "__main__":
    main()
