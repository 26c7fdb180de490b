"""Promotion: the best checkpoint's final evaluation on the full, held-out test split.

The loss is computed here, token by token, rather than copied from the Trainer: the Trainer averages
per-batch means, which over-weights a short last batch, and it never sees the test split's last
partial block. Here every predicted test token counts once.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from tuner.data import Prepared, load_prepared
from tuner.errors import first_line
from tuner.spec import PromoteSpec

log = logging.getLogger("tuner")


class UnreadableCheckpoint(Exception):
    """The checkpoint to promote is missing or cannot be loaded: promotion takes the next best."""


def load_checkpoint(checkpoint: str, trust_remote_code: bool = False):
    """The checkpoint's model, or UnreadableCheckpoint saying why not."""
    from pathlib import Path

    from tuner import model as model_lib

    if not Path(checkpoint).is_dir():
        raise UnreadableCheckpoint(f"{checkpoint} does not exist")
    try:
        return model_lib.load_model(checkpoint, trust_remote_code=trust_remote_code)
    except Exception as exc:  # safetensors, config and OS errors all mean: not loadable
        raise UnreadableCheckpoint(f"{checkpoint}: {first_line(exc)}") from None


def token_loss(model, blocks: list[list[int]], batch_size: int) -> tuple[float, int]:
    """Summed next-token cross-entropy over `blocks`, and the number of tokens predicted."""
    import torch

    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    by_length: dict[int, list[list[int]]] = {}
    for block in blocks:
        by_length.setdefault(len(block), []).append(block)
    with torch.no_grad():
        for length, group in by_length.items():
            for start in range(0, len(group), batch_size):
                ids = torch.tensor(group[start:start + batch_size], device=device)
                logits = model(input_ids=ids).logits[:, :-1].float()
                loss = torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1), reduction="sum")
                total += float(loss)
                count += ids[:, 1:].numel()
    return total, count


def evaluate(model, blocks: list[list[int]], batch_size: int) -> dict[str, float]:
    total, count = token_loss(model, blocks, batch_size)
    loss = total / count
    return {"eval_loss": loss, "perplexity": math.exp(loss) if loss < 700 else math.inf,
            "num_test_tokens": count}


def samples(model, tokenizer, blocks: list[list[int]], settings: PromoteSpec) -> list[dict[str, Any]]:
    """Continuations of test prompts: the first k tokens of evenly spaced test blocks."""
    import torch

    picked = [b for b in blocks if len(b) > settings.prompt_tokens][: max(settings.num_samples, 0) * 50]
    step = max(1, len(picked) // max(settings.num_samples, 1))
    device = next(model.parameters()).device
    out = []
    for block in picked[::step][: settings.num_samples]:
        prompt = block[: settings.prompt_tokens]
        torch.manual_seed(0)
        generated = model.generate(
            input_ids=torch.tensor([prompt], device=device), attention_mask=torch.ones(1, len(prompt), dtype=torch.long, device=device),
            max_new_tokens=settings.max_new_tokens, do_sample=settings.do_sample,
            pad_token_id=tokenizer.pad_token_id)[0][len(prompt):]
        out.append({"prompt": tokenizer.decode(prompt),
                    "reference": tokenizer.decode(block[settings.prompt_tokens:][: settings.max_new_tokens]),
                    "tuned": tokenizer.decode(generated)})
    return out


def final_evaluation(checkpoint: str, base_model: str, prepared: Prepared, settings: PromoteSpec,
                     revision: str | None = None, token_env: str | None = None,
                     trust_remote_code: bool = False) -> tuple[dict[str, Any], list[dict[str, Any]], Any]:
    """Evaluate the promoted checkpoint (and the base model) on the full test split.

    Returns the metrics, the generated samples and the loaded model (for export).
    """
    from tuner import model as model_lib

    model = load_checkpoint(checkpoint, trust_remote_code)  # first: an unreadable one costs nothing else
    tokenizer = model_lib.load_tokenizer(prepared.tokenizer_path)
    test = load_prepared(prepared)["test"]["input_ids"]
    log.info("promote: evaluating %s on %d test blocks", checkpoint, len(test))
    metrics = evaluate(model, test, settings.eval_batch_size)
    generated = samples(model, tokenizer, test, settings)
    if settings.evaluate_base:
        base = model_lib.load_model(base_model, revision, token_env=token_env,
                                    trust_remote_code=trust_remote_code)
        base_metrics = evaluate(base, test, settings.eval_batch_size)
        metrics["base_eval_loss"] = base_metrics["eval_loss"]
        metrics["base_perplexity"] = base_metrics["perplexity"]
        for row, base_row in zip(generated, samples(base, tokenizer, test, settings)):
            row["base"] = base_row["tuned"]
    return metrics, generated, model
