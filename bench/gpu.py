"""tuner's training core against a plain PyTorch loop on the same GPU, model and batches; then trials
sharing a GPU against the same trials one at a time.

    python bench/gpu.py [--compile] [--steps 200] [--batch-size 8] [--smoke] [--no-sweep]

Part 1 needs neither Ray nor `datasets` (a lent GPU machine has torch and transformers only). The
GPT-2 small architecture (124M parameters, randomly initialised, nothing downloaded) at sequence
length 1024 trains on the same seeded blocks of token ids in both arms:

- `plain`: the strongest plain loop: bf16 autocast, fused AdamW, SDPA attention, TF32 matmuls,
  gradient clipping at 1.0 (as the Trainer does), `torch.compile` with --compile;
- `tuner`: `tuner.trial.run_trial` (the HF Trainer with tuner's GPU path: `train.precision: auto`,
  fused AdamW, TF32, SDPA, pinned loaders, `train.compile`), the blocks handed to it in memory.

Each reports tokens/s over the training steps after warm-up (compilation excluded), MFU (see
`tuner.gpu`: 6·N + 6·L·T·d_attn FLOPs per token over the GPU's dense bf16 peak) and tuner's ratio to
the plain loop (target ≥ 0.95). Part 2, only where Ray and a GPU are: a sweep of 4 trials at
`gpus_per_trial: 0.25` against the same sweep at 1, in the same run: wall time and summed tokens/s.

`--smoke` swaps the inputs (a 2-layer, 64-wide model, 64-token blocks, a few steps, fp32 on a CPU) so
the script itself runs anywhere. Prints a Markdown table and, last, a JSON line.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GPT2_SMALL = {"n_layer": 12, "n_embd": 768, "n_head": 12, "n_positions": 1024, "vocab_size": 50257}
SMOKE = {"n_layer": 2, "n_embd": 64, "n_head": 2, "n_positions": 256, "vocab_size": 1024}
WARMUP_STEPS = 10  # the plain loop's steps left out of its timing (allocator, cuBLAS, compile)
LR = 3e-4


def make_model(out: Path, shape: dict) -> str:
    """A randomly initialised GPT-2 of `shape` (seeded), saved where from_pretrained reads it."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(bos_token_id=0, eos_token_id=0, **shape)).save_pretrained(out)
    return str(out)


def token_blocks(count: int, block: int, vocab: int):
    """Seeded blocks of token ids: the speed of a step does not depend on which tokens they are."""
    import torch

    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab, (count, block), generator=generator)


class Blocks:
    """The blocks as the training core's collator takes them (rows with `input_ids`)."""

    def __init__(self, blocks):
        self.blocks = blocks

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, index: int) -> dict:
        return {"input_ids": self.blocks[index]}


def plain_loop(model_dir: str, blocks, batch: int, steps: int, compile_model: bool, cuda: bool) -> dict:
    """The plain PyTorch loop: the same model, the same batches, no Trainer."""
    import torch
    from transformers import AutoModelForCausalLM

    device = "cuda" if cuda else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa").to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, fused=cuda)
    step_model = torch.compile(model) if compile_model else model
    timed_tokens, start = 0, None
    for step in range(steps):
        if step == WARMUP_STEPS:
            _sync(cuda)
            start = time.perf_counter()
        x = blocks[(step * batch) % (len(blocks) - batch):][:batch].to(device, non_blocking=True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=cuda):
            loss = step_model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if start is not None:
            timed_tokens += x.numel()
    _sync(cuda)
    seconds = time.perf_counter() - start
    return {"tokens_per_s": timed_tokens / seconds, "loss": float(loss), **_memory(cuda)}


def tuner_core(model_dir: str, blocks, batch: int, steps: int, compile_model: bool, work: Path) -> dict:
    """One trial through `tuner.trial.run_trial`, the blocks handed over in memory (the same ones
    the plain loop trains on) instead of read from prepared Arrow files."""
    import torch

    from tuner import constants as C
    from tuner import trial
    from tuner.context import TrialContext
    from tuner.data import Prepared

    block = blocks.shape[1]
    every = block * batch * max(1, steps // 4)  # four reports: the first holds the warm-up
    spec = bench_spec(model_dir, block, batch, steps, every, compile_model)
    validation = Blocks(blocks[:8])
    trial.trial_splits = lambda prepared, eval_blocks, seed: (Blocks(blocks), validation)
    prepared = Prepared(path=str(work / "none"), tokenizer_path=str(work / "none"), fingerprint="memory",
                        block_size=block, blocks={"train": len(blocks), "validation": 8, "test": 0},
                        tokens={}, records={})
    reports: list[dict] = []
    trial.run_trial({}, TrialContext(spec, prepared, model_dir), lambda metrics, checkpoint: reports.append(metrics),
                    workdir=work / "trial")
    steady = reports[1:] or reports
    mfus = [r[C.MFU] for r in steady if r.get(C.MFU) is not None]
    return {"tokens_per_s": statistics.median(r[C.TOKENS_PER_S] for r in steady),
            "mfu_reported": statistics.median(mfus) if mfus else None, "reports": len(reports),
            "loss": reports[-1].get(C.TRAIN_LOSS), **_memory(torch.cuda.is_available())}


def bench_spec(model_dir: str, block: int, batch: int, steps: int, every: int, compile_model: bool,
               gpus_per_trial: float = 1.0, trials: int = 1, storage: str | None = None):
    from tuner.spec import load_spec

    fixed = {"learning_rate": LR, "per_device_train_batch_size": batch, "num_train_epochs": 100,
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


def shared_sweep(args, model_dir: str, root: Path) -> list[dict]:
    """Part 2: 4 trials at gpus_per_trial 0.25 and at 1, through real sweeps (Ray, datasets)."""
    from tuner import pipeline

    rows = []
    for share in (0.25, 1.0):
        spec = bench_spec(model_dir, args.block, args.batch_size, args.steps, args.block * args.batch_size * 20,
                          args.compile, gpus_per_trial=share, trials=4, storage=str(root / f"sweep-{share}"))
        start = time.perf_counter()
        result = pipeline.run_sweep(spec)
        wall = time.perf_counter() - start
        tokens = sum(row.get("tokens_seen", 0) for row in result.leaderboard)
        rows.append({"gpus_per_trial": share, "trials": len(result.leaderboard), "wall_s": wall,
                     "tokens_per_s": tokens / wall})
    return rows


def _sync(cuda: bool) -> None:
    import torch

    if cuda:
        torch.cuda.synchronize()


def _memory(cuda: bool) -> dict:
    import torch

    if not cuda:
        return {"peak_memory_mb": 0.0}
    peak = torch.cuda.max_memory_allocated() / 2**20
    torch.cuda.reset_peak_memory_stats()
    return {"peak_memory_mb": peak}


def device_name(cuda: bool) -> str:
    import torch

    return torch.cuda.get_device_name(0) if cuda else f"cpu ({platform.processor() or platform.machine()})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compile", action="store_true", help="torch.compile the model in both arms")
    parser.add_argument("--steps", type=int, default=200, help="training steps per arm")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--smoke", action="store_true", help="tiny inputs, to check the script on a CPU")
    parser.add_argument("--no-sweep", action="store_true", help="part 1 only")
    args = parser.parse_args()
    shape = SMOKE if args.smoke else GPT2_SMALL
    args.block = 64 if args.smoke else 1024
    if args.smoke:
        args.steps = min(args.steps, 24)

    import torch
    import transformers

    from tuner import gpu

    transformers.utils.logging.set_verbosity_error()
    cuda = torch.cuda.is_available()
    with tempfile.TemporaryDirectory(prefix="tuner-gpu-bench-") as tmp:
        root = Path(tmp)
        model_dir = make_model(root / "model", shape)
        blocks = token_blocks(max(args.steps * args.batch_size, 64), args.block, shape["vocab_size"])
        plain = plain_loop(model_dir, blocks, args.batch_size, args.steps, args.compile, cuda)
        try:
            ours = tuner_core(model_dir, blocks, args.batch_size, args.steps, args.compile, root)
        except Exception as exc:  # noqa: BLE001 (a machine without what the Trainer needs: say so, keep plain's)
            ours = {"error": f"{type(exc).__name__}: {exc}"[:500], "tokens_per_s": float("nan"),
                    "peak_memory_mb": 0.0}
        sweeps = []
        if not args.no_sweep and cuda and all(importlib.util.find_spec(m) for m in ("ray", "datasets")):
            sweeps = shared_sweep(args, model_dir, root)
        with torch.device("meta"):
            shaped = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.from_pretrained(model_dir))
    per_token = gpu.flops_per_token(*gpu.model_shape(shaped), args.block)
    peak = gpu.peak_flops(device_name(cuda)) if cuda else None
    for arm in (plain, ours):
        arm["mfu"] = gpu.mfu(arm["tokens_per_s"], per_token, peak) if "error" not in arm else None
    ratio = ours["tokens_per_s"] / plain["tokens_per_s"]
    name = device_name(cuda)

    print(f"Device: {name}; torch {torch.__version__}, transformers {transformers.__version__}; model {shape}, "
          f"sequence {args.block}, batch {args.batch_size}, {args.steps} steps, compile {args.compile}; "
          f"{per_token / 1e6:.1f} MFLOP per token; peak {peak / 1e12 if peak else float('nan'):.1f} TFLOP/s\n")
    print("| arm | tokens/s | MFU | peak memory MiB |")
    print("|---|---|---|---|")
    for label, arm in (("plain PyTorch loop", plain), ("tuner training core", ours)):
        mfu = f"{arm['mfu']:.1%}" if arm["mfu"] is not None else "n/a"
        print(f"| {label} | {arm['tokens_per_s']:.0f} | {mfu} | {arm['peak_memory_mb']:.0f} |")
    print(f"\ntuner / plain tokens/s: {ratio:.3f} (target ≥ 0.95)" + (f"; tuner arm failed: {ours['error']}"
                                                                      if "error" in ours else ""))
    for row in sweeps:
        print(f"| sweep of {row['trials']} at gpus_per_trial {row['gpus_per_trial']} | {row['tokens_per_s']:.0f} "
              f"| | wall {row['wall_s']:.1f} s |")
    if not sweeps:
        print("(sweep part skipped: it needs Ray, datasets and a GPU, or --no-sweep)")
    print(json.dumps({"device": name, "compile": args.compile, "steps": args.steps, "batch": args.batch_size,
                      "sequence": args.block, "flops_per_token": per_token, "peak_flops": peak,
                      "plain": {k: round(v, 4) if isinstance(v, float) else v for k, v in plain.items()},
                      "tuner": {k: round(v, 4) if isinstance(v, float) else v for k, v in ours.items()},
                      "ratio": round(ratio, 4), "sweep": sweeps}))


if __name__ == "__main__":
    main()
