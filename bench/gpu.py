"""One trial's GPU efficiency, then trials sharing a GPU against the same trials one after another.

    python bench/gpu.py [--compile] [--steps 60] [--batch-size 8] [--smoke]

Part 1, the training core alone (`tuner.trial.run_trial`, no Ray needed): the GPT-2 small
architecture (124M parameters, randomly initialised, nothing downloaded) at sequence length 1024,
trained on the built-in corpus with the trial's GPU path (`train.precision: auto`, fused AdamW, TF32,
SDPA, pinned loaders, `--compile` for torch.compile). Reports tokens/s over the training steps after
the first report (compilation and warm-up excluded) and MFU against the GPU's dense bf16 peak.

Part 2, only where Ray is installed: a sweep of 4 trials (fixed hyperparameters, seeded) at
`gpus_per_trial: 0.25` (all four on one GPU at once) against the same sweep at `gpus_per_trial: 1`
(one after another), in the same run: wall time and summed tokens/s.

`--smoke` swaps the inputs (a 2-layer, 64-wide model, 64-token blocks, a few steps) so the script
itself can be checked on a CPU. Prints a Markdown table and, last, a JSON line.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GPT2_SMALL = {"n_layer": 12, "n_embd": 768, "n_head": 12, "n_positions": 1024, "vocab_size": 50257}
SMOKE = {"n_layer": 2, "n_embd": 64, "n_head": 2, "n_positions": 256, "vocab_size": 1024}


def make_model(out: Path, shape: dict) -> str:
    """A randomly initialised GPT-2 of `shape` with the built-in tokenizer (its ids fit any vocab)."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from tuner import builtin

    tokenizer = AutoTokenizer.from_pretrained(builtin.tiny_gpt2_path())
    torch.manual_seed(0)
    config = GPT2Config(bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id, **shape)
    GPT2LMHeadModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def bench_spec(model_dir: str, block: int, batch: int, steps: int, every: int, compile_model: bool,
               gpus_per_trial: float = 1.0, trials: int = 1, storage: str | None = None):
    from tuner.spec import load_spec

    fixed = {"learning_rate": 3e-4, "per_device_train_batch_size": batch, "num_train_epochs": 100,
             "warmup_ratio": 0.0, "gradient_accumulation_steps": 1, "weight_decay": 0.0}
    return load_spec({
        "name": f"gpu-bench-{gpus_per_trial}", **({"storage": storage} if storage else {}),
        "model": {"name_or_path": model_dir},
        "data": {"path": "builtin:pydoc-topics", "text_column": "text", "block_size": block,
                 "split": {"train": 0.8, "validation": 0.1, "test": 0.1}},
        "train": {**fixed, "precision": "auto", "compile": compile_model, "stop_after_steps": steps,
                  "report_every_tokens": every, "eval_blocks": 8, "per_device_eval_batch_size": batch},
        # Nothing searched: every trial trains the same fixed configuration.
        "search": {"num_samples": trials, "max_concurrent_trials": trials, "space": {}},
        "scheduler": {"type": "none"},
        "resources": {"cpus_per_trial": 1, "gpus_per_trial": gpus_per_trial},
        "tracking": {"wandb": {"mode": "disabled"}},
    })


def core(spec, work: Path) -> dict:
    """Part 1: one trial through the training core, no Ray."""
    import torch

    from tuner import data, model
    from tuner.trial import TrialContext, run_trial

    prepared = data.prepare(spec, work)
    reports: list[dict] = []
    ctx = TrialContext(spec, prepared, model.resolve(spec.model.name_or_path))
    torch.cuda.reset_peak_memory_stats() if torch.cuda.is_available() else None
    start = time.perf_counter()
    run_trial({}, ctx, lambda metrics, checkpoint: reports.append(metrics), workdir=work / "trial")
    steady = reports[1:] or reports  # the first interval holds compilation and warm-up
    from tuner import constants as C

    mfus = [r[C.MFU] for r in steady if r.get(C.MFU) is not None]
    return {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
            "seconds": time.perf_counter() - start, "reports": len(reports),
            "tokens_per_s": statistics.median(r[C.TOKENS_PER_S] for r in steady),
            "mfu": statistics.median(mfus) if mfus else None,
            "peak_memory_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0}


def shared_sweep(args, model_dir: str, root: Path) -> list[dict]:
    """Part 2: 4 trials at gpus_per_trial 0.25 and at 1, through real sweeps."""
    from tuner import pipeline

    rows = []
    for share in (0.25, 1.0):
        spec = bench_spec(model_dir, args.block, args.batch_size, args.steps, args.every, args.compile,
                          gpus_per_trial=share, trials=4, storage=str(root))
        start = time.perf_counter()
        result = pipeline.run_sweep(spec)
        wall = time.perf_counter() - start
        tokens = sum(row.get("tokens_seen", 0) for row in result.leaderboard)
        rows.append({"gpus_per_trial": share, "trials": len(result.leaderboard), "wall_s": wall,
                     "tokens_per_s": tokens / wall})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (train.compile)")
    parser.add_argument("--steps", type=int, default=60, help="training steps per trial")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--smoke", action="store_true", help="tiny inputs, to check the script on a CPU")
    parser.add_argument("--no-sweep", action="store_true", help="part 1 only")
    args = parser.parse_args()
    shape = SMOKE if args.smoke else GPT2_SMALL
    args.block = 64 if args.smoke else 1024
    args.every = args.block * args.batch_size * max(1, args.steps // 6)  # six reports per trial

    import torch
    import transformers

    transformers.utils.logging.set_verbosity_error()
    with tempfile.TemporaryDirectory(prefix="tuner-gpu-bench-") as tmp:
        root = Path(tmp)
        model_dir = make_model(root / "model", shape)
        one = core(bench_spec(model_dir, args.block, args.batch_size, args.steps, args.every, args.compile), root)
        sweeps = []
        if not args.no_sweep and importlib.util.find_spec("ray") is not None and torch.cuda.is_available():
            sweeps = shared_sweep(args, model_dir, root)

    print(f"Device: {one['device']}; torch {torch.__version__}, transformers {transformers.__version__}; "
          f"model {shape}, sequence {args.block}, batch {args.batch_size}, {args.steps} steps, "
          f"compile {args.compile}\n")
    print("| run | tokens/s | MFU | peak memory MiB | wall s |")
    print("|---|---|---|---|---|")
    mfu = f"{one['mfu']:.1%}" if one["mfu"] is not None else "n/a (no known peak)"
    print(f"| one trial, training core | {one['tokens_per_s']:.0f} | {mfu} | {one['peak_memory_mb']:.0f} | "
          f"{one['seconds']:.1f} |")
    for row in sweeps:
        print(f"| sweep of {row['trials']} at gpus_per_trial {row['gpus_per_trial']} | {row['tokens_per_s']:.0f} | "
              f"| | {row['wall_s']:.1f} |")
    if not sweeps:
        print("\n(sweep part skipped: no Ray or no GPU here, or --no-sweep)")
    print(json.dumps({"device": one["device"], "tokens_per_s": round(one["tokens_per_s"], 1),
                      "mfu": round(one["mfu"], 4) if one["mfu"] is not None else None,
                      "peak_memory_mb": round(one["peak_memory_mb"], 1), "compile": args.compile,
                      "sweep": sweeps}))


if __name__ == "__main__":
    main()
