"""How close generated continuations are to the text that really follows: BLEU and ROUGE.

The final evaluation prompts a model with the first tokens of test passages and compares what it
writes with the passages' next tokens. Scores follow each library's convention, so they compare with
published numbers: BLEU from sacrebleu (corpus-level, 0–100, its default `13a` tokenization), ROUGE-1,
ROUGE-2 and ROUGE-L from rouge-score (F1 averaged over the pairs, 0–1). Exact match (instruction
data: does the answer equal the completion?) is the share of pairs equal once normalized, 0–1.
"""

from __future__ import annotations

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def bleu(hypotheses: list[str], references: list[str]) -> float:
    """Corpus BLEU of the hypotheses against one reference each."""
    import sacrebleu

    _check_pairs(hypotheses, references)
    return float(sacrebleu.corpus_bleu(hypotheses, [references]).score)


def rouge(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F1 over the (hypothesis, reference) pairs."""
    from rouge_score import rouge_scorer

    _check_pairs(hypotheses, references)
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=False)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for hypothesis, reference in zip(hypotheses, references):
        for name, score in scorer.score(reference, hypothesis).items():
            totals[name] += score.fmeasure
    return {name: total / len(hypotheses) for name, total in totals.items()}


def exact_match(hypotheses: list[str], references: list[str]) -> float:
    """The share of hypotheses equal to their reference, both lower-cased with runs of whitespace
    collapsed and the ends stripped: "Paris." matches " paris.\n", "Paris" does not."""
    _check_pairs(hypotheses, references)
    return sum(_normal(h) == _normal(r) for h, r in zip(hypotheses, references)) / len(hypotheses)


def _normal(text: str) -> str:
    return " ".join(text.lower().split())


def _check_pairs(hypotheses: list[str], references: list[str]) -> None:
    if len(hypotheses) != len(references) or not hypotheses:
        raise ValueError(f"need one reference per hypothesis, at least one pair: got {len(hypotheses)} "
                         f"hypotheses and {len(references)} references")
