"""Data, prepared once per sweep on the driver: load → clean → split → tokenize → pack → save.

The result is Arrow in the sweep directory (`data/<fingerprint>/`), memory-mapped by every trial,
and reused by any later run whose data and tokenizer settings hash to the same fingerprint.
Packing concatenates documents (EOS between them) and cuts `block_size` blocks, so no compute goes
to padding. Instruction data (`prompt_column`, `completion_column`) packs the same way with a
`labels` column that masks each prompt, so the loss is the completions' alone. Train and validation drop the last partial block; test keeps it, so the final
evaluation predicts every test token.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import html
import json
import logging
import os
import random
import re
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from tuner import builtin, space, storage
from tuner import model as model_lib
from tuner.errors import UserError, first_line
from tuner.spec import CleanSpec, DataSpec, Spec

log = logging.getLogger("tuner")

SPLITS = ("train", "validation", "test")
SPLIT_ALIASES = {"train": ("train",), "validation": ("validation", "valid", "val", "dev"),
                 "test": ("test",)}
FORMATS = {".txt": "text", ".text": "text", ".jsonl": "json", ".json": "json", ".csv": "csv",
           ".parquet": "parquet"}
TAG = re.compile(r"<[^>]+>")
SPACES = re.compile(r"[ \t\f\v\u00a0]+")
BLANK_LINES = re.compile(r"\n\s*\n+")


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
# Cleaning and splitting: plain functions on lists of strings, tested on their own.


def clean_text(text: str, rules: CleanSpec) -> str:
    if rules.strip_html:
        text = html.unescape(TAG.sub(" ", text))
    if rules.normalize_whitespace:
        lines = [SPACES.sub(" ", line).strip() for line in text.replace("\r\n", "\n").split("\n")]
        text = BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()
    return text


Record = Any  # a text, or an instruction record: a (prompt, completion) tuple


def clean_record(raw: Record, rules: CleanSpec) -> Record:
    if isinstance(raw, tuple):
        return tuple(clean_text(part if isinstance(part, str) else "", rules) for part in raw)
    return clean_text(raw if isinstance(raw, str) else "", rules)


def clean_records(texts: list[Record], rules: CleanSpec, seen: set | None = None) -> tuple[list[Record], dict[str, int]]:
    """Clean each record; drop empty ones (an instruction record: an empty completion) and exact
    duplicates (also of those in `seen`)."""
    seen = set() if seen is None else seen
    kept: list[Record] = []
    counts = {"records_in": len(texts), "dropped_empty": 0, "dropped_duplicate": 0}
    for raw in texts:
        text = clean_record(raw, rules)
        if rules.drop_empty and not (text[-1] if isinstance(text, tuple) else text).strip():
            counts["dropped_empty"] += 1
            continue
        if rules.drop_duplicates:
            if text in seen:
                counts["dropped_duplicate"] += 1
                continue
            seen.add(text)
        kept.append(text)
    counts["records_out"] = len(kept)
    return kept, counts


def split_records(texts: list[str], ratios: dict[str, float], seed: int) -> dict[str, list[str]]:
    """A seeded shuffle cut by the ratios; every split gets at least one record."""
    if len(texts) < 3:
        raise UserError(f"data: only {len(texts)} records left after cleaning; a train/validation/test "
                        "split needs at least 3: point data.path or data.dataset at more text")
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(len(texts) * ratios["validation"]))
    n_test = max(1, round(len(texts) * ratios["test"]))
    while len(texts) - n_val - n_test < 1:  # rounding took everything: give train one back
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    n_train = len(texts) - n_val - n_test
    cuts = {"train": order[:n_train], "validation": order[n_train:n_train + n_val],
            "test": order[n_train + n_val:]}
    return {name: [texts[i] for i in idx] for name, idx in cuts.items()}


# ---------------------------------------------------------------------------------------------
# Tokenizing and packing.


IGNORE = -100  # a label the loss skips: the prompt of an instruction record


def pack(token_lists: list[list[int]], eos_id: int, block_size: int, keep_remainder: bool) -> list[np.ndarray]:
    """Concatenate documents, each followed by EOS, and cut into `block_size` blocks.

    A trailing partial block is kept only when asked (test) and when it predicts at least one token.
    Labels (an instruction record's, its prompt masked) pack the same way, block for block.
    """
    lengths = [len(ids) + 1 for ids in token_lists]
    flat = np.empty(sum(lengths), dtype=np.int32)
    pos = 0
    for ids, n in zip(token_lists, lengths):
        flat[pos:pos + n - 1] = ids
        flat[pos + n - 1] = eos_id
        pos += n
    full = len(flat) // block_size
    blocks = list(flat[: full * block_size].reshape(full, block_size)) if full else []
    rest = flat[full * block_size:]
    if keep_remainder and len(rest) >= 2:
        blocks.append(rest)
    return blocks


def supervised(label_blocks: list[np.ndarray]) -> list[int]:
    """The blocks with at least one token to predict (a block of prompt alone has none: its loss
    would be 0 / 0)."""
    return [i for i, labels in enumerate(label_blocks) if np.any(labels[1:] != IGNORE)]


def _to_dataset(blocks: list[np.ndarray], labels: list[np.ndarray] | None = None):
    """Blocks → a datasets.Dataset with an `input_ids` list column (and `labels` for instruction
    data), built straight in Arrow."""
    import pyarrow as pa
    from datasets import Dataset

    def column(rows: list[np.ndarray]):
        values = np.concatenate(rows) if rows else np.empty(0, dtype=np.int32)
        offsets = np.zeros(len(rows) + 1, dtype=np.int32)
        np.cumsum([len(b) for b in rows], out=offsets[1:])
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, type=pa.int32()))

    table = {"input_ids": column(blocks)}
    if labels is not None:
        table["labels"] = column(labels)
    return Dataset(pa.table(table))


# ---------------------------------------------------------------------------------------------
# Loading.


def _data_files(pattern: str) -> list[str]:
    path = str(builtin.corpus_path()) if pattern == builtin.CORPUS else os.path.expanduser(pattern)
    files = sorted(glob.glob(path, recursive=True)) if glob.has_magic(path) else [path]
    files = [f for f in files if os.path.isfile(f)]
    if not files:
        raise UserError(f"data.path: no file matches {pattern!r}; give an existing file or glob "
                        f"(formats: {', '.join(sorted(FORMATS))}) or {builtin.CORPUS}")
    kinds = {FORMATS.get(Path(f).suffix.lower()) for f in files}
    if None in kinds or len(kinds) != 1:
        suffixes = sorted({Path(f).suffix or '(none)' for f in files})
        raise UserError(f"data.path: {pattern!r} matches files of type {', '.join(suffixes)}; "
                        f"use files of one type among {', '.join(sorted(FORMATS))}")
    return files


def load_source(data: DataSpec, token_env: str | None = None) -> dict[str, list[str]]:
    """The source's records as texts, by the source's own split names (one `train` for files).
    A hub dataset is read with the token in `token_env`, if any."""
    import datasets

    if data.path is not None:
        files = _data_files(data.path)
        kind = FORMATS[Path(files[0]).suffix.lower()]
        kwargs = {"sample_by": "paragraph"} if kind == "text" else {}
        loaded = datasets.load_dataset(kind, data_files={"train": files}, **kwargs)
    else:
        try:
            loaded = datasets.load_dataset(data.dataset, data.config, **model_lib.hub_kwargs(None, token_env))
        except Exception as exc:  # the hub raises many kinds; all mean "cannot load this"
            raise UserError(f"data.dataset: cannot load {data.dataset!r} (config {data.config!r}): "
                            f"{first_line(exc)}") from None
    columns = {"data.prompt_column": data.prompt_column, "data.completion_column": data.completion_column} \
        if data.prompt_column else {"data.text_column": data.text_column}
    out: dict[str, list[Record]] = {}
    for name, split in loaded.items():
        for key, column in columns.items():
            if column not in split.column_names:
                raise UserError(f"{key}: got {column!r}, but the {name} split has columns "
                                f"{split.column_names}; set {key} to one of them")
        if data.prompt_column:
            out[name] = list(zip(split[data.prompt_column], split[data.completion_column]))
        else:
            out[name] = split[data.text_column]
    return out


def _source_splits(source: dict[str, list[str]]) -> dict[str, str] | None:
    """Map our split names to the source's, when it has train, validation and test."""
    found = {}
    for ours, aliases in SPLIT_ALIASES.items():
        match = next((name for name in aliases if name in source), None)
        if match is None:
            return None
        found[ours] = match
    return found


def clean_and_split(data: DataSpec, source: dict[str, list[str]]) -> tuple[dict[str, list[str]], dict]:
    """Use the source's own splits where it has all three, else a seeded split of everything."""
    mapping = _source_splits(source)
    counts: dict[str, Any] = {}
    if mapping:
        seen: set[str] = set()
        splits = {}
        for ours in SPLITS:  # train first: a duplicate of a train record is dropped from eval splits
            splits[ours], counts[ours] = clean_records(source[mapping[ours]], data.clean, seen)
        empty = [f"{mapping[s]} ({_dropped(counts[s])})" for s in SPLITS if not splits[s]]
        if empty:
            raise UserError(f"{_source_key(data)}: no records left after cleaning in the split(s) "
                            f"{', '.join(empty)} of {_source_name(data)!r}; every split needs text: check "
                            "data.text_column, or turn off data.clean rules that remove what you need")
        counts["source"] = "own splits"
    else:
        everything = [t for name in sorted(source) for t in source[name]]
        texts, counts["all"] = clean_records(everything, data.clean)
        if data.max_records:
            texts = texts[: data.max_records]
        if len(texts) < len(SPLITS):  # said here, where the source and the cleaning counts are known
            raise UserError(f"{_source_key(data)}: only {len(texts)} record(s) of {_source_name(data)!r} left "
                            f"after cleaning ({_dropped(counts['all'])}); a train/validation/test split "
                            f"needs at least 3: point {_source_key(data)} at more text, or turn off "
                            "data.clean rules that remove what you need")
        splits = split_records(texts, asdict(data.split), data.seed)
        counts["source"] = "seeded split {train:g}/{validation:g}/{test:g}".format(**asdict(data.split))
    if mapping and data.max_records:
        splits = {name: texts[: data.max_records] for name, texts in splits.items()}
    return splits, counts


def _source_key(data: DataSpec) -> str:
    return "data.path" if data.path is not None else "data.dataset"


def _source_name(data: DataSpec) -> str:
    return data.path if data.path is not None else data.dataset


def _dropped(counts: dict[str, int]) -> str:
    return (f"{counts['records_in']} in, {counts['dropped_empty']} empty, "
            f"{counts['dropped_duplicate']} duplicate")


# ---------------------------------------------------------------------------------------------
# The stage.


def fingerprint(spec: Spec) -> str:
    """A hash of everything that decides the prepared data: data settings, tokenizer, source files."""
    data = asdict(spec.data)
    files = []
    if spec.data.path is not None and spec.data.path != builtin.CORPUS:
        for f in _data_files(spec.data.path):
            stat = os.stat(f)
            files.append((f, stat.st_size, stat.st_mtime_ns))
    key = {"data": data, "tokenizer": spec.model.name_or_path, "revision": spec.model.revision,
           "files": files, "format": 1}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def prepare(spec: Spec, sweep_dir: Path) -> Prepared:
    """Prepare the sweep's data once; a later run with the same fingerprint reuses it."""
    key = fingerprint(spec)
    out = sweep_dir / "data" / key
    meta_path = out / "prepared.json"
    if meta_path.exists():
        prepared = read_prepared(out)
        log.info("data: reusing prepared data %s (%s train blocks)", out, prepared.blocks["train"])
        return prepared
    log.info("data: preparing %s", spec.data.path or f"{spec.data.dataset} ({spec.data.config})")
    tokenizer = model_lib.load_tokenizer(spec.model.name_or_path, spec.model.revision, spec.model.token_env,
                                         spec.model.trust_remote_code)
    splits, counts = clean_and_split(spec.data, load_source(spec.data, spec.model.token_env))
    log.info("data: cleaned %s", json.dumps(counts))
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    blocks, tokens = {}, {}
    datasets_by_split = {}
    tmp.mkdir(parents=True)
    for name in SPLITS:
        ids, labels = tokenize(splits[name], tokenizer, spec.data)
        packed = pack(ids, tokenizer.eos_token_id, spec.data.block_size, keep_remainder=name == "test")
        packed_labels = None
        if labels is not None:
            packed_labels = pack(labels, tokenizer.eos_token_id, spec.data.block_size, keep_remainder=name == "test")
            keep = supervised(packed_labels)
            packed, packed_labels = [packed[i] for i in keep], [packed_labels[i] for i in keep]
            if name == "test":  # the final evaluation prompts with whole test prompts
                write_pairs(tmp / PAIRS_FILE, ids, labels)
        blocks[name], tokens[name] = len(packed), int(sum(len(b) for b in packed))
        datasets_by_split[name] = _to_dataset(packed, packed_labels)
    from datasets import DatasetDict

    DatasetDict(datasets_by_split).save_to_disk(str(tmp / "arrow"))
    tokenizer.save_pretrained(tmp / "tokenizer")
    prepared = Prepared(path=str(out / "arrow"), tokenizer_path=str(out / "tokenizer"), fingerprint=key,
                        block_size=spec.data.block_size, blocks=blocks, tokens=tokens,
                        records={name: len(texts) for name, texts in splits.items()},
                        pairs=str(out / PAIRS_FILE) if spec.data.prompt_column else None)
    write_prepared(tmp, prepared)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    log.info("data: %s records, %s tokens, %s blocks of %d tokens (train/validation/test)",
             "/".join(str(prepared.records[s]) for s in SPLITS),
             "/".join(str(tokens[s]) for s in SPLITS), "/".join(str(blocks[s]) for s in SPLITS),
             spec.data.block_size)
    return prepared


PAIRS_FILE = "test_pairs.jsonl"


def tokenize(records: list[Record], tokenizer, data: DataSpec) -> tuple[list[list[int]], list[list[int]] | None]:
    """Token ids of each record, and for instruction records their labels: the prompt's masked
    (IGNORE), so the loss is the completion's alone. The prompt goes through the tokenizer's chat
    template as a user turn when `data.chat_template` is on."""
    if not data.prompt_column:
        return tokenizer(records, add_special_tokens=False)["input_ids"], None
    prompts = [format_prompt(prompt, tokenizer, data.chat_template) for prompt, _ in records]
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer([completion for _, completion in records], add_special_tokens=False)["input_ids"]
    ids = [p + c for p, c in zip(prompt_ids, completion_ids)]
    labels = [[IGNORE] * len(p) + c for p, c in zip(prompt_ids, completion_ids)]
    return ids, labels


def format_prompt(prompt: str, tokenizer, chat_template: bool) -> str:
    if not chat_template:
        return prompt
    if not getattr(tokenizer, "chat_template", None):
        raise UserError("data.chat_template: got true, but the model's tokenizer has no chat template; set "
                        "data.chat_template: false to use each prompt as it is, or use a chat model")
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)


def write_pairs(path: Path, ids: list[list[int]], labels: list[list[int]]) -> None:
    """Each test record's prompt and completion token ids, split where the mask ends."""
    with open(path, "w") as f:
        for row, mask in zip(ids, labels):
            cut = next((i for i, label in enumerate(mask) if label != IGNORE), len(mask))
            f.write(json.dumps({"prompt": row[:cut], "completion": row[cut:]}) + "\n")


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
