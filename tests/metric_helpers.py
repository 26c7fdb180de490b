"""metric_fn examples for the tests, importable as `tests.metric_helpers:<name>` (the spec's form)."""

from __future__ import annotations

import math


def token_accuracy(model, tokenizer, sample) -> dict[str, float]:
    """The share of each reference's tokens the model predicts next, greedily, given the prompt and
    the reference so far (teacher forcing): a held-out accuracy, higher is better."""
    import torch

    device = next(model.parameters()).device
    hits = total = 0
    with torch.no_grad():
        for prompt, reference in zip(sample.prompt_ids, sample.reference_ids):
            ids = torch.tensor([prompt + reference], device=device)
            predicted = model(input_ids=ids).logits[0, len(prompt) - 1:-1].argmax(-1).tolist()
            hits += sum(p == r for p, r in zip(predicted, reference))
            total += len(reference)
    return {"token_accuracy": hits / total, "eval_reference_tokens": total}


def token_accuracy_number(model, tokenizer, sample) -> float:
    return token_accuracy(model, tokenizer, sample)["token_accuracy"]


def nan_when_frozen(model, tokenizer, sample) -> float:
    """NaN for a model whose embeddings are frozen (a trial with freeze_layers > 0), else the token
    accuracy: a bad metric_fn for some trials of a sweep only."""
    if not next(model.parameters()).requires_grad:
        return math.nan
    return token_accuracy_number(model, tokenizer, sample)


def raises(model, tokenizer, sample) -> float:
    raise KeyError("no such label")


def returns_text(model, tokenizer, sample) -> str:
    return "0.5"


NOT_A_FUNCTION = 3
