"""Data preparation: tuner's `data.prepare` against a plain Hugging Face `run_clm.py` pipeline.

    python bench/prepare.py [--sizes 100MB 1GB] [--repeats N] [--num-proc 2] [--workdir /tmp/tuner-bench-prepare]

Corpora: JSON lines `{"text": ...}` of unique paragraphs, each 3-8 seeded random sentences of the
pydoc topics plus a counter, generated once per size (1 MB = 10^6 bytes) and reused from the workdir.
Each arm runs in a fresh process, one at a time, alternating (tuner, run_clm, tuner, ...):
- tuner: `tuner.data.prepare` on a spec with the tiny GPT-2, block_size 128 and `data.num_proc`;
  it loads, cleans (CRLF line endings; empty records and exact duplicates dropped, by hash), splits
  80/10/10, tokenizes, packs (EOS after each document, one cut per split) and saves Arrow. Tokens:
  those in its packed blocks.
- run_clm: HF's recipe, `load_dataset("json")`, `map(tokenize, batched=True, num_proc)` then
  `map(group_texts, batched=True, num_proc)`, block_size 128, same tokenizer. What differs from the
  script: an EOS is appended to each document (as tuner does; the script adds none), its 5% validation
  slice is not taken (it only partitions the same rows), and `group_texts` does not raise on a batch
  shorter than a block. Its strongest form: no `attention_mask` or `labels` columns written (tuner
  writes neither: every block is full, and the collator makes labels), so it writes what tuner does.
  As in the script, no cleaning and a remainder dropped per batch of 1000 documents. Tokens: blocks x 128.
Both start their clock after the imports and stop once the dataset is on disk, with a fresh datasets
cache (`HF_DATASETS_CACHE`) and output directory each run. The parent samples the arm's process tree
(the arm and its `num_proc` workers) every 0.1 s: peak of the sum of RSS, which counts the page cache
of memory-mapped Arrow files (pages the kernel can drop), and peak of the sum of RssAnon
(`/proc/<pid>/status`: anonymous memory, what cannot be dropped), and peak of the sum of PSS
(`/proc/<pid>/smaps_rollup`): forked workers share their parent's pages, which RSS counts once in
every process and PSS splits among them, so the PSS sum is what the tree really holds. MB here is
MiB. Prints a table per size and, last, a JSON line of medians.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ARMS = ("tuner", "run_clm")
BLOCK_SIZE = 128
UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9}


def parse_size(label: str) -> int:
    """'100MB' → bytes (decimal units), so the labels read as the sizes on disk."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMG]B)", label.strip().upper())
    if not match:
        raise argparse.ArgumentTypeError(f"size {label!r}: expected e.g. 5MB, 100MB, 1GB")
    return int(float(match[1]) * UNITS[match[2]])


def sentences() -> list[str]:
    """The pydoc topics' distinct sentences, whitespace collapsed: the material every Python has."""
    from pydoc_data.topics import topics

    found = (s for text in topics.values() for s in re.split(r"(?<=[.!?])\s+", " ".join(text.split())))
    return list(dict.fromkeys(s for s in found if len(s) >= 20))


def make_corpus(path: Path, size: int, seed: int) -> None:
    """Stream unique paragraphs to `path` until it holds `size` bytes; memory stays flat whatever the
    size. Written under a temporary name, so an existing file is always a complete one."""
    if path.exists():
        return
    pool, rng = sentences(), random.Random(seed)
    tmp = path.with_name(path.name + ".tmp")
    written = count = 0
    with open(tmp, "w", encoding="ascii") as f:
        while written < size:
            text = " ".join(rng.sample(pool, rng.randint(3, 8))) + f" [{count}]"  # the counter: unique
            line = json.dumps({"text": text}) + "\n"  # ASCII-escaped, so len() is the byte count
            f.write(line)
            written, count = written + len(line), count + 1
    os.replace(tmp, path)


def tuner_arm(corpus: str, out: Path, num_proc: int) -> dict:
    """tuner's preparation as a sweep runs it; `num_proc` is null where this spec lacks the field."""
    import datasets
    from transformers import AutoTokenizer  # noqa: F401 -- imported before the clock, as in run_clm_arm

    from tuner import builtin
    from tuner.data import prepare
    from tuner.spec import SpecError, validate

    datasets.disable_progress_bars()
    builtin.tiny_gpt2_path()  # built once, before the clock, as for run_clm
    raw = {"name": "bench", "model": {"name_or_path": builtin.TINY_GPT2},
           "data": {"path": corpus, "block_size": BLOCK_SIZE, "num_proc": num_proc}, "search": {"num_samples": 1}}
    try:
        spec = validate(raw)
    except SpecError as exc:  # a tuner without data.num_proc: run single-process and say so
        if "num_proc" not in str(exc):
            raise
        del raw["data"]["num_proc"]
        spec, num_proc = validate(raw), None
    start = time.perf_counter()
    prepared = prepare(spec, out)
    return {"seconds": time.perf_counter() - start, "tokens": int(sum(prepared.tokens.values())),
            "num_proc": num_proc}


def run_clm_arm(corpus: str, out: Path, num_proc: int) -> dict:
    """run_clm.py's tokenize and group_texts maps, with tuner's tokenizer and an EOS per document."""
    from itertools import chain

    import datasets
    from transformers import AutoTokenizer  # noqa: F401 -- imported before the clock, as in tuner_arm

    from tuner import builtin, model

    datasets.disable_progress_bars()
    path = str(builtin.tiny_gpt2_path())
    start = time.perf_counter()
    tokenizer = model.load_tokenizer(path)
    raw = datasets.load_dataset("json", data_files=corpus, cache_dir=str(out / "hf-cache"))
    eos = tokenizer.eos_token_id

    def tokenize_function(examples):
        output = tokenizer(examples["text"], return_attention_mask=False)
        output["input_ids"] = [ids + [eos] for ids in output["input_ids"]]
        return output

    def group_texts(examples):
        concatenated = {k: list(chain(*examples[k])) for k in examples}
        total_length = len(next(iter(concatenated.values()))) // BLOCK_SIZE * BLOCK_SIZE
        return {k: [t[i: i + BLOCK_SIZE] for i in range(0, total_length, BLOCK_SIZE)]
                for k, t in concatenated.items()}

    tokenized = raw.map(tokenize_function, batched=True, num_proc=num_proc, remove_columns=["text"])
    lm = tokenized.map(group_texts, batched=True, num_proc=num_proc)
    return {"seconds": time.perf_counter() - start, "tokens": len(lm["train"]) * BLOCK_SIZE,
            "num_proc": num_proc}


def tree_memory(pid: int) -> tuple[int, int, int]:
    """Sums of RSS, RssAnon and PSS (bytes) over the process and all its descendants, now. RSS counts
    a page shared by forked workers once in each; PSS splits it among them: the tree's real use."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0, 0
    rss = anon = pss = 0
    for proc in procs:
        try:
            rss += proc.memory_info().rss
            status = Path(f"/proc/{proc.pid}/status").read_text()
            anon += int(re.search(r"^RssAnon:\s+(\d+) kB", status, re.MULTILINE)[1]) * 1024
            rollup = Path(f"/proc/{proc.pid}/smaps_rollup").read_text()
            pss += int(re.search(r"^Pss:\s+(\d+) kB", rollup, re.MULTILINE)[1]) * 1024
        except (psutil.NoSuchProcess, psutil.ZombieProcess, FileNotFoundError, ProcessLookupError, TypeError):
            pass  # a worker that ended between the listing and the read
    return rss, anon, pss


def run_arm(arm: str, corpus: Path, work: Path, num_proc: int) -> dict | None:
    """One arm in a fresh process with fresh caches, its tree's memory sampled every 0.1 s."""
    out = work / "runs" / arm
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    env = {**os.environ, "HF_DATASETS_CACHE": str(out / "hf-cache")}
    cmd = [sys.executable, __file__, "--arm", arm, "--corpus", str(corpus), "--out", str(out),
           "--num-proc", str(num_proc)]
    peak_rss = peak_anon = peak_pss = 0
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, env=env)
        while proc.poll() is None:
            rss, anon, pss = tree_memory(proc.pid)
            peak_rss, peak_anon, peak_pss = max(peak_rss, rss), max(peak_anon, anon), max(peak_pss, pss)
            time.sleep(0.1)
        stdout.seek(0), stderr.seek(0)
        lines, errors = stdout.read().strip().splitlines(), stderr.read().strip().splitlines()
    shutil.rmtree(out, ignore_errors=True)  # the 1 GB runs leave gigabytes of Arrow
    if proc.returncode != 0 or not lines:
        print(f"{arm} on {corpus.name} failed (exit {proc.returncode}):\n  " + "\n  ".join(errors[-15:]),
              file=sys.stderr)
        return None
    result = json.loads(lines[-1])
    return {**result, "tps": result["tokens"] / result["seconds"], "rss_mb": peak_rss / 2**20,
            "anon_mb": peak_anon / 2**20, "pss_mb": peak_pss / 2**20}


def summary(runs: list[dict], key: str) -> tuple[float | None, list[float] | None]:
    """Median and [min, max] of `key` over the arm's successful runs (None where none succeeded)."""
    values = [r[key] for r in runs]
    if not values:
        return None, None
    return round(statistics.median(values), 1), [round(min(values), 1), round(max(values), 1)]


def check(value: float | None, rule, *others: float | None) -> bool | None:
    """A target met or not; None where an arm failed, so a missing run never reads as a pass."""
    return None if value is None or None in others else rule(value, *others)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["100MB", "1GB"], help="corpus sizes, e.g. 5MB 100MB 1GB")
    parser.add_argument("--repeats", type=int, help="runs per arm and size (default: 3 under 500MB, else 1)")
    parser.add_argument("--num-proc", type=int, default=2)
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS), help="which arms to run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/tuner-bench-prepare"))
    parser.add_argument("--arm", choices=ARMS, help=argparse.SUPPRESS)  # inside an arm's process
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm:
        arm = tuner_arm if args.arm == "tuner" else run_clm_arm
        print(json.dumps(arm(args.corpus, args.out, args.num_proc)))
        return

    sizes = {label: parse_size(label) for label in args.sizes}
    args.workdir.mkdir(parents=True, exist_ok=True)
    medians: dict[str, dict] = {f"{arm}_{key}": {} for key in ("tps", "rss_mb", "anon_mb", "pss_mb") for arm in ARMS}
    intervals: dict[str, dict] = {key: {} for key in medians}
    for label, size in sizes.items():
        corpus = args.workdir / f"corpus-{label}-seed{args.seed}.jsonl"
        make_corpus(corpus, size, args.seed)
        repeats = args.repeats or (3 if size < 500 * 10**6 else 1)
        runs: dict[str, list[dict]] = {arm: [] for arm in ARMS}
        for _ in range(repeats):
            for arm in args.arms:
                if (result := run_arm(arm, corpus, args.workdir, args.num_proc)) is not None:
                    runs[arm].append(result)
        print(f"\n{label}: {corpus} ({corpus.stat().st_size / 1e6:.1f} MB), block_size {BLOCK_SIZE}, "
              f"num_proc {args.num_proc}, {repeats} run(s) per arm; median (min-max)\n")
        print("| arm | ok runs | tokens | tokens/s | peak RSS MiB | peak RssAnon MiB | peak PSS MiB | num_proc |")
        print("|---|---|---|---|---|---|---|---|")
        for arm in ARMS:
            cells = []
            for key in ("tps", "rss_mb", "anon_mb", "pss_mb"):
                median, span = summary(runs[arm], key)
                medians[f"{arm}_{key}"][label], intervals[f"{arm}_{key}"][label] = median, span
                cells.append(f"{median:.0f} ({span[0]:.0f}-{span[1]:.0f})" if span else "failed")
            tokens = runs[arm][0]["tokens"] if runs[arm] else "-"
            num_proc = runs[arm][0]["num_proc"] if runs[arm] else "-"
            print(f"| {arm} | {len(runs[arm])}/{repeats} | {tokens} | {' | '.join(cells)} | {num_proc} |")

    tps, clm_tps, rss = medians["tuner_tps"], medians["run_clm_tps"], medians["tuner_rss_mb"]
    small, large = min(sizes, key=sizes.get), max(sizes, key=sizes.get)
    targets = {f"tuner_rss_{large}_le_1.5x_{small}": check(rss[large], lambda a, b: a <= 1.5 * b, rss[small]),
               f"tuner_rss_{large}_le_2048": check(rss[large], lambda a: a <= 2048),
               "tuner_tps_ge_0.9x_run_clm": {label: check(tps[label], lambda a, b: a >= 0.9 * b, clm_tps[label])
                                             for label in sizes}}
    print(json.dumps({"tuner_tps": tps, "run_clm_tps": clm_tps, "tuner_rss_mb": rss,
                      "run_clm_rss_mb": medians["run_clm_rss_mb"], "tuner_anon_mb": medians["tuner_anon_mb"],
                      "run_clm_anon_mb": medians["run_clm_anon_mb"], "tuner_pss_mb": medians["tuner_pss_mb"],
                      "run_clm_pss_mb": medians["run_clm_pss_mb"], "intervals": intervals, "targets": targets}))


if __name__ == "__main__":
    main()
