"""Metrics a report carries beyond the loss: generation metrics and a user's `metric_fn`.

Users optimise what their task cares about (ROUGE on summaries, exact match on answers, their own
held-out accuracy), not only the loss. These figures are computed inside the trial at every report,
on one fixed sample of validation prompts (`search.metric_sample`, drawn with `train.seed`, the same
for every trial and every retry), with the final evaluation's passages, decoding settings
(`promote.generate`, greedy by default) and scorers, so a report's ROUGE and the test's mean the same.
Only a sweep whose `search.metric` or `metric_fn` asks for them pays for them.

A bad metric_fn (it cannot be imported, raises, returns no number or a NaN) is the trial's failure,
not the sweep's: `MetricFnError` ends the trial `failed` with its message.
"""

from __future__ import annotations

import math
import numbers
import random
from dataclasses import dataclass, replace
from typing import Any, Callable

from tuner import constants as C
from tuner import metrics, promote
from tuner.data import Prepared, load_prepared
from tuner.packing import IGNORE
from tuner.spec import PromoteSpec, Spec, import_callable

BUILT_IN = (*C.REPORT_KEYS, *C.GENERATION_METRICS)  # keys tuner reports itself: a metric_fn's may not
RERANK_SAMPLE = 4  # promote.top_k re-ranks on this many times the search's prompts (or promote.num_prompts)


class MetricFnError(Exception):
    """The metric_fn cannot be used: the trial ends `failed` with this message (no retry: it would
    fail the same way)."""


@dataclass
class MetricSample:
    """What a metric_fn receives beside the model and the tokenizer: the validation prompts and the
    text that follows each (for instruction data, its completion), as text and as token ids, and
    `continuations(model, tokenizer)`: what the model writes after each prompt, decoded with the
    sweep's settings (the continuations the generation metrics score)."""

    prompts: list[str]
    references: list[str]
    prompt_ids: list[list[int]]
    reference_ids: list[list[int]]
    settings: PromoteSpec  # decoding (generate), max_new_tokens and batch size for continuations
    pad_token_id: int | None = None

    def continuations(self, model: Any, tokenizer: Any) -> list[str]:
        written = promote.continuations(model, self.prompt_ids, self.settings, self.pad_token_id)
        return [tokenizer.decode(ids, skip_special_tokens=True) for ids in written]


def wanted(spec: Spec, metric_fn: Callable[..., Any] | None = None) -> bool:
    """Whether reports carry more than the loss: a generation metric is searched, or a metric_fn given."""
    return spec.search.metric in C.GENERATION_METRICS or metric_fn is not None or spec.search.metric_fn is not None


def sample_settings(spec: Spec, num_prompts: int | None = None) -> PromoteSpec:
    """The final evaluation's settings, sized by search.metric_sample (or `num_prompts`, the
    re-ranking's larger sample): the same passages and decoding, fewer and shorter."""
    size = spec.search.metric_sample
    return replace(spec.promote, num_prompts=num_prompts or size.num_prompts, prompt_tokens=size.prompt_tokens,
                   reference_tokens=size.reference_tokens, max_new_tokens=size.max_new_tokens,
                   eval_batch_size=spec.train.per_device_eval_batch_size)


def draw(prepared: Prepared, tokenizer: Any, settings: PromoteSpec, seed: int,
         split: str = "validation") -> MetricSample:
    """`settings.num_prompts` prompts from a seeded draw of the split's blocks: plain text, a passage
    from each drawn block (its first k tokens, then the next m); instruction and chat data, the
    first whole (prompt, completion) in each drawn block, the completion's first m tokens the
    reference. Only the drawn blocks are read."""
    blocks = load_prepared(prepared)[split]
    order = list(range(len(blocks)))
    random.Random(seed).shuffle(order)
    labelled = "labels" in blocks.column_names
    pairs: list[tuple[list[int], list[int]]] = []
    for index in order:
        if len(pairs) >= settings.num_prompts:
            break
        pair = (answer_pair(blocks[index]["input_ids"], blocks[index]["labels"], tokenizer.eos_token_id, settings,
                            prepared.block_size) if labelled else text_pair(blocks, index, settings))
        if pair is not None:
            pairs.append(pair)

    def decode(ids: list[int]) -> str:
        return str(tokenizer.decode(ids, skip_special_tokens=True))

    return MetricSample([decode(p) for p, _ in pairs], [decode(r) for _, r in pairs], [p for p, _ in pairs],
                        [r for _, r in pairs], settings, tokenizer.pad_token_id)


def text_pair(blocks: Any, index: int, settings: PromoteSpec) -> tuple[list[int], list[int]] | None:
    """The first k + m tokens from block `index` on (running into the blocks after it, which continue
    its text, where a block is shorter than k + m)."""
    k, m = settings.prompt_tokens, settings.reference_tokens
    stream: list[int] = []
    while len(stream) < k + m and index < len(blocks):
        stream += list(blocks[index]["input_ids"])
        index += 1
    return (stream[:k], stream[k:k + m]) if len(stream) >= k + m else None


def answer_pair(ids: list[int], labels: list[int], eos: int | None, settings: PromoteSpec,
                block_size: int) -> tuple[list[int], list[int]] | None:
    """The first (prompt, completion) whole in one block of instruction or chat data: a masked run
    that does not start at the block's first token (it could be the tail of a cut prompt), then the
    unmasked run after it, its closing EOS dropped and cut to m tokens. A completion cut by the
    block's end is taken only when it holds more than m tokens anyway."""
    ids, labels = list(ids), list(labels)
    masked = [label == IGNORE for label in labels]
    for start in range(1, len(ids)):
        if not masked[start] or masked[start - 1]:
            continue
        cut = next((i for i in range(start, len(ids)) if not masked[i]), None)
        if cut is None:
            return None
        end = next((i for i in range(cut, len(ids)) if masked[i]), len(ids))
        completion = ids[cut:end]
        ended = bool(completion) and completion[-1] == eos  # the record's closing EOS: not part of the answer
        whole = end < len(ids) or ended or len(completion) > settings.reference_tokens
        completion = completion[:-1] if ended else completion
        if whole and completion:
            room = max(1, block_size - settings.max_new_tokens)
            return ids[start:cut][-room:], completion[:settings.reference_tokens]
    return None


def generation_scores(written: list[str], references: list[str], answers: bool) -> dict[str, float]:
    """BLEU, ROUGE-1/2/L and, for instruction data (`answers`), exact match: report keys."""
    scores = {C.EVAL_BLEU: metrics.bleu(written, references)}
    scores.update({f"{C.METRIC_PREFIX}{name}": value for name, value in metrics.rouge(written, references).items()})
    if answers:
        scores[C.EVAL_EXACT_MATCH] = metrics.exact_match(written, references)
    return scores


def named(value: Any, metric: str, source: str) -> dict[str, float]:
    """A metric_fn's result as report keys. A number is reported as search.metric, or as
    `eval_custom` where search.metric is a key tuner reports itself; a dict's keys get the prefix
    `eval_` where they lack it. Anything else, or a value that is not a finite number, is refused."""
    if isinstance(value, dict):
        if not value:
            raise MetricFnError(f"metric_fn {source} returned an empty dict; return a number or a dict of numbers")
        out = {}
        for key, item in value.items():
            if not isinstance(key, str) or not key:
                raise MetricFnError(f"metric_fn {source} returned the key {key!r}; keys are names (strings)")
            name = key if key.startswith(C.METRIC_PREFIX) else C.METRIC_PREFIX + key
            if name in BUILT_IN:
                raise MetricFnError(f"metric_fn {source} returned {key!r}, which tuner reports itself as {name}; "
                                    "give it another name")
            out[name] = _number(item, f"{key!r}", source)
    else:
        key = metric if metric not in BUILT_IN else C.CUSTOM_METRIC
        out = {key: _number(value, "its value", source)}
    if metric not in BUILT_IN and metric not in out:
        raise MetricFnError(f"metric_fn {source} returned {sorted(out)}, without search.metric {metric!r}; return it "
                            "or set search.metric to one of them")
    return out


def _number(value: Any, what: str, source: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise MetricFnError(f"metric_fn {source} returned {type(value).__name__} {_short(value)} for {what}; return a "
                            "number (float(...) of a tensor) or a dict of numbers")
    if not math.isfinite(float(value)):
        raise MetricFnError(f"metric_fn {source} returned {float(value)} for {what}; it must be a finite number")
    return float(value)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class TrialMetrics:
    """The figures a trial adds to each report: set up once per trial (the function imported, the
    sample drawn), then `measure(model)` at every report. Called between training steps, it leaves
    the training's random state as it found it (decoding seeds its own)."""

    def __init__(self, spec: Spec, prepared: Prepared, tokenizer: Any, metric_fn: Callable[..., Any] | None = None,
                 num_prompts: int | None = None) -> None:
        self.metric, self.fn, self.tokenizer = spec.search.metric, metric_fn, tokenizer
        self.source: str = spec.search.metric_fn or str(getattr(metric_fn, "__qualname__", "(from Python)"))
        if self.fn is None and spec.search.metric_fn is not None:
            try:
                self.fn = import_callable(spec.search.metric_fn)
            except ValueError as exc:
                raise MetricFnError(f"search.metric_fn: {exc}") from None
        self.generation = spec.search.metric in C.GENERATION_METRICS
        self.answers = prepared.pairs is not None  # instruction or chat data: exact match has answers
        self.sample = draw(prepared, tokenizer, sample_settings(spec, num_prompts), spec.train.seed)
        if not self.sample.prompts:
            raise MetricFnError(f"search.metric {self.metric}: the validation split gave no prompt of "
                                f"{self.sample.settings.prompt_tokens} + {self.sample.settings.reference_tokens} "
                                "tokens (or no whole prompt and completion); lower search.metric_sample's "
                                "prompt_tokens and reference_tokens, or add validation data")

    def measure(self, model: Any) -> dict[str, float]:
        import torch

        with torch.random.fork_rng(devices=[torch.cuda.current_device()] if torch.cuda.is_available() else []):
            return score(model, self.tokenizer, self.sample, self.generation, self.answers, self.fn, self.metric,
                         self.source)


def score(model: Any, tokenizer: Any, sample: MetricSample, generation: bool, answers: bool,
          fn: Callable[..., Any] | None,
          metric: str, source: str) -> dict[str, float]:
    """The generation metrics (when asked) and the metric_fn's figures, on one sample. The final
    evaluation and the re-ranking call it too, on their own samples."""
    figures: dict[str, float] = {}
    if generation:
        figures.update(generation_scores(sample.continuations(model, tokenizer), sample.references, answers))
    if fn is not None:
        was_training = model.training
        try:
            value = fn(model, tokenizer, sample)
        except Exception as exc:  # noqa: BLE001 (the user's code: any error is its own, reported as such)
            raise MetricFnError(f"metric_fn {source} raised {type(exc).__name__}: {exc}") from exc
        finally:
            model.train(was_training)
        figures.update(named(value, metric, source))
    return figures


# ---------------------------------------------------------------------------------------------
# Promotion: the re-ranking's larger sample, and the final evaluation's test prompts.


def rescore(spec: Spec, prepared: Prepared, tokenizer: Any, metric_fn: Callable[..., Any] | None) -> promote.Rescore:
    """`promote.top_k` by the search's own metric, on a larger sample than the search's: the first
    max(promote.num_prompts, 4 × search.metric_sample.num_prompts) prompts of the same seeded draw
    (the search's are among them, outweighed)."""
    prompts = max(spec.promote.num_prompts, RERANK_SAMPLE * spec.search.metric_sample.num_prompts)
    measuring = TrialMetrics(spec, prepared, tokenizer, metric_fn, prompts)
    return promote.Rescore(spec.search.metric, spec.search.mode, measuring.measure, len(measuring.sample.prompts))


def final_scorer(spec: Spec, metric_fn: Callable[..., Any] | None,
                 ) -> Callable[[Any, Any, list[Any]], dict[str, float]] | None:
    """The metric_fn's figures for the final evaluation, on its test prompts and decoding, named as
    its other figures are (`eval_accuracy` → `accuracy`). A function that fails there (it worked in
    the trials) costs its figures, with a warning, not the evaluation."""
    import logging

    fn = metric_fn
    if fn is None and spec.search.metric_fn is not None:
        fn = import_callable(spec.search.metric_fn)
    if fn is None:
        return None
    source = spec.search.metric_fn or str(getattr(fn, "__qualname__", "(from Python)"))

    def figures(model: Any, tokenizer: Any, pairs: list[tuple[list[int], list[int]]]) -> dict[str, float]:
        sample = MetricSample([tokenizer.decode(p, skip_special_tokens=True) for p, _ in pairs],
                              [tokenizer.decode(r, skip_special_tokens=True) for _, r in pairs],
                              [p for p, _ in pairs], [r for _, r in pairs], spec.promote, tokenizer.pad_token_id)
        try:
            found = score(model, tokenizer, sample, False, False, fn, spec.search.metric, source)
        except MetricFnError as exc:
            logging.getLogger("tuner").warning("promote: %s; the final evaluation goes on without it", exc)
            return {}
        return {key.removeprefix(C.METRIC_PREFIX): value for key, value in found.items()}

    return figures
