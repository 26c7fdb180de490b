"""Data, prepared once per sweep on the driver: load → clean → dedup → split → tokenize → pack.

Every step is a `datasets` operation on Arrow files in the prepared directory's cache, run by
`data.num_proc` processes where it parallelizes (cleaning, tokenizing): no step holds the corpus or
its tokens as Python lists, so memory stays flat whatever the corpus's size. Exact duplicates are
found from a 63-bit hash per record. The seeded split picks record indices, so the same spec gives
the same blocks, bit for bit, whatever `num_proc`.

The result is Arrow in the sweep directory (`data/<fingerprint>/`), memory-mapped by every trial,
and reused by any later run whose data and tokenizer settings hash to the same fingerprint; what
each step did is in `data/summary.json` (and report.html).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import logging
import os
import random
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from tuner import builtin, cleaning, datacheck, datafiles, layout, packing, sources, space, storage
from tuner import model as model_lib
from tuner.errors import UserError
from tuner.spec import CleanSpec, DataSpec, Spec

log = logging.getLogger("tuner")

SPLITS = datafiles.SPLITS


@dataclass
class Prepared:
    """What a trial needs to find the data; small enough to travel with every trial."""

    path: str  # the Arrow DatasetDict
    tokenizer_path: str  # the tokenizer, saved beside the data (pad token set)
    fingerprint: str
    block_size: int
    blocks: dict[str, int]  # full blocks per split (test: plus one partial block where there is one)
    tokens: dict[str, int]  # tokens per split
    records: dict[str, int]  # records per split after cleaning
    shared: str | None = None  # the prepared directory on storage every node reaches
    pairs: str | None = None  # instruction data: the test split's (prompt, completion) token ids

    def train_tokens(self) -> int:
        return self.blocks["train"] * self.block_size

    def on_this_node(self) -> "Prepared":
        """A copy that reads from this node's local cache (copied there once from storage)."""
        if self.shared is None:
            return self
        local = storage.node_copy(self.shared, self.fingerprint)
        return replace(self, path=str(local / "arrow"), tokenizer_path=str(local / "tokenizer"),
                       pairs=str(local / Path(self.pairs).name) if self.pairs else None)


# ---------------------------------------------------------------------------------------------
# Cleaning, dedup and splitting: record indices chosen from Arrow columns.


def clean(source: dict[str, Any], data: DataSpec, num_proc: int, key: str) -> dict[str, Any]:
    """Each source split cleaned (`cleaning.clean_batch`, in parallel), with the hash, empty and
    changed columns beside the record's own."""
    text_fields = [] if data.messages_column else list(datafiles.fields(data).values())
    label = data.completion_column or data.text_column
    out = {}
    for name, split in source.items():
        keep = {*text_fields, data.messages_column}
        out[name] = packing.map_in_pieces(
            split, cleaning.clean_batch, num_proc, f"{key}-clean-{name}", "cleaning",
            fn_kwargs={"rules": data.clean, "text_fields": text_fields, "label_field": label,
                       "messages_field": data.messages_column},
            remove_columns=[c for c in split.column_names if c not in keep])
    return out


def kept_indices(splits: list[Any], rules: CleanSpec) -> tuple[list[np.ndarray], dict[str, int]]:
    """The records each split keeps, in order: empty ones dropped, and each exact duplicate after
    its first occurrence over all the splits in turn; and how many each rule changed or dropped."""
    hashes = np.concatenate([_column(s, cleaning.HASH, np.int64) for s in splits])
    empty = np.concatenate([_column(s, cleaning.EMPTY, bool) for s in splits])
    counts = {"records_in": len(hashes)}
    for rule in cleaning.RULES:
        counts[f"changed_{rule}"] = int(sum(_column(s, cleaning.CHANGED[rule], bool).sum() for s in splits))
    keep = ~empty if rules.drop_empty else np.ones(len(hashes), bool)
    counts["dropped_empty"] = int(len(hashes) - keep.sum())
    if rules.drop_duplicates:
        candidates = np.flatnonzero(keep)
        _, first = np.unique(hashes[candidates], return_index=True)
        unique = np.zeros(len(hashes), bool)
        unique[candidates[first]] = True
        counts["dropped_duplicate"] = int(keep.sum() - unique.sum())
        keep = unique
    else:
        counts["dropped_duplicate"] = 0
    counts["records_out"] = int(keep.sum())
    bounds = np.cumsum([0] + [len(s) for s in splits])
    return [np.flatnonzero(keep[a:b]) for a, b in itertools.pairwise(bounds)], counts


def _column(split, name: str, dtype) -> np.ndarray:
    return split.data.column(name).to_numpy().astype(dtype, copy=False)


def split_indices(n: int, ratios: dict[str, float], seed: int) -> dict[str, np.ndarray]:
    """A seeded permutation of `n` records cut by the ratios; every split gets at least one record.
    Each split's indices come back sorted: records are read in file order (the Trainer shuffles
    blocks), and the split is decided by the permutation alone."""
    if n < 3:
        raise UserError(f"data: only {n} records left after cleaning; a train/validation/test "
                        "split needs at least 3: point data.path or data.dataset at more text")
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, round(n * ratios["validation"]))
    n_test = max(1, round(n * ratios["test"]))
    while n - n_val - n_test < 1:  # rounding took everything: give train one back
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    n_train = n - n_val - n_test
    cuts = {"train": order[:n_train], "validation": order[n_train:n_train + n_val],
            "test": order[n_train + n_val:]}
    return {name: np.sort(idx) for name, idx in cuts.items()}


def own_splits(source: dict[str, Any], data: DataSpec) -> dict[str, str] | None:
    """Our split names → the source's, when it has train, validation and test (or `data.splits`)."""
    if data.splits and data.path is None:
        missing = [name for name in data.splits.values() if name not in source]
        if missing:
            raise UserError(f"data.splits: {data.dataset!r} has no split {missing[0]!r}; its splits are "
                            f"{sorted(source)}: name one of them")
        return dict(data.splits)
    found = {}
    for ours, aliases in datafiles.SPLIT_ALIASES.items():
        match = next((name for name in aliases if name in source), None)
        if match is None:
            return None
        found[ours] = match
    return found


@dataclass
class Chosen:
    """The records kept, as one dataset in file order (a `select` of the cleaned records), and the
    split of each: an index into SPLITS."""

    records: Any
    split_of: np.ndarray
    counts: dict[str, Any]

    def split(self, name: str):
        """One split's records alone (for tests and benchmarks; preparing reads them all at once)."""
        return self.records.select(np.flatnonzero(self.split_of == SPLITS.index(name)))


def choose(data: DataSpec, source: dict[str, Any], num_proc: int = 1, key: str = "data") -> Chosen:
    """Clean, drop empty records and duplicates, and split: the source's own splits where it has
    all three, else a seeded split of everything."""
    from datasets import concatenate_datasets

    mapping = own_splits(source, data)
    try:
        cleaned = clean(source, data, num_proc, key)
    except UnicodeDecodeError:  # Arrow's JSON reader takes bytes on trust: a bad one is met here
        if data.path is not None:
            datacheck.check(data)  # names the file and the byte
        raise UserError(f"{_source_key(data)}: {_source_name(data)!r} holds text that is not "
                        f"{data.encoding}; set data.encoding to its encoding") from None
    counts: dict[str, Any] = {}
    if mapping:
        # train first: a duplicate of a train record is dropped from the evaluation splits
        parts = [cleaned[mapping[s]] for s in SPLITS]
        keep, counts["cleaning"] = kept_indices(parts, data.clean)
        keep = [idx[: data.max_records] for idx in keep]
        empty = [mapping[s] for s, idx in zip(SPLITS, keep) if not len(idx)]
        if empty:
            raise UserError(f"{_source_key(data)}: no records left after cleaning in the split(s) "
                            f"{', '.join(empty)} of {_source_name(data)!r} ({_dropped(counts['cleaning'])}); "
                            "every split needs text: check the data's columns, or turn off data.clean rules "
                            "that remove what you need")
        offsets = np.cumsum([0] + [len(part) for part in parts])
        everything = concatenate_datasets(parts)
        rows = np.concatenate([idx + offset for idx, offset in zip(keep, offsets)])
        split_of = np.concatenate([np.full(len(idx), i, np.int8) for i, idx in enumerate(keep)])
        counts["source"] = "own splits: " + ", ".join(f"{s} = {mapping[s]}" for s in SPLITS)
    else:
        everything = concatenate_datasets([cleaned[name] for name in sorted(cleaned)])
        (rows,), counts["cleaning"] = kept_indices([everything], data.clean)
        rows = rows[: data.max_records]
        if len(rows) < len(SPLITS):  # said here, where the source and the cleaning counts are known
            raise UserError(f"{_source_key(data)}: only {len(rows)} record(s) of {_source_name(data)!r} left "
                            f"after cleaning ({_dropped(counts['cleaning'])}); a train/validation/test split "
                            f"needs at least 3: point {_source_key(data)} at more text, or turn off "
                            "data.clean rules that remove what you need")
        split_of = np.empty(len(rows), np.int8)
        for i, idx in enumerate(split_indices(len(rows), asdict(data.split), data.seed).values()):
            split_of[idx] = i
        counts["source"] = "seeded split {train:g}/{validation:g}/{test:g}".format(**asdict(data.split))
    records = everything.select(rows).remove_columns(list(cleaning.HELPER_COLUMNS))
    return Chosen(records, split_of, counts)


def clean_and_split(data: DataSpec, source: dict[str, Any], num_proc: int = 1,
                    key: str = "data") -> tuple[dict[str, Any], dict]:
    """`choose`, each split apart: its records in file order, and the counts."""
    chosen = choose(data, source, num_proc, key)
    return {name: chosen.split(name) for name in SPLITS}, chosen.counts


def _source_key(data: DataSpec) -> str:
    return "data.path" if data.path is not None else "data.dataset"


def _source_name(data: DataSpec) -> str:
    if data.path is not None:
        return data.path
    assert data.dataset is not None  # the spec's data check requires a path or a dataset
    return data.dataset


def _dropped(counts: dict[str, int]) -> str:
    return (f"{counts['records_in']} in, {counts['dropped_empty']} empty, "
            f"{counts['dropped_duplicate']} duplicate")


# ---------------------------------------------------------------------------------------------
# The stage.


def num_proc(data: DataSpec) -> int:
    return data.num_proc or max(1, min(os.cpu_count() or 1, 8))


def prepared_train_tokens(spec: Spec) -> int | None:
    """The train split's tokens, where a run has prepared the spec's data already (else None)."""
    meta = spec.sweep_dir / layout.DATA_DIR / fingerprint(spec) / "prepared.json"
    if not meta.is_file():
        return None
    prepared = json.loads(meta.read_text())
    return prepared["blocks"]["train"] * prepared["block_size"]


def find_prepared(spec: Spec) -> Prepared:
    """The data a run of the sweep prepared, without preparing any: the spec's own, else the one
    prepared data set the sweep holds (its files may have changed since)."""
    folder = spec.sweep_dir / layout.DATA_DIR
    own = folder / fingerprint(spec)
    found = [own] if (own / "prepared.json").is_file() else [p.parent for p in folder.glob("*/prepared.json")]
    if len(found) != 1:
        raise UserError(f"{folder}: {'no' if not found else 'more than one'} prepared data set for the spec; "
                        f"run `tuner resume {spec.sweep_dir}` to prepare it")
    return read_prepared(found[0])


def fingerprint(spec: Spec) -> str:
    """A hash of everything that decides the prepared data: data settings, tokenizer, source files.
    `num_proc` decides only how fast: the same data is reused whatever it is."""
    data = asdict(spec.data)
    data.pop("num_proc")
    files = []
    if spec.data.path is not None and spec.data.path != builtin.CORPUS:
        for f in datafiles.locate(spec.data).all():
            stat = os.stat(f)
            files.append((f, stat.st_size, stat.st_mtime_ns))
    key = {"data": data, "tokenizer": spec.model.name_or_path, "revision": spec.model.revision,
           "files": files, "format": 2}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def prepare(spec: Spec, sweep_dir: Path) -> Prepared:
    """Prepare the sweep's data once; a later run with the same fingerprint reuses it. Built in a
    temporary folder renamed into place: a crash leaves no half-prepared data to reuse."""
    key = fingerprint(spec)
    out = sweep_dir / layout.DATA_DIR / key
    if (out / "prepared.json").exists():
        prepared = read_prepared(out)
        log.info("data: reusing prepared data %s (%s train blocks)", out, prepared.blocks["train"])
    else:
        log.info("data: preparing %s", spec.data.path or f"{spec.data.dataset} ({spec.data.config})")
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        prepared = _build(spec, key, tmp, out)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
        log.info("data: %s records, %s tokens, %s blocks of %d tokens (train/validation/test)",
                 *("/".join(str(getattr(prepared, kind)[s]) for s in SPLITS)
                   for kind in ("records", "tokens", "blocks")),
                 spec.data.block_size)
    _publish_summary(out, sweep_dir)
    return prepared


def _build(spec: Spec, key: str, tmp: Path, out: Path) -> Prepared:
    """Every step, into `tmp` (the intermediate Arrow files in `tmp/cache`, deleted at the end); the
    Prepared that will describe it once it is moved to `out`."""
    tokenizer = model_lib.load_tokenizer(spec.model.name_or_path, spec.model.revision, spec.model.token_env,
                                         spec.model.trust_remote_code, spec.model.code_revision)
    packing.check_chat_template(tokenizer, spec.data)
    cache = tmp / "cache"
    cache.mkdir(parents=True)
    procs = num_proc(spec.data)
    chosen = choose(spec.data, sources.load(spec.data, spec.model.token_env, cache), procs, key)
    counts = chosen.counts
    log.info("data: cleaned %s", json.dumps(counts))
    labelled = bool(spec.data.prompt_column or spec.data.messages_column)
    tokens = packing.tokenize(chosen.records, tokenizer, spec.data, procs, f"{key}-tokens")
    for name in SPLITS:
        (tmp / "arrow" / name).mkdir(parents=True)
    # test keeps its last partial block, and for instruction data its prompts (the final evaluation's)
    stats = packing.pack_splits(tokens, chosen.split_of, SPLITS, tokenizer.eos_token_id, spec.data.block_size,
                                tmp / "arrow", ARROW_FILE, tmp / PAIRS_FILE if labelled else None)
    describe_in_place(tmp / "arrow", labelled, key)
    tokenizer.save_pretrained(tmp / "tokenizer")
    prepared = Prepared(path=str(out / "arrow"), tokenizer_path=str(out / "tokenizer"), fingerprint=key,
                        block_size=spec.data.block_size, blocks={s: stats[s].blocks for s in SPLITS},
                        tokens={s: stats[s].block_tokens for s in SPLITS},
                        records={s: stats[s].records for s in SPLITS},
                        pairs=str(out / PAIRS_FILE) if labelled else None)
    write_prepared(tmp, prepared)
    layout.write_text(tmp / layout.DATA_SUMMARY, json.dumps(summary(spec, counts, stats, procs), indent=2))
    shutil.rmtree(cache, ignore_errors=True)
    return prepared


PAIRS_FILE = "test_pairs.jsonl"
ARROW_FILE = "data-00000-of-00001.arrow"  # a split's blocks, named as `save_to_disk` names one shard


def describe_in_place(folder: Path, labelled: bool, key: str) -> None:
    """What `load_from_disk` reads beside the Arrow file packed straight into each `folder/<split>/`:
    the files `DatasetDict.save_to_disk` writes, taken from an empty Dataset of the same columns.
    Saving would copy the blocks through a memory map, and even opening them reads the file's batch
    headers through one: pages (a sixth of the blocks' size) the driver's RSS would keep."""
    from datasets import Dataset, Features, List, Value, config

    columns = ["input_ids", "labels"] if labelled else ["input_ids"]
    empty = Dataset.from_dict({c: [] for c in columns}, features=Features({c: List(Value("int32")) for c in columns}))
    info = asdict(empty.info)
    for name in SPLITS:
        state = {k: empty.__dict__[k] for k in ("_format_columns", "_format_kwargs", "_format_type",
                                                 "_output_all_columns")}
        state.update(_fingerprint=f"{key}-{name}", _split=None, _data_files=[{"filename": ARROW_FILE}])
        (folder / name / config.DATASET_STATE_JSON_FILENAME).write_text(json.dumps(state, indent=2, sort_keys=True))
        (folder / name / config.DATASET_INFO_FILENAME).write_text(json.dumps({k: info[k] for k in sorted(info)},
                                                                              indent=2))
    (folder / config.DATASETDICT_JSON_FILENAME).write_text(json.dumps({"splits": list(SPLITS)}))


def summary(spec: Spec, counts: dict, stats: dict[str, packing.PackStats], procs: int) -> dict[str, Any]:
    """What preparing did, for people: records in and out per cleaning rule, tokens per split, the
    record lengths in tokens, and how much of the tokens packing kept."""
    return {"source": _source_name(spec.data), "split": counts["source"], "num_proc": procs,
            "cleaning": counts["cleaning"], "block_size": spec.data.block_size,
            "records": {s: stats[s].records for s in SPLITS},
            "tokens": {s: stats[s].tokens for s in SPLITS},
            "blocks": {s: stats[s].blocks for s in SPLITS},
            "packing_efficiency": {s: round(stats[s].efficiency(), 4) for s in SPLITS},
            "length_histogram": {"bins": packing.LENGTH_BINS,
                                 "counts": {s: [int(c) for c in stats[s].length_counts] for s in SPLITS}}}


def _publish_summary(prepared_dir: Path, sweep_dir: Path) -> None:
    """`data/summary.json`: the summary of the data this sweep uses now."""
    source = prepared_dir / layout.DATA_SUMMARY
    if source.exists():
        layout.write_text(sweep_dir / layout.DATA_DIR / layout.DATA_SUMMARY, source.read_text())


def read_pairs(prepared: Prepared) -> list[tuple[list[int], list[int]]] | None:
    """The test split's (prompt, completion) token ids of instruction data; None for plain text."""
    if not prepared.pairs:
        return None
    rows = [json.loads(line) for line in Path(prepared.pairs).read_text().splitlines() if line.strip()]
    return [(row["prompt"], row["completion"]) for row in rows]


def check_prepared(spec: Spec, prepared: Prepared) -> None:
    """Checks that need the data: every split has blocks, train has at least one optimizer step."""
    problems = []
    for name in SPLITS:
        if prepared.blocks[name] == 0:
            problems.append(f"data.block_size: got {spec.data.block_size}, but the {name} split has "
                            f"only {prepared.tokens[name]} tokens, less than one block; lower "
                            "data.block_size or add data")
    if 0 < prepared.blocks["train"] < space.largest_batch(spec):
        keys, product = _largest_batch(spec)
        problems.append(f"{keys}: the train split has {prepared.blocks['train']} blocks, fewer than the "
                        f"largest effective batch ({product}); "
                        "lower the batch size or accumulation, lower data.block_size for more blocks, "
                        "or add data")
    if problems:
        raise UserError("the data does not fit the spec:\n" + "\n".join(f"  - {p}" for p in problems))


def _largest_batch(spec: Spec) -> tuple[str, str]:
    """The key paths behind the largest effective batch, and its product, for messages."""
    names = ("per_device_train_batch_size", "gradient_accumulation_steps")
    keys = [f"search.space.{n}" if n in spec.search.space else f"train.{n}" for n in names]
    batch, accumulation = (int(space.largest(spec, n)) for n in names)
    return " × ".join(keys), f"{batch} × {accumulation} = {batch * accumulation} blocks"


LOCATED = ("path", "tokenizer_path", "pairs")  # stored relative to the prepared directory: it may move


def write_prepared(directory: Path, prepared: Prepared) -> None:
    """`prepared.json`, its paths relative to the prepared directory (a moved sweep still finds them)."""
    meta = asdict(prepared)
    for key in LOCATED:
        if meta[key] is not None:
            meta[key] = Path(meta[key]).name  # arrow/, tokenizer/, the pairs file: all directly inside
    (Path(directory) / "prepared.json").write_text(json.dumps(meta, indent=2))


def read_prepared(directory: Path) -> Prepared:
    """The description `prepare` wrote beside the data it prepared in `directory`, its paths placed
    where the directory is now."""
    meta = json.loads((Path(directory) / "prepared.json").read_text())
    for key in LOCATED:
        if meta.get(key) is not None and not os.path.isabs(meta[key]):
            meta[key] = str(Path(directory).resolve() / meta[key])
    return Prepared(**meta)


def load_prepared(prepared: Prepared):
    """The memory-mapped DatasetDict (no copy into memory)."""
    from datasets import load_from_disk

    return load_from_disk(prepared.path)


def trial_splits(prepared: Prepared, eval_blocks: int | None, seed: int) -> tuple[Any, Any]:
    """The train split and the validation blocks a trial evaluates at its reports, opened once per
    worker process: the trials a reused worker runs one after another skip it.

    With `eval_blocks`, a fixed sample of that many validation blocks, drawn with `seed` so that
    every trial (and every retry) is ranked on the same blocks; the full split stays for promotion.
    """
    return _trial_splits(prepared.path, eval_blocks, seed)


@functools.lru_cache(maxsize=2)
def _trial_splits(path: str, eval_blocks: int | None, seed: int) -> tuple[Any, Any]:
    from datasets import load_from_disk

    splits = load_from_disk(path)
    validation = splits["validation"]
    if eval_blocks is not None and eval_blocks < len(validation):
        picked = sorted(random.Random(seed).sample(range(len(validation)), eval_blocks))
        validation = validation.select(picked)
    return splits["train"].with_format("torch"), validation.with_format("torch")
