"""Tokenizing (in parallel, `datasets.map`, a piece at a time) and packing (one streaming pass)
into fixed blocks.

Every kept record is tokenized in file order, all splits together, so the corpus is read front to
back. Packing then reads the tokens once, as a stream, and routes each record to its split's blocks:
documents concatenated, an EOS after each, cut every `block_size` tokens, the remainder carried from
one batch to the next. The blocks are the same whatever `num_proc` was and however the batches fall;
only a split's last partial block is dropped (test keeps it, so the final evaluation predicts every
test token). Instruction and chat records carry `labels` beside their ids, the prompt (or every turn
but the assistant's) masked, packed block for block; a block with nothing to predict is dropped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tuner.errors import UserError
from tuner.spec import DataSpec

IGNORE = -100  # a label the loss skips: an instruction record's prompt
LENGTH_BINS = [0] + [2 ** k for k in range(21)]  # record lengths in tokens: 1, 2-3, 4-7, ... 2^20+
BATCH = 1000  # records a tokenizer call sees at once (run_clm.py's default too)
PIECE_BYTES = 128 << 20  # input a `map`'s worker processes read before they end (see `map_in_pieces`)


@dataclass
class PackStats:
    """What packing one split did: for the data summary."""

    records: int = 0
    tokens: int = 0  # every record's tokens and its EOS
    blocks: int = 0
    block_tokens: int = 0  # tokens in the blocks written
    length_counts: list[int] = field(default_factory=lambda: [0] * len(LENGTH_BINS))

    def efficiency(self) -> float:
        """The share of tokenized tokens that made it into a block (the rest: the last partial block,
        and for instruction data the blocks with nothing to predict)."""
        return self.block_tokens / self.tokens if self.tokens else 0.0


# ---------------------------------------------------------------------------------------------
# Tokenizing.


def tokenize_batch(batch: dict[str, list], tokenizer, data: DataSpec) -> dict[str, list]:
    """A `datasets.map(batched=True)` function: each record's token ids, and for instruction and
    chat records its labels."""
    if data.messages_column:
        rows = [chat_ids(messages, tokenizer) for messages in batch[data.messages_column]]
        return {"input_ids": [ids for ids, _ in rows], "labels": [labels for _, labels in rows]}
    if not data.prompt_column:
        return {"input_ids": tokenizer(batch[data.text_column], add_special_tokens=False)["input_ids"]}
    assert data.completion_column is not None  # validation: a prompt column comes with a completion column
    prompts = [format_prompt(prompt, tokenizer, data.chat_template) for prompt in batch[data.prompt_column]]
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(batch[data.completion_column], add_special_tokens=False)["input_ids"]
    return {"input_ids": [p + c for p, c in zip(prompt_ids, completion_ids)],
            "labels": [[IGNORE] * len(p) + c for p, c in zip(prompt_ids, completion_ids)]}


def format_prompt(prompt: str, tokenizer, chat_template: bool) -> str:
    if not chat_template:
        return prompt
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)


def check_chat_template(tokenizer, data: DataSpec) -> None:
    """Chat formatting needs a template: said before any record is tokenized."""
    key = "data.messages_column" if data.messages_column else "data.chat_template" if data.chat_template else None
    if key and not getattr(tokenizer, "chat_template", None):
        fix = ("use a chat model, or add a chat_template to its tokenizer_config.json" if data.messages_column
               else "set data.chat_template: false to use each prompt as it is, or use a chat model")
        raise UserError(f"{key}: the model's tokenizer has no chat template; {fix}")


def chat_ids(messages: list[dict[str, str]], tokenizer) -> tuple[list[int], list[int]]:
    """A conversation's ids through the chat template, and labels that keep only the assistant
    turns' text (and what the template closes them with): the turns are rendered one prefix at a
    time and each new piece tokenized on its own."""
    ids: list[int] = []
    labels: list[int] = []
    done = ""
    for k, message in enumerate(messages):
        whole = tokenizer.apply_chat_template(messages[: k + 1], tokenize=False)
        if message["role"] == "assistant":
            head = tokenizer.apply_chat_template(messages[:k], tokenize=False, add_generation_prompt=True) \
                if k else ""
            pieces = [(_after(done, head), False), (_after(head, whole), True)]
        else:
            pieces = [(_after(done, whole), False)]
        for text, learn in pieces:
            piece = tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
            ids += piece
            labels += piece if learn else [IGNORE] * len(piece)
        done = whole
    return ids, labels


def _after(prefix: str, text: str) -> str:
    if not text.startswith(prefix):
        raise UserError("data.messages_column: the tokenizer's chat template does not render a conversation "
                        "as its turns one after another, so assistant turns cannot be told apart; use "
                        "data.prompt_column and data.completion_column instead")
    return text[len(prefix):]


def tokenize(dataset, tokenizer, data: DataSpec, num_proc: int, fingerprint: str):
    """The records as token ids (and labels), an Arrow column of int32 lists written by `num_proc`
    processes; the text columns are dropped."""
    from datasets import Features, List, Value

    columns = {"input_ids": List(Value("int32"))}
    if data.prompt_column or data.messages_column:
        columns["labels"] = List(Value("int32"))
    return map_in_pieces(dataset, tokenize_batch, num_proc, fingerprint, "tokenizing",
                         fn_kwargs={"tokenizer": tokenizer, "data": data},
                         remove_columns=dataset.column_names, features=Features(columns))


def map_in_pieces(dataset, function, num_proc: int, fingerprint: str, desc: str, **kwargs):
    """`dataset.map(function, batched=True)` by `num_proc` processes, a piece of about `PIECE_BYTES`
    of input at a time, and the pieces concatenated (no copy).

    A worker reads its share of the input through a memory map, and the pages it has read count in
    its RSS until it ends: one `map` over a 1 GB corpus would hold the whole corpus that way. Workers
    that end with each piece hold a piece at most, for a process start per piece."""
    from datasets import concatenate_datasets

    step = _rows_per_piece(dataset, num_proc)
    pieces = [dataset.select(range(start, min(start + step, len(dataset))))
              for start in range(0, len(dataset), step)] or [dataset]
    mapped = [piece.map(function, batched=True, batch_size=BATCH, num_proc=processes(piece, num_proc),
                        new_fingerprint=f"{fingerprint}-{i}", desc=desc, **kwargs) for i, piece in enumerate(pieces)]
    return mapped[0] if len(mapped) == 1 else concatenate_datasets(mapped)


def _rows_per_piece(dataset, num_proc: int) -> int:
    """Rows whose reading spans about `PIECE_BYTES` of the table under the dataset: a `select` of a
    tenth of the records (a validation split, its indices sorted) spans the whole table, and a
    worker reading one in ten records touches nearly every page."""
    per_row = dataset.data.nbytes / max(1, len(dataset))
    return max(BATCH * num_proc, int(PIECE_BYTES / max(per_row, 1)))


def processes(dataset, num_proc: int) -> int | None:
    """`num_proc` for a `map` over `dataset`: more processes than batches would only start processes."""
    procs = min(num_proc, max(1, len(dataset) // BATCH))
    return procs if procs > 1 else None


# ---------------------------------------------------------------------------------------------
# Packing.


def pack(tokens, eos_id: int, block_size: int, keep_remainder: bool, path: Path) -> PackStats:
    """Blocks of `block_size` tokens written to the Arrow file `path` (a `datasets` Arrow file: open
    it with `Dataset.from_file`), one batch of records at a time; what was packed."""
    with _Packer(path, "labels" in tokens.column_names, eos_id, block_size, keep_remainder) as packer:
        for batch in _batches(tokens):
            packer.add(batch)
    return packer.stats


def pack_splits(tokens, split_of: np.ndarray, names: tuple[str, ...], eos_id: int, block_size: int,
                folder: Path, file_name: str, pairs: Path | None = None) -> dict[str, PackStats]:
    """One pass over every kept record's tokens (in file order), each routed to its split's blocks
    in `folder/<split>/<file_name>` by `split_of` (an index into `names`). The last split (test)
    keeps its partial block, and with `pairs` its records' prompts and completions are written too.

    Tokenizing all the splits' records together reads the corpus front to back; a split of a tenth
    of the records, read alone, would touch nearly every page of it."""
    labelled = "labels" in tokens.column_names
    packers = [_Packer(folder / name / file_name, labelled, eos_id, block_size, keep_remainder=name == names[-1],
                       pairs=pairs if name == names[-1] else None) for name in names]
    for packer in packers:
        packer.__enter__()
    start = 0
    for batch in _batches(tokens):
        owners = split_of[start:start + batch.num_rows]
        start += batch.num_rows
        for index, packer in enumerate(packers):
            rows = np.flatnonzero(owners == index)
            if len(rows):
                packer.add(batch.take(rows))
    for packer in packers:
        packer.__exit__(None, None, None)
    if start != len(split_of):
        raise RuntimeError(f"packing read {start} records where {len(split_of)} were chosen")
    return {name: packer.stats for name, packer in zip(names, packers)}


class _Packer:
    """One split's records → blocks: an EOS after each record, cut every `block_size` tokens, the
    remainder carried to the next batch of records."""

    def __init__(self, path: Path, labelled: bool, eos_id: int, block_size: int, keep_remainder: bool,
                 pairs: Path | None = None) -> None:
        self.stats = PackStats()
        self.writer = _BlockWriter(path, labelled, block_size, self.stats)
        self.labelled, self.eos_id, self.block_size = labelled, eos_id, block_size
        self.keep_remainder, self.pairs_path = keep_remainder, pairs
        self.carry: dict[str, np.ndarray] = {}

    def __enter__(self) -> _Packer:
        self.writer.__enter__()
        self.pairs = open(self.pairs_path, "w") if self.pairs_path else None
        return self

    def add(self, batch) -> None:
        ids, lengths = _with_eos(batch.column("input_ids"), self.eos_id)
        self.stats.records += len(lengths)
        self.stats.tokens += len(ids)
        self.stats.length_counts = list(np.add(self.stats.length_counts, _length_counts(lengths - 1)))
        flat = {"input_ids": ids}
        if self.labelled:
            flat["labels"] = _with_eos(batch.column("labels"), self.eos_id)[0]
            if self.pairs:
                _write_pairs(batch, self.pairs)
        flat = {name: np.concatenate([self.carry.get(name, values[:0]), values]) for name, values in flat.items()}
        full = len(flat["input_ids"]) // self.block_size * self.block_size
        self.carry = {name: values[full:] for name, values in flat.items()}
        self.writer.add({name: values[:full].reshape(-1, self.block_size) for name, values in flat.items()})

    def __exit__(self, *exc) -> None:
        self.writer.flush()
        if self.keep_remainder and self.carry and len(self.carry["input_ids"]) >= 2:
            self.writer.add({name: values[None, :] for name, values in self.carry.items()})
        self.writer.__exit__(*exc)
        if self.pairs:
            self.pairs.close()


class _BlockWriter:
    """Blocks appended to a `datasets` Arrow file in record batches of about `WRITE_ROWS` rows (the
    fewer the batches, the less a reader of the file touches to find them). Blocks with nothing to
    predict (instruction data: all prompt) are dropped on the way."""

    WRITE_ROWS = 8192

    def __init__(self, path: Path, labelled: bool, width: int, stats: PackStats) -> None:
        self.path, self.labelled, self.width, self.stats = path, labelled, width, stats
        self.pending: list[dict[str, np.ndarray]] = []
        self.rows = 0

    def __enter__(self) -> _BlockWriter:
        from datasets.arrow_writer import ArrowWriter

        self.writer = ArrowWriter(path=str(self.path), writer_batch_size=self.WRITE_ROWS)
        return self

    def add(self, blocks: dict[str, np.ndarray]) -> None:
        if "labels" in blocks and len(blocks["labels"]):
            keep = (blocks["labels"][:, 1:] != IGNORE).any(axis=1)
            blocks = {name: rows[keep] for name, rows in blocks.items()}
        self.pending.append(blocks)
        self.rows += len(blocks["input_ids"])
        if self.rows >= self.WRITE_ROWS:
            self.flush()

    def flush(self) -> None:
        """Write the pending blocks (rows of equal width) as one record batch."""
        if self.pending:
            self._write({name: np.concatenate([b[name] for b in self.pending]) for name in self.pending[0]})
        self.pending, self.rows = [], 0

    def _write(self, blocks: dict[str, np.ndarray]) -> None:
        import pyarrow as pa

        count, width = blocks["input_ids"].shape
        offsets = pa.array(np.arange(count + 1, dtype=np.int32) * width)
        self.writer.write_table(pa.table({name: pa.ListArray.from_arrays(offsets, pa.array(rows.ravel(), pa.int32()))
                                          for name, rows in blocks.items()}))
        self.stats.blocks += count
        self.stats.block_tokens += count * width

    def __exit__(self, *exc) -> None:
        self.flush()
        if self.stats.blocks == 0:  # an empty file still needs its schema
            empty = np.empty((0, self.width), np.int32)
            self._write({"input_ids": empty, **({"labels": empty} if self.labelled else {})})
        self.writer.finalize()
        self.writer.close()


def _batches(tokens):
    """The token columns' Arrow batches in order. A `map`'s output is read from its cache files as
    a stream (a read, not a memory map: the pages read do not stay in this process's RSS); anything
    else (a `select`, data held in memory) through `datasets`."""
    import pyarrow as pa

    files = [f["filename"] for f in tokens.cache_files]
    if not files or tokens._indices is not None:  # no public way to ask for an indices mapping
        yield from tokens.with_format("arrow").iter(batch_size=10 * BATCH)
        return
    rows = 0
    for name in files:
        with pa.OSFile(name) as source:
            for batch in pa.ipc.open_stream(source):
                rows += batch.num_rows
                yield batch
    if rows != len(tokens):  # a slice of a map's output: its files hold more than it does
        raise RuntimeError(f"packing read {rows} records from the cache files of a dataset of {len(tokens)}")


def _with_eos(column, eos_id: int) -> tuple[np.ndarray, np.ndarray]:
    """A list column's values with EOS after each list, and each list's length with its EOS."""
    import pyarrow as pa

    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    offsets = column.offsets.to_numpy()
    values = column.flatten().to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    ends = offsets[1:] - offsets[0]
    return np.insert(values, ends, eos_id), np.diff(offsets) + 1


def _length_counts(lengths: np.ndarray) -> np.ndarray:
    return np.histogram(lengths, bins=LENGTH_BINS + [np.iinfo(np.int64).max])[0]


# ---------------------------------------------------------------------------------------------
# The test split's prompts and completions (instruction and chat data).


def _write_pairs(batch, out) -> None:
    """Each record's prompt and completion token ids, split where the mask ends (a line each)."""
    for row, mask in zip(batch.column("input_ids").to_pylist(), batch.column("labels").to_pylist()):
        cut = next((i for i, label in enumerate(mask) if label != IGNORE), len(mask))
        out.write(json.dumps({"prompt": row[:cut], "completion": row[cut:]}) + "\n")
