"""Packed blocks against padded batches: real (non-padding) training tokens per second.

    python bench/packing.py [--steps 30] [--batch-sizes 8 16 32] [--block-size N] [--spec search_spaces/tiny.yaml]

Both sides train the same tiny model from the same initial weights on the same cleaned paragraphs
of the spec's train split, tokenized with the same tokenizer, on CPU:
- packed: what every trial trains on, the paragraphs concatenated (EOS between) and cut into
  `block_size` blocks (`tuner.packing.pack`), in a seeded random order;
- padded: the seed guide's batching, paragraphs in a seeded random order, each truncated at
  `block_size`, each batch padded to its longest member (padding masked out of attention and loss).
Throughput counts only real tokens. Prints a Markdown table and, last, a JSON line.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def paragraphs(spec):
    """The spec's cleaned train paragraphs, tokenized (no EOS), and the tokenizer."""
    from transformers import AutoTokenizer

    from tuner import data, model, sources

    with tempfile.TemporaryDirectory() as cache:
        splits, _ = data.clean_and_split(spec.data, sources.load(spec.data, None, Path(cache)))
        texts = list(splits["train"][spec.data.text_column])
    tokenizer = AutoTokenizer.from_pretrained(model.resolve(spec.model.name_or_path))
    return [ids for ids in tokenizer(texts)["input_ids"] if ids], tokenizer


def packed_batches(token_lists, eos: int, block: int, batch: int, seed: int):
    import numpy as np
    import torch
    from datasets import Dataset

    from tuner.packing import pack

    with tempfile.TemporaryDirectory() as folder:
        pack(Dataset.from_dict({"input_ids": token_lists}), eos, block, False, Path(folder) / "p.arrow")
        packed = Dataset.from_file(str(Path(folder) / "p.arrow"))
        blocks = [np.asarray(row, dtype=np.int32) for row in packed["input_ids"]]
    random.Random(seed).shuffle(blocks)
    for start in range(0, len(blocks) - batch + 1, batch):
        ids = torch.from_numpy(np.stack(blocks[start:start + batch]).astype("int64"))
        yield {"input_ids": ids, "labels": ids}, ids.numel(), ids.numel()


def padded_batches(token_lists, eos: int, block: int, batch: int, seed: int):
    import torch

    order = list(token_lists)
    random.Random(seed).shuffle(order)
    for start in range(0, len(order) - batch + 1, batch):
        rows = [ids[:block] for ids in order[start:start + batch]]
        width = max(len(r) for r in rows)
        ids = torch.full((batch, width), eos, dtype=torch.int64)
        mask = torch.zeros((batch, width), dtype=torch.int64)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = torch.tensor(row)
            mask[i, :len(row)] = 1
        labels = ids.masked_fill(mask == 0, -100)
        yield {"input_ids": ids, "attention_mask": mask, "labels": labels}, int(mask.sum()), ids.numel()


def train(batches, steps: int, model_path: str) -> tuple[float, int, int]:
    """Train `steps` batches (after 3 warm-up ones); returns seconds, real tokens, token positions."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_path)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    real = positions = 0
    seconds = 0.0
    for i, (inputs, n_real, n_positions) in enumerate(batches):
        if i == steps + 3:
            break
        start = time.perf_counter()
        model(**inputs).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= 3:
            seconds += time.perf_counter() - start
            real += n_real
            positions += n_positions
    return seconds, real, positions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default=str(ROOT / "search_spaces" / "tiny.yaml"))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--block-size", type=int, help="default: the spec's data.block_size")
    args = parser.parse_args()

    import torch
    import transformers

    from tuner import model
    from tuner.spec import load_spec

    transformers.utils.logging.disable_progress_bar()
    spec = load_spec(args.spec)
    token_lists, tokenizer = paragraphs(spec)
    eos, path = tokenizer.eos_token_id, model.resolve(spec.model.name_or_path)
    block = args.block_size or spec.data.block_size
    rows = []
    for batch in args.batch_sizes:
        p_s, p_real, _ = train(packed_batches(token_lists, eos, block, batch, args.seed), args.steps, path)
        d_s, d_real, d_positions = train(padded_batches(token_lists, eos, block, batch, args.seed), args.steps, path)
        rows.append({"batch_size": batch, "packed_tps": p_real / p_s, "padded_tps": d_real / d_s,
                     "padding_fraction": 1 - d_real / d_positions})
    print(f"Workload: {args.spec}, {len(token_lists)} train paragraphs, block_size {block}, "
          f"{args.steps} timed steps per side, CPU ({torch.get_num_threads()} threads)\n")
    print("| batch size | packed real tokens/s | padded real tokens/s | packed / padded | padding in padded batches |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['batch_size']} | {r['packed_tps']:.0f} | {r['padded_tps']:.0f} | "
              f"{r['packed_tps'] / r['padded_tps']:.2f}× | {r['padding_fraction']:.1%} |")
    mean = lambda key: sum(r[key] for r in rows) / len(rows)  # noqa: E731
    print(json.dumps({"packed_tps": round(mean("packed_tps"), 1), "padded_tps": round(mean("padded_tps"), 1),
                      "padding_fraction": round(mean("padding_fraction"), 4), "by_batch_size": rows}))


if __name__ == "__main__":
    main()
