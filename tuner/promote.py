"""Promotion: the best checkpoint's final evaluation on the full, held-out test split, side by side
with the base model and the baseline trial (perplexity, and BLEU/ROUGE of continuations).

The loss is computed here, token by token, rather than copied from the Trainer: the Trainer averages
per-batch means, which over-weights a short last batch, and it never sees the test split's last
partial block. Here every predicted test token counts once.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable

from tuner import metrics, records
from tuner import model as model_lib
from tuner.data import Prepared, load_prepared, read_pairs
from tuner.errors import first_line
from tuner.packing import IGNORE
from tuner.spec import PromoteSpec

log = logging.getLogger("tuner")


class UnreadableCheckpoint(Exception):
    """The checkpoint to promote is missing or cannot be loaded: promotion takes the next best."""


def load_checkpoint(checkpoint: str, trust_remote_code: bool = False, load_base: Callable[[], Any] | None = None):
    """The checkpoint's model, or UnreadableCheckpoint saying why not. A LoRA checkpoint holds the
    adapters only: they go onto a fresh copy of the base model from `load_base`."""
    from pathlib import Path

    if not Path(checkpoint).is_dir():
        raise UnreadableCheckpoint(f"{checkpoint} does not exist")
    try:
        if model_lib.is_adapter(checkpoint):
            if load_base is None:
                raise UnreadableCheckpoint(f"{checkpoint}: LoRA adapters without their base model")
            return model_lib.load_adapter(load_base(), checkpoint)
        return model_lib.load_model(checkpoint, trust_remote_code=trust_remote_code)
    except UnreadableCheckpoint:
        raise
    except Exception as exc:  # safetensors, config and OS errors all mean: not loadable
        raise UnreadableCheckpoint(f"{checkpoint}: {first_line(exc)}") from None


def token_loss(model, blocks: list[list[int]], batch_size: int,
               labels: list[list[int]] | None = None) -> tuple[float, int]:
    """Summed next-token cross-entropy over `blocks`, and the number of tokens predicted. With
    `labels` (instruction data), only the tokens whose label is not masked count."""
    import torch

    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    by_length: dict[int, list[tuple[list[int], list[int]]]] = {}
    for i, block in enumerate(blocks):
        by_length.setdefault(len(block), []).append((block, labels[i] if labels is not None else block))
    with torch.no_grad():
        for group in by_length.values():
            for start in range(0, len(group), batch_size):
                ids = torch.tensor([b for b, _ in group[start:start + batch_size]], device=device)
                target = torch.tensor([t for _, t in group[start:start + batch_size]], device=device)[:, 1:]
                logits = model(input_ids=ids).logits[:, :-1].float()
                loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1),
                                                         reduction="sum", ignore_index=IGNORE)
                total += float(loss)
                count += int((target != IGNORE).sum())
    return total, count


def split_tokens(prepared: Prepared, split: str) -> tuple[list[list[int]], list[list[int]] | None]:
    """A prepared split's blocks, and their labels where the data has its own (instruction data)."""
    data = load_prepared(prepared)[split]
    return data["input_ids"], (data["labels"] if "labels" in data.column_names else None)


def evaluate(model, blocks: list[list[int]], batch_size: int,
             labels: list[list[int]] | None = None) -> dict[str, float]:
    total, count = token_loss(model, blocks, batch_size, labels)
    loss = total / count
    return {"eval_loss": loss, "perplexity": math.exp(loss) if loss < 700 else math.inf,
            "num_test_tokens": count}


def passages(blocks: list[list[int]], settings: PromoteSpec) -> list[tuple[list[int], list[int]]]:
    """(prompt, reference) token pairs, the same for every model compared: the first k and next m
    tokens of `num_prompts` passages evenly spaced along the test split. The split's blocks are its
    text packed in order, so a passage may run across a block boundary and k + m is not bounded by
    the block size."""
    k, m = settings.prompt_tokens, settings.reference_tokens
    stream = [token for block in blocks for token in block]
    room = len(stream) - (k + m)
    count = max(settings.num_prompts, 0) if room >= 0 else 0
    if not count:
        return []
    starts = sorted({round(i * room / max(count - 1, 1)) for i in range(count)})
    return [(stream[s:s + k], stream[s + k:s + k + m]) for s in starts]


def instruction_passages(pairs: list[tuple[list[int], list[int]]], settings: PromoteSpec, block_size: int,
                         ) -> list[tuple[list[int], list[int]]]:
    """Instruction data: each of `num_prompts` evenly spaced test records' prompt (k does not apply:
    a prompt is kept whole, or its last tokens where it would leave the block no room to answer) and
    the first m tokens of its completion as the reference."""
    usable = [(prompt, completion) for prompt, completion in pairs if prompt and completion]
    count = min(max(settings.num_prompts, 0), len(usable))
    step = len(usable) / count if count else 0
    room = max(1, block_size - settings.max_new_tokens)
    return [(usable[int(i * step)][0][-room:], usable[int(i * step)][1][:settings.reference_tokens])
            for i in range(count)]


def continuations(model, prompts: list[list[int]], settings: PromoteSpec, pad_token_id: int | None) -> list[list[int]]:
    """What the model writes after each prompt, with the spec's decoding settings and seed. Prompts
    of one length go in batches together, with no padding (text passages all have k tokens)."""
    import torch

    decoding = settings.generate
    options = {"do_sample": decoding.do_sample, "num_beams": decoding.num_beams,
               "repetition_penalty": decoding.repetition_penalty}
    if decoding.do_sample:
        options.update(temperature=decoding.temperature, top_p=decoding.top_p, top_k=decoding.top_k)
    model.eval()
    device = next(model.parameters()).device
    torch.manual_seed(decoding.seed)
    out: dict[int, list[int]] = {}
    by_length: dict[int, list[int]] = {}
    for i, prompt in enumerate(prompts):
        by_length.setdefault(len(prompt), []).append(i)
    with torch.no_grad():
        for indices in by_length.values():
            for start in range(0, len(indices), settings.eval_batch_size):
                batch = indices[start:start + settings.eval_batch_size]
                ids = torch.tensor([prompts[i] for i in batch], device=device)
                generated = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                           max_new_tokens=settings.max_new_tokens, min_new_tokens=1,
                                           pad_token_id=pad_token_id, **options)
                out.update((i, row[ids.shape[1]:].tolist()) for i, row in zip(batch, generated))
    return [out[i] for i in range(len(prompts))]


def assess(model, tokenizer, test: list[list[int]], pairs: list[tuple[list[int], list[int]]],
           settings: PromoteSpec, labels: list[list[int]] | None = None,
           custom: Callable[[Any], dict[str, float]] | None = None) -> tuple[dict[str, float], list[str]]:
    """One model's figures on the test split (loss, perplexity, BLEU, ROUGE-1/2/L of its
    continuations against the references, exact match for instruction data's answers, and
    `custom`'s: a metric_fn's) and the continuations themselves."""
    figures: dict[str, Any] = evaluate(model, test, settings.eval_batch_size, labels)
    if custom is not None:
        figures.update(custom(model))
    if not pairs:
        return figures, []
    written = continuations(model, [prompt for prompt, _ in pairs], settings, tokenizer.pad_token_id)
    texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in written]
    references = [tokenizer.decode(reference, skip_special_tokens=True) for _, reference in pairs]
    figures["bleu"] = metrics.bleu(texts, references)
    figures.update(metrics.rouge(texts, references))
    if labels is not None:  # instruction or chat data: each reference is an answer
        figures["exact_match"] = metrics.exact_match(texts, references)
    return figures, texts


def generation_settings(settings: PromoteSpec, count: int) -> dict[str, Any]:
    """How the continuations were made, kept beside their scores."""
    from dataclasses import asdict

    return {"num_prompts": count, "prompt_tokens": settings.prompt_tokens,
            "reference_tokens": settings.reference_tokens, "max_new_tokens": settings.max_new_tokens,
            **asdict(settings.generate)}


@dataclass
class Rescore:
    """How `rerank` scores a checkpoint when the search's metric is not the loss: `measure(model)`
    gives the figures (a generation metric's or a metric_fn's, on a validation sample larger than the
    search's), of which `metric` is compared in `mode`; `prompts` says how many prompts."""

    metric: str
    mode: str
    measure: Callable[[Any], dict[str, float]]
    prompts: int


def rerank(candidates: list[Any], locate: Callable[[Any], str], prepared: Prepared,
           settings: PromoteSpec, trust_remote_code: bool = False, load_base: Callable[[], Any] | None = None,
           rescore: Rescore | None = None) -> tuple[list[Any], dict[str, Any]]:
    """`promote.top_k`: the best k trials' checkpoints scored again on the whole validation split (and
    with `rescore`, by the search's own metric on a larger validation sample), so a lucky score on
    the search's validation sample does not win. Returns the candidates in their new order (the
    others after them, as they were) and what the re-evaluation found."""
    from tuner.trial_metrics import MetricFnError  # it builds on this module

    top, rest = candidates[:settings.top_k], candidates[settings.top_k:]
    validation, labels = split_tokens(prepared, "validation")
    scored = []
    for record in top:
        try:
            model = load_checkpoint(locate(record), trust_remote_code, load_base)
        except UnreadableCheckpoint as exc:  # it cannot be promoted either: left out
            log.warning("promote: the checkpoint of trial %s is missing or unreadable (%s); it is left out",
                        record.trial_id, exc)
            continue
        total, count = token_loss(model, validation, settings.eval_batch_size, labels)
        entry = {"trial_id": record.trial_id, "search_metric": records.checkpoint_metric(record),
                 "validation_loss": total / count}
        if rescore is not None:
            try:
                entry["validation_metric"] = rescore.measure(model)[rescore.metric]
            except MetricFnError as exc:  # it worked in the trials: here, say so and keep the search's order
                log.warning("promote: re-ranking by %s failed (%s); the search's order stands", rescore.metric, exc)
                return candidates, {"top_k": settings.top_k, "error": str(exc), "changed": False,
                                    "search_winner": top[0].trial_id, "chosen": top[0].trial_id, "candidates": []}
        scored.append((entry, record))
        del model
    key = "validation_loss" if rescore is None else "validation_metric"
    sign = -1 if rescore is not None and rescore.mode == "max" else 1
    scored.sort(key=lambda pair: sign * pair[0][key])
    order = [record for _, record in scored] + rest
    selection = {"top_k": settings.top_k, "split": "validation", "blocks": len(validation),
                 "search_winner": top[0].trial_id if top else None,
                 "chosen": order[0].trial_id if order else None,
                 "candidates": [entry for entry, _ in scored]}
    if rescore is not None:
        selection.update(metric=rescore.metric, prompts=rescore.prompts)
    selection["changed"] = selection["chosen"] != selection["search_winner"]
    return order, selection


def final_evaluation(checkpoint: str, base_model: str, prepared: Prepared, settings: PromoteSpec,
                     revision: str | None = None, token_env: str | None = None,
                     trust_remote_code: bool = False, baseline_checkpoint: str | None = None,
                     code_revision: str | None = None,
                     custom: Callable[[Any, Any, list], dict[str, float]] | None = None,
                     ) -> tuple[dict[str, Any], list[dict[str, Any]], Any]:
    """The promoted checkpoint, the base model and the baseline trial's checkpoint, each scored the
    same way on the full test split and the same prompts (A/B).

    Returns the metrics (the tuned model's loss and perplexity at the top, each model's figures under
    `tuned`, `base`, `baseline`), the samples (prompt, reference and each model's continuation) and
    the loaded tuned model (for export). A checkpoint holds its own copy of any remote code (Trainer
    saves it beside the weights); the base model's comes pinned by `code_revision`. `custom(model,
    tokenizer, pairs)`: a metric_fn's figures for each model, on the same test prompts.
    """
    def load_base():
        return model_lib.load_model(base_model, revision, token_env=token_env, trust_remote_code=trust_remote_code,
                                    code_revision=code_revision)

    model = load_checkpoint(checkpoint, trust_remote_code, load_base)  # first: an unreadable one costs nothing else
    tokenizer = model_lib.load_tokenizer(prepared.tokenizer_path)
    test, labels = split_tokens(prepared, "test")
    instructions = read_pairs(prepared)
    pairs = (instruction_passages(instructions, settings, prepared.block_size) if instructions is not None
             else passages(test, settings))
    log.info("promote: evaluating %s on %d test blocks and %d prompts", checkpoint, len(test), len(pairs))
    found: list[str] = []  # the metric_fn's figures, named as the final evaluation names them

    def scorer(model) -> dict[str, float]:
        assert custom is not None  # passed on below only with custom
        figures = custom(model, tokenizer, pairs)
        found[:] = sorted(set(found) | set(figures))
        return figures
    figures, texts = assess(model, tokenizer, test, pairs, settings, labels, scorer if custom else None)
    metrics: dict[str, Any] = {key: figures[key] for key in ("eval_loss", "perplexity", "num_test_tokens")}
    metrics["tuned"] = figures
    written = {"tuned": texts}
    others = {}
    if settings.evaluate_base:
        others["base"] = load_base
    if baseline_checkpoint is not None:
        others["baseline"] = lambda: load_checkpoint(baseline_checkpoint, trust_remote_code, load_base)
    for name, load in others.items():
        try:
            other = load()
        except UnreadableCheckpoint as exc:  # the baseline's checkpoint: its figures are missing, not the sweep's
            log.warning("promote: the %s model could not be read (%s)", name, exc)
            metrics[name] = {"unavailable": str(exc)}
            continue
        metrics[name], written[name] = assess(other, tokenizer, test, pairs, settings, labels,
                                              scorer if custom else None)
        del other
    metrics["generation"] = generation_settings(settings, len(pairs))
    if found:
        metrics["custom_metrics"] = found
    rows = [{"prompt": tokenizer.decode(prompt, skip_special_tokens=True),
             "reference": tokenizer.decode(reference, skip_special_tokens=True),
             **{name: texts[i] for name, texts in written.items() if texts}}
            for i, (prompt, reference) in enumerate(pairs)]
    return metrics, rows, model
