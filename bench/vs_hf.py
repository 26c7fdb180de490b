"""This project's sweep against transformers' `Trainer.hyperparameter_search(backend="ray")`, made
fair, with an ablation of tuner's levers.

    python bench/vs_hf.py [--seeds 0 1 2 3 4] [--arms ...] [--spec search_spaces/tiny.yaml]

Every arm, for each seed, on this machine's CPUs: the spec's packed data (prepared once, by tuner),
its model, the same seeded Optuna sampler over the same distributions through Ray Tune (the spec's
baseline trial queued first), the same number of trials and concurrency, ASHA with the same grace
period and reduction factor at the same report points (every `report_every_tokens` training tokens:
tuner's ReportCallback; on the Hugging Face side a callback asks HF's own loop to evaluate and
checkpoint there, and HF reports to Tune itself).

Arms:
- `hf_default`: `hyperparameter_search(backend="ray")` as a user calls it: Tune's default
  `reuse_actors=False` (a fresh worker process per trial), every checkpoint kept, the whole
  validation split evaluated at every report;
- `hf_tuned`: the same call made fair: `reuse_actors=True`, Tune keeping a trial's best checkpoint
  and its latest (tuner's `CheckpointConfig`), the same 64-block validation sample at reports;
- `tuner`: `tuner.run_sweep`, as shipped;
- ablation, tuner with one lever taken away: `tuner_no_reuse` (a fresh worker per trial),
  `tuner_full_eval` (the whole validation split at every report), `tuner_padded` (no packing: the
  same paragraphs one per row, truncated at `block_size`, each batch padded to its longest row,
  padding masked; run through `run_sweep(trial_fn=…)` with tuner's own Trainer set-up and report
  callback, as packing has no switch).

Measured per arm and seed:
- seconds: the search, from Ray's start to its shutdown (data preparation, tuner's promotion and
  export, HF's nothing after: not counted);
- `test_loss`: the model each returns (tuner: the exported best model; HF: the best checkpoint of
  `BestRun`'s trial), evaluated on the **test** split by the same code (`tuner.promote.evaluate`,
  token-weighted);
- `disk_mb`: what the search left in its storage (tuner: the sweep directory less its prepared
  data and exported model; HF: Tune's experiment directory and the Trainer's output directory).

JSON: medians of `tuner_s`, `hf_default_s`, `hf_tuned_s`; `ratio_vs_default` and `ratio_vs_tuned`
(tuner's seconds over the arm's, per seed) as `{median, lo, hi}` by a paired 95% bootstrap over
seeds; `test_loss` and `disk_mb` per arm (`{median, lo, hi}`); `ablation` (each row's seconds and
test loss, and its ratio to `tuner`). Prints Markdown tables and, last, the JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import bootstrap, seconds, timed_search  # bench/, beside this script

HF_NAMES = {"warmup_ratio": "warmup_steps"}  # transformers 5 reads a float < 1 in warmup_steps as a ratio
ARMS = ("hf_default", "hf_tuned", "tuner", "tuner_no_reuse", "tuner_full_eval", "tuner_padded")


def disk_mb(*paths: Path, skip: tuple[Path, ...] = ()) -> float:
    files = (p for path in paths for p in path.rglob("*") if p.is_file())
    return sum(p.stat().st_size for p in files if not any(p.is_relative_to(s) for s in skip)) / 2**20


def test_loss(model, spec, prepared) -> float:
    from tuner import promote
    from tuner.data import load_prepared

    test = load_prepared(prepared)["test"]["input_ids"]
    return promote.evaluate(model, test, spec.train.per_device_eval_batch_size)["eval_loss"]


# ---------------------------------------------------------------------------------------------
# tuner and its ablation.


def run_tuner(arm: str, spec_path: str, seed: int, root: Path) -> dict:
    from tuner import model, pipeline
    from tuner.data import read_prepared
    from tuner.spec import load_spec

    name = f"{arm}-{seed}"
    overrides = [f"storage={root / name}", f"search.seed={seed}", "tracking.wandb.mode=disabled"]
    if arm == "tuner_full_eval":
        overrides.append("train.eval_blocks=null")
    trial_fn = padded_trial(spec_path, overrides) if arm == "tuner_padded" else None
    with timed_search() as walls, (no_actor_reuse() if arm == "tuner_no_reuse" else contextlib.nullcontext()):
        result = pipeline.run_sweep(spec_path, name=name, overrides=overrides, trial_fn=trial_fn)
    spec = load_spec(result.sweep_dir / "spec.yaml")
    prepared = read_prepared(next((result.sweep_dir / "data").glob("*/prepared.json")).parent)
    return {"seconds": seconds(walls), "test_loss": test_loss(model.load_model(result.paths["best"] / "model"), spec,
                                                          prepared),
            "disk_mb": disk_mb(result.sweep_dir, skip=(result.sweep_dir / "data", result.paths["best"])),
            "prepared": prepared}


@contextlib.contextmanager
def no_actor_reuse():
    """tuner's Tune experiment with `reuse_actors=False` (it sets True): driver side, where Tune runs."""
    from ray import tune

    config = tune.TuneConfig

    def forced(*args, **kwargs):
        return config(*args, **{**kwargs, "reuse_actors": False})

    tune.TuneConfig = forced
    try:
        yield
    finally:
        tune.TuneConfig = config


def padded_trial(spec_path: str, overrides: list[str]) -> PaddedTrial:
    """The trial function of the no-packing arm, with the spec's train paragraphs as padded rows."""
    from transformers import AutoTokenizer

    from tuner import data, model, pipeline, sources

    spec = pipeline.resolve_spec(spec_path, overrides, "padded")
    with tempfile.TemporaryDirectory() as cache:
        splits, _ = data.clean_and_split(spec.data, sources.load(spec.data, None, Path(cache)))
        texts = list(splits["train"][spec.data.text_column])
    path = model.resolve(spec.model.name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    block, eos = spec.data.block_size, tokenizer.eos_token_id
    rows = [(ids + [eos])[:block] for ids in tokenizer(texts)["input_ids"] if ids]
    return PaddedTrial(spec, str(path), rows, eos)


@dataclasses.dataclass
class PaddedTrial:
    """tuner's training core (its TrainingArguments, model load, Trainer, ReportCallback) on padded
    rows instead of packed blocks; counts real (unpadded) tokens, on the host."""

    spec: Any
    model_path: str
    rows: list
    eos: int

    def __call__(self, hyper: dict, report) -> None:
        import torch
        from datasets import Dataset
        from transformers import Trainer

        from tuner import model as model_lib
        from tuner import trial
        from tuner.data import read_prepared, trial_splits

        prepared = read_prepared(next((self.spec.sweep_dir / "data").glob("*/prepared.json")).parent)
        _, validation = trial_splits(prepared, self.spec.train.eval_blocks, self.spec.train.seed)
        eos = self.eos

        def pad(rows: list[dict]) -> dict:
            width = max(len(r["input_ids"]) for r in rows)
            ids = torch.full((len(rows), width), eos, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for i, r in enumerate(rows):
                ids[i, :len(r["input_ids"])] = torch.as_tensor(r["input_ids"])
                mask[i, :len(r["input_ids"])] = 1
            return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}

        class RealTokens(Trainer):
            def training_step(self, model, inputs, *args, **kwargs):
                self.state.num_input_tokens_seen += int(inputs["attention_mask"].sum())
                return super().training_step(model, inputs, *args, **kwargs)

        with tempfile.TemporaryDirectory(prefix="tuner-padded-") as work:
            args = trial.training_arguments(self.spec, hyper, Path(work) / "hf")
            model = model_lib.load_model(self.model_path, reuse=True)
            trainer = RealTokens(model=model, args=args, data_collator=pad, eval_dataset=validation,
                                 train_dataset=Dataset.from_dict({"input_ids": self.rows}))
            trainer.add_callback(trial.ReportCallback(self.spec, report, None))
            trainer.train()


# ---------------------------------------------------------------------------------------------
# Hugging Face's hyperparameter_search.


def run_hf(arm: str, spec_path: str, seed: int, root: Path, prepared) -> dict:
    """The same search through `Trainer.hyperparameter_search(backend="ray")`."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    from tuner import model as model_lib
    from tuner import samplers as tuner_samplers
    from tuner import space
    from tuner.data import load_prepared, trial_splits
    from tuner.spec import load_spec
    from tuner.trial import collate

    tuned = arm == "hf_tuned"
    spec = load_spec(spec_path, [f"search.seed={seed}"])
    splits = load_prepared(prepared)
    every = spec.train.report_every_tokens
    model_path = model_lib.resolve(spec.model.name_or_path)
    reports = math.ceil(max(space.largest(spec, "num_train_epochs"), 1) * prepared.train_tokens() / every)
    validation = (trial_splits(prepared, spec.train.eval_blocks, spec.train.seed)[1] if tuned
                  else splits["validation"].with_format("torch"))

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
    output = root / f"{arm}-{seed}-out"
    args = TrainingArguments(
        output_dir=str(output), eval_strategy="steps", eval_steps=10**9, save_strategy="steps", save_steps=10**9,
        logging_steps=10, per_device_eval_batch_size=train.per_device_eval_batch_size,
        lr_scheduler_type=train.lr_scheduler_type, warmup_steps=0.0, seed=train.seed, use_cpu=True,
        include_num_input_tokens_seen=True, prediction_loss_only=True, report_to="none", disable_tqdm=True)
    trainer = Trainer(model_init=lambda trial=None: AutoModelForCausalLM.from_pretrained(model_path), args=args,
                      data_collator=collate, train_dataset=splits["train"].with_format("torch"),
                      eval_dataset=validation, callbacks=[EveryTokens()])
    distributions = {HF_NAMES.get(k, k): v for k, v in space.distributions(spec).items()}
    baseline = [{HF_NAMES.get(k, k): v for k, v in spec.search.baseline.items()}] if spec.search.baseline else None
    searcher = OptunaSearch(space=distributions, metric="objective", mode="min",
                            points_to_evaluate=baseline, sampler=tuner_samplers.sampler(spec))
    scheduler = ASHAScheduler(time_attr="training_iteration", metric="objective", mode="min", max_t=reports,
                              grace_period=max(1, round(spec.scheduler.grace_period / every)),
                              reduction_factor=spec.scheduler.reduction_factor)
    fair = {"reuse_actors": True, "checkpoint_config": tune.CheckpointConfig(
        num_to_keep=1, checkpoint_score_attribute="objective", checkpoint_score_order="min")} if tuned else {}
    storage = root / f"{arm}-{seed}"
    start = time.perf_counter()
    ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        best = trainer.hyperparameter_search(
            hp_space=lambda _: {}, compute_objective=lambda metrics: metrics["eval_loss"],
            n_trials=spec.search.num_samples, direction="minimize", backend="ray",
            search_alg=searcher, scheduler=scheduler, max_concurrent_trials=spec.search.max_concurrent_trials,
            resources_per_trial={"cpu": spec.resources.cpus_per_trial}, storage_path=str(storage),
            name="search", verbose=0, progress_reporter=tune.CLIReporter(max_report_frequency=3600), **fair)
    finally:
        ray.shutdown()
    seconds = time.perf_counter() - start
    analysis = best.run_summary
    trial = next(t for t in analysis.trials if t.trial_id == best.run_id)
    checkpoint = analysis.get_best_checkpoint(trial, metric="objective", mode="min")
    weights = next(Path(checkpoint.path).glob("checkpoint-*"))
    return {"seconds": seconds, "disk_mb": disk_mb(storage, output),
            "test_loss": test_loss(AutoModelForCausalLM.from_pretrained(weights), spec, prepared)}


# ---------------------------------------------------------------------------------------------
# Statistics and the report.


def paired_bootstrap(ours: list[float], theirs: list[float], rounds: int = 10000) -> dict:
    """The median over seeds of ours/theirs, with a 95% percentile interval resampling seeds (pairs)."""
    ratios = np.array(ours) / np.array(theirs)
    return bootstrap(list(ratios), rounds)


def fmt(stat: dict, digits: int = 3) -> str:
    return f"{stat['median']:.{digits}f} [{stat['lo']:.{digits}f}, {stat['hi']:.{digits}f}]"


def summarise(rows: dict[str, dict[int, dict]], seeds: list[int]) -> dict:
    arms = [arm for arm in ARMS if arm in rows]
    series = {arm: {key: [rows[arm][s][key] for s in seeds] for key in ("seconds", "test_loss", "disk_mb")}
              for arm in arms}
    out: dict[str, Any] = {f"{arm}_s": round(float(np.median(series[arm]["seconds"])), 2)
                           for arm in ("tuner", "hf_default", "hf_tuned") if arm in series}
    for other in ("hf_default", "hf_tuned"):
        if other in series and "tuner" in series:
            out[f"ratio_vs_{other.removeprefix('hf_')}"] = paired_bootstrap(series["tuner"]["seconds"],
                                                                           series[other]["seconds"])
    out["test_loss"] = {arm: bootstrap(series[arm]["test_loss"]) for arm in arms}
    out["disk_mb"] = {arm: bootstrap(series[arm]["disk_mb"]) for arm in arms}
    out["ablation"] = {arm: {"seconds": bootstrap(series[arm]["seconds"]),
                             "ratio_to_tuner": paired_bootstrap(series[arm]["seconds"], series["tuner"]["seconds"]),
                             "test_loss": out["test_loss"][arm]}
                       for arm in arms if arm.startswith("tuner_") and "tuner" in series}
    if {"tuner", "hf_tuned"} <= set(series):
        t, h = out["test_loss"]["tuner"], out["test_loss"]["hf_tuned"]
        width = (t["hi"] - t["lo"]) + (h["hi"] - h["lo"])
        out["targets"] = {"ratio_vs_default.median <= 0.8": out.get("ratio_vs_default", {}).get("median", 9) <= 0.8,
                          "ratio_vs_tuned.median <= 0.9": out["ratio_vs_tuned"]["median"] <= 0.9,
                          "test_loss tuner - hf_tuned <= interval widths": t["median"] - h["median"] <= width}
    out["seeds"] = {arm: {str(s): {k: round(v, 4) for k, v in rows[arm][s].items() if k != "prepared"}
                          for s in seeds} for arm in arms}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default=str(ROOT / "search_spaces" / "tiny.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    args = parser.parse_args()

    import transformers

    from tuner import logs

    logs.setup(verbose=False)
    transformers.utils.logging.set_verbosity_error()
    rows: dict[str, dict[int, dict]] = {arm: {} for arm in args.arms}
    order = ["tuner", *[arm for arm in args.arms if arm != "tuner"]]  # tuner first: it prepares the data
    with tempfile.TemporaryDirectory(prefix="tuner-vs-hf-") as tmp:
        root = Path(tmp)
        for seed in args.seeds:
            prepared = None
            for arm in order:
                if arm.startswith("hf_"):
                    rows[arm][seed] = run_hf(arm, args.spec, seed, root, prepared)
                else:
                    rows.setdefault(arm, {})[seed] = run_tuner(arm, args.spec, seed, root)
                    prepared = prepared or rows[arm][seed].pop("prepared")
                    rows[arm][seed].pop("prepared", None)
                print(json.dumps({"seed": seed, "arm": arm, **rows[arm][seed]}), file=sys.stderr, flush=True)

    out = summarise(rows, args.seeds)
    out.update(machine=f"{platform.machine()}, {os.cpu_count()} CPUs", versions=versions())
    print(f"\nWorkload: {args.spec}, CPU; seeds {args.seeds}\n")
    print("| arm | search s, median [95% CI] | tuner / arm, paired [95% CI] | test loss, median [95% CI] | disk MB |")
    print("|---|---|---|---|---|")
    for arm in [a for a in ARMS if a in rows]:
        seconds = bootstrap([rows[arm][s]["seconds"] for s in args.seeds])
        ratio = paired_bootstrap([rows["tuner"][s]["seconds"] for s in args.seeds],
                                 [rows[arm][s]["seconds"] for s in args.seeds]) if "tuner" in rows else None
        print(f"| {arm} | {fmt(seconds, 1)} | {fmt(ratio) if ratio else '-'} | {fmt(out['test_loss'][arm], 4)} | "
              f"{out['disk_mb'][arm]['median']:.1f} |")
    print("\nPer seed (search s / test loss):\n")
    print("| seed | " + " | ".join(a for a in ARMS if a in rows) + " |")
    print("|---|" + "---|" * len(rows))
    for s in args.seeds:
        print(f"| {s} | " + " | ".join(f"{rows[a][s]['seconds']:.1f} / {rows[a][s]['test_loss']:.4f}"
                                       for a in ARMS if a in rows) + " |")
    print(json.dumps(out))


def versions() -> dict:
    import optuna
    import ray
    import torch
    import transformers

    return {"ray": ray.__version__, "optuna": optuna.__version__, "transformers": transformers.__version__,
            "torch": torch.__version__, "python": platform.python_version()}


if __name__ == "__main__":
    main()
