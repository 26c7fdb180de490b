"""Packed blocks against padded batches: real (non-padding) training tokens per second, and the
validation loss each reaches on the same number of real training tokens.

    python bench/packing.py [--block-sizes 64 128] [--batch-sizes 8 16 32] [--seeds 0 1 2] [--steps 30]
                            [--quality-tokens 1000000] [--quality-block 128] [--quality-batch 16] [--smoke]

Every arm trains the tiny model of `--spec` from the same initial weights (its saved ones; dropout
seeded by the seed) with AdamW (weight decay 0), clipping at 1.0 and a linear decay to 0, on CPU, on
the spec's cleaned train paragraphs with the same tokenizer, each followed by EOS as packing does:
- packed: what every trial trains on, the paragraphs concatenated and cut into blocks
  (`tuner.packing.pack`), the blocks in a seeded random order each epoch;
- padded: each paragraph truncated at the block size, each batch padded to its longest row (padding
  masked out of attention and loss), in length-grouped order: Hugging Face's `group_by_length=True`
  (a seeded shuffle, megabatches of 50 batches each sorted longest first). That is what a careful
  user turns on, and it wastes far less padding than random order, so it is the padded arm the
  ratio and the quality comparison use (timed on batches drawn at random from each epoch's, since
  HF's order puts a megabatch's longest, padding-free rows first);
- padded, random order: the same rows in a seeded random order, measured for speed alone, for
  comparison with earlier results.

Speed: `--steps` timed steps per arm after 3 warm-up steps, per seed; throughput counts real tokens
only. A cell's tokens/s are medians over seeds; its ratio is packed/padded paired per seed, given as
median (min-max). Target: median ratio >= 1.8 at every batch size at block 128 (block 64: no target).

Quality: at `--quality-block` and `--quality-batch`, per seed, each arm trains until it has consumed
`--quality-tokens` real tokens (the last batch cut to the row that reaches it), then both are
evaluated with `tuner.promote.evaluate` (token-weighted mean loss) on the validation split packed into
blocks the same way (what trials are ranked on), and, as a check, on each validation paragraph alone
(+EOS, truncated at the block size), which spares the padded arm the cross-paragraph context it never
trained on. Rule: packed is no worse when median(packed - padded) on the validation blocks <= noise,
noise = max(max - min of the padded arm's loss over seeds, `--tolerance`).

Prints a Markdown table for speed, one for quality, and, last, a JSON line.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WARMUP = 3  # untimed steps per arm before timing
ARMS = ("packed", "padded", "random")  # packed; padded, length-grouped; padded, random order
MEGABATCH = 50  # batches per length-sorted megabatch, as in HF's LengthGroupedSampler
TARGET = 1.8  # packed/padded real tokens/s at block 128


def paragraphs(spec) -> tuple[list[list[int]], list[list[int]], object]:
    """The spec's cleaned train and validation paragraphs, tokenized (no EOS), and the tokenizer."""
    from transformers import AutoTokenizer

    from tuner import data, model, sources

    with tempfile.TemporaryDirectory() as cache:
        splits, _ = data.clean_and_split(spec.data, sources.load(spec.data, None, Path(cache)))
        texts = {name: list(splits[name][spec.data.text_column]) for name in ("train", "validation")}
    tokenizer = AutoTokenizer.from_pretrained(model.resolve(spec.model.name_or_path))
    ids = {name: [row for row in tokenizer(rows)["input_ids"] if row] for name, rows in texts.items()}
    return ids["train"], ids["validation"], tokenizer


def pack_blocks(token_lists: list[list[int]], eos: int, block: int) -> list:
    """The paragraphs packed into full blocks by tuner's own packing, as int32 arrays."""
    import numpy as np
    from datasets import Dataset

    from tuner.packing import pack

    with tempfile.TemporaryDirectory() as folder:
        pack(Dataset.from_dict({"input_ids": token_lists}), eos, block, False, Path(folder) / "p.arrow")
        packed = Dataset.from_file(str(Path(folder) / "p.arrow"))
        return [np.asarray(row, dtype=np.int32) for row in packed["input_ids"]]


def packed_batches(blocks: list, batch: int, seed: int):
    """Endless batches of blocks, reshuffled each epoch."""
    import numpy as np
    import torch

    rng = random.Random(seed)
    while True:
        order = rng.sample(blocks, len(blocks))
        for start in range(0, len(order) - batch + 1, batch):
            ids = torch.from_numpy(np.stack(order[start:start + batch]).astype("int64"))
            yield {"input_ids": ids, "labels": ids}


def padded_batches(token_lists: list[list[int]], eos: int, block: int, batch: int, seed: int, grouped: bool,
                   sample: bool = False):
    """Endless batches of paragraphs (+EOS, truncated at `block`), each padded to its longest row;
    reshuffled each epoch and, `grouped`, length-grouped as HF's `group_by_length` does. `sample`:
    each epoch's batches in random order, so a few timed steps are a fair sample of the epoch (in
    HF's order the first steps are a megabatch's longest rows, with no padding at all)."""
    import torch

    rows = [(ids + [eos])[:block] for ids in token_lists]
    rng = random.Random(seed)
    while True:
        order = rng.sample(rows, len(rows))
        if grouped:
            size = MEGABATCH * batch
            order = [r for s in range(0, len(order), size) for r in sorted(order[s:s + size], key=len, reverse=True)]
        groups = [order[start:start + batch] for start in range(0, len(order) - batch + 1, batch)]
        for group in rng.sample(groups, len(groups)) if sample else groups:
            ids = torch.full((batch, max(map(len, group))), eos, dtype=torch.int64)
            mask = torch.zeros_like(ids)
            for i, row in enumerate(group):
                ids[i, :len(row)] = torch.tensor(row)
                mask[i, :len(row)] = 1
            yield {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def real_per_row(inputs: dict):
    mask = inputs.get("attention_mask")
    return mask.sum(1) if mask is not None else inputs["input_ids"].new_full((len(inputs["input_ids"]),),
                                                                            inputs["input_ids"].size(1))


def take_tokens(batches, tokens: int) -> list[dict]:
    """Batches until `tokens` real tokens, the last cut at the row that reaches the count."""
    import torch

    out, have = [], 0
    for inputs in batches:
        real = real_per_row(inputs)
        if have + int(real.sum()) >= tokens:
            rows = int(torch.searchsorted(real.cumsum(0), tokens - have)) + 1
            return out + [{key: value[:rows] for key, value in inputs.items()}]
        out.append(inputs)
        have += int(real.sum())
    raise RuntimeError("batches ran out")


def train(batches: list[dict], model_path: str, seed: int, lr: float, warmup: int = 0):
    """Train on `batches`; the model, and seconds, real tokens and token positions after `warmup` steps."""
    import torch
    from transformers import AutoModelForCausalLM, get_linear_schedule_with_warmup

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_path)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = get_linear_schedule_with_warmup(optimizer, 0, len(batches))
    seconds, real, positions = 0.0, 0, 0
    for i, inputs in enumerate(batches):
        start = time.perf_counter()
        model(**inputs).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= warmup:
            seconds += time.perf_counter() - start
            real += int(real_per_row(inputs).sum())
            positions += inputs["input_ids"].numel()
    return model, seconds, real, positions


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "lo": min(values), "hi": max(values)}


def arm_batches(arm: str, train_ids, blocks, eos: int, block: int, batch: int, seed: int, sample: bool = False):
    if arm == "packed":
        return packed_batches(blocks, batch, seed)
    return padded_batches(train_ids, eos, block, batch, seed, grouped=arm == "padded", sample=sample)


def speed(args, train_ids, eos: int, path: str) -> list[dict]:
    """Each (block, batch) cell: every arm for every seed, the arms in turn within a seed."""
    cells = []
    for block in args.block_sizes:
        blocks = pack_blocks(train_ids, eos, block)
        for batch in args.batch_sizes:
            runs: dict[str, list[tuple[float, float]]] = {arm: [] for arm in ARMS}
            for seed in args.seeds:
                for arm in ARMS:
                    source = arm_batches(arm, train_ids, blocks, eos, block, batch, seed, sample=True)
                    _, s, real, positions = train(list(itertools.islice(source, WARMUP + args.steps)), path, seed,
                                                  args.lr, WARMUP)
                    runs[arm].append((real / s, 1 - real / positions))
            tps = {arm: [t for t, _ in runs[arm]] for arm in ARMS}
            ratio = spread([p / d for p, d in zip(tps["packed"], tps["padded"])])
            cells.append({"block_size": block, "batch_size": batch, "packed_tps": statistics.median(tps["packed"]),
                          "padded_tps": statistics.median(tps["padded"]), "ratio": ratio,
                          "padding_fraction": statistics.median(f for _, f in runs["padded"]),
                          "random_tps": statistics.median(tps["random"]),
                          "random_padding_fraction": statistics.median(f for _, f in runs["random"]),
                          "target_met": ratio["median"] >= TARGET if block == 128 else None})
    return cells


def quality(args, train_ids, val_ids, eos: int, path: str) -> dict:
    """Per seed, both arms on `--quality-tokens` real tokens from the same weights, then validated."""
    from tuner.promote import evaluate

    block, batch = args.quality_block, args.quality_batch
    blocks = pack_blocks(train_ids, eos, block)
    val_blocks = [row.tolist() for row in pack_blocks(val_ids, eos, block)]
    val_docs = [(ids + [eos])[:block] for ids in val_ids]
    per_seed = []
    for seed in args.seeds:
        row: dict = {"seed": seed}
        for arm in ("packed", "padded"):
            batches = take_tokens(arm_batches(arm, train_ids, blocks, eos, block, batch, seed), args.quality_tokens)
            model, seconds, real, _ = train(batches, path, seed, args.lr)
            row |= {f"{arm}_loss": evaluate(model, val_blocks, 64)["eval_loss"],
                    f"{arm}_doc_loss": evaluate(model, val_docs, 64)["eval_loss"],
                    f"{arm}_tokens": real, f"{arm}_steps": len(batches), f"{arm}_s": seconds}
        per_seed.append(row)
    diff = spread([r["packed_loss"] - r["padded_loss"] for r in per_seed])
    padded = [r["padded_loss"] for r in per_seed]
    noise = max(max(padded) - min(padded), args.tolerance)
    return {"block_size": block, "batch_size": batch, "tokens": args.quality_tokens, "lr": args.lr,
            "val_blocks": len(val_blocks), "per_seed": per_seed, "diff": diff,
            "doc_diff": spread([r["packed_doc_loss"] - r["padded_doc_loss"] for r in per_seed]),
            "noise": noise, "no_worse": diff["median"] <= noise}


def print_speed(cells: list[dict]) -> None:
    print("| block | batch | packed real tok/s | padded (grouped) real tok/s | packed / padded, median (min–max) "
          f"| ≥ {TARGET}× | padding in padded batches | padded, random order: tok/s | its padding |")
    print("|---|---|---|---|---|---|---|---|---|")
    for c in cells:
        r, met = c["ratio"], {True: "met", False: "NOT met", None: "no target"}[c["target_met"]]
        print(f"| {c['block_size']} | {c['batch_size']} | {c['packed_tps']:.0f} | {c['padded_tps']:.0f} | "
              f"{r['median']:.2f}× ({r['lo']:.2f}–{r['hi']:.2f}) | {met} | {c['padding_fraction']:.1%} | "
              f"{c['random_tps']:.0f} | {c['random_padding_fraction']:.1%} |")


def print_quality(q: dict) -> None:
    print(f"\nQuality: block {q['block_size']}, batch {q['batch_size']}, {q['tokens']} real training tokens per arm, "
          f"lr {q['lr']:g}; validation: {q['val_blocks']} packed blocks (and each paragraph alone)\n")
    print("| seed | packed val loss | padded val loss | packed − padded | packed per-paragraph | "
          "padded per-paragraph | steps packed / padded | train s packed / padded |")
    print("|---|---|---|---|---|---|---|---|")
    for r in q["per_seed"]:
        print(f"| {r['seed']} | {r['packed_loss']:.4f} | {r['padded_loss']:.4f} | "
              f"{r['packed_loss'] - r['padded_loss']:+.4f} | {r['packed_doc_loss']:.4f} | {r['padded_doc_loss']:.4f} | "
              f"{r['packed_steps']} / {r['padded_steps']} | {r['packed_s']:.1f} / {r['padded_s']:.1f} |")
    d, dd = q["diff"], q["doc_diff"]
    print(f"\nmedian packed − padded {d['median']:+.4f} ({d['lo']:+.4f} to {d['hi']:+.4f}); per paragraph "
          f"{dd['median']:+.4f} ({dd['lo']:+.4f} to {dd['hi']:+.4f}); noise {q['noise']:.4f}: packed "
          f"{'no worse than padded by more than noise' if q['no_worse'] else 'WORSE than padded by more than noise'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default=str(ROOT / "search_spaces" / "tiny.yaml"))
    parser.add_argument("--block-sizes", "--block-size", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--seeds", "--seed", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per arm, seed and cell")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--quality-tokens", type=int, default=1_000_000,
                        help="real training tokens per arm: ~10 epochs of the tiny train split, ~0.5-1.5 min per arm")
    parser.add_argument("--quality-block", type=int, default=128)
    parser.add_argument("--quality-batch", type=int, default=16)
    parser.add_argument("--tolerance", type=float, default=0.01, help="the least loss difference counted as real")
    parser.add_argument("--smoke", action="store_true", help="one seed, 2 timed steps, 8192 quality tokens")
    args = parser.parse_args()
    if args.smoke:
        args.seeds, args.steps, args.quality_tokens = args.seeds[:1], 2, 8192

    import torch
    import transformers

    from tuner import model
    from tuner.spec import load_spec

    transformers.utils.logging.disable_progress_bar()
    started = time.perf_counter()
    spec = load_spec(args.spec)
    train_ids, val_ids, tokenizer = paragraphs(spec)
    eos, path = tokenizer.eos_token_id, model.resolve(spec.model.name_or_path)
    cells = speed(args, train_ids, eos, path)
    q = quality(args, train_ids, val_ids, eos, path)
    print(f"Workload: {args.spec}, {len(train_ids)} train paragraphs, seeds {args.seeds}, {args.steps} timed "
          f"steps per arm after {WARMUP} warm-up, CPU ({torch.get_num_threads()} threads)\n")
    print_speed(cells)
    print_quality(q)
    print(f"\n{time.perf_counter() - started:.0f} s in all")
    at_128 = [c["target_met"] for c in cells if c["block_size"] == 128]
    print(json.dumps({
        "speed": cells, "quality": q,
        "target_block128_ge_1_8": all(at_128) if at_128 else None,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version()},
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "torch_threads": torch.get_num_threads()}}))


if __name__ == "__main__":
    main()
