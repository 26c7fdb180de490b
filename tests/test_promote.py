"""The final evaluation's A/B: the same prompts and figures for the tuned model, the base model and
the baseline trial; `promote.top_k`'s re-ranking on the whole validation split."""

from __future__ import annotations

import json

import pytest

from tuner import metrics, promote
from tuner.data import Prepared, load_prepared, read_prepared
from tuner.records import load_all as load_records
from tuner.results import baseline_record
from tuner.spec import GenerateSpec, PromoteSpec

pytestmark = pytest.mark.integration


def _final(tiny_sweep):
    return json.loads(tiny_sweep.paths["final_eval"].read_text())


def _prepared(tiny_sweep) -> Prepared:
    return read_prepared(next((tiny_sweep.sweep_dir / "data").glob("*/prepared.json")).parent)


def test_passages_are_evenly_spaced_windows_of_the_test_text():
    blocks = [list(range(i * 10, i * 10 + 10)) for i in range(5)]  # the test text: tokens 0..49 in order
    pairs = promote.passages(blocks, PromoteSpec(num_prompts=3, prompt_tokens=4, reference_tokens=6))
    assert pairs == [(list(range(s, s + 4)), list(range(s + 4, s + 10))) for s in (0, 20, 40)]
    # A passage longer than a block runs across the boundary.
    [(prompt, reference)] = promote.passages(blocks, PromoteSpec(num_prompts=1, prompt_tokens=8, reference_tokens=16))
    assert prompt + reference == list(range(24))
    assert promote.passages(blocks, PromoteSpec(num_prompts=3, prompt_tokens=40, reference_tokens=20)) == []
    assert promote.passages(blocks, PromoteSpec(num_prompts=0)) == []


def test_final_eval_scores_base_baseline_and_tuned_on_the_same_prompts(tiny_sweep):
    final = _final(tiny_sweep)
    samples = [json.loads(line) for line in tiny_sweep.paths["samples"].read_text().splitlines()]
    references = [row["reference"] for row in samples]
    assert final["generation"]["num_prompts"] == len(samples) == 4
    for name in ("base", "baseline", "tuned"):
        figures = final[name]
        assert {"eval_loss", "perplexity", "bleu", "rouge1", "rouge2", "rougeL"} <= set(figures)
        # The figures are those of the continuations written to samples.jsonl, against its references.
        hypotheses = [row[name] for row in samples]
        assert figures["bleu"] == pytest.approx(metrics.bleu(hypotheses, references))
        for key, value in metrics.rouge(hypotheses, references).items():
            assert figures[key] == pytest.approx(value)
    assert final["base"]["num_test_tokens"] == final["tuned"]["num_test_tokens"] == final["num_test_tokens"]
    baseline = baseline_record(load_records(tiny_sweep.sweep_dir), {"learning_rate": 5e-5})
    assert final["baseline"]["trial_id"] == baseline.trial_id
    assert not baseline.checkpoint_deleted  # kept for this evaluation whatever its rank


def test_top_k_reranks_on_the_whole_validation_split(tiny_sweep):
    from transformers import AutoModelForCausalLM

    selection = _final(tiny_sweep)["selection"]
    validation = load_prepared(_prepared(tiny_sweep))["validation"]["input_ids"]
    assert selection["top_k"] == 2 and selection["blocks"] == len(validation)
    losses = {c["trial_id"]: c["validation_loss"] for c in selection["candidates"]}
    assert selection["chosen"] == min(losses, key=losses.get) == tiny_sweep.best.trial_id
    assert selection["changed"] == (selection["chosen"] != selection["search_winner"])
    # The exported model is the chosen checkpoint: its loss on the whole split is the one recorded.
    model = AutoModelForCausalLM.from_pretrained(tiny_sweep.paths["model"])
    total, count = promote.token_loss(model, validation, 16)
    assert total / count == pytest.approx(losses[selection["chosen"]], rel=1e-5)


def test_sampled_continuations_follow_the_seed(tiny_sweep):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_sweep.paths["model"])
    prompts = [[5, 6, 7, 8], [9, 10, 11, 12]]

    def written(seed: int) -> list[list[int]]:
        settings = PromoteSpec(max_new_tokens=12, generate=GenerateSpec(do_sample=True, temperature=1.5, seed=seed))
        return promote.continuations(model, prompts, settings, pad_token_id=0)

    assert written(1) == written(1)
    assert written(1) != written(2)
    greedy = promote.continuations(model, prompts, PromoteSpec(max_new_tokens=12), pad_token_id=0)
    assert all(1 <= len(row) <= 12 for row in greedy)
