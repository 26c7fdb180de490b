"""The final evaluation's A/B: the same prompts and figures for the tuned model, the base model and
the baseline trial; `promote.top_k`'s re-ranking on the whole validation split. On the shared tiny
sweep's results (integration tier), and on the untrained tiny model and a small prepared data set
(fast tier)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import TINY
from tuner import data, metrics, model, promote
from tuner.data import Prepared, load_prepared, read_prepared
from tuner.records import TrialRecord
from tuner.records import load_all as load_records
from tuner.results import baseline_record
from tuner.spec import GenerateSpec, PromoteSpec, load_spec


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


@pytest.mark.integration
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


@pytest.mark.integration
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


@pytest.mark.integration
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


# ---------------------------------------------------------------------------------------------
# Fast tier: the untrained tiny model as every checkpoint, on a small prepared data set.


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Prepared:
    spec = load_spec(TINY, ["data.max_records=300", "data.block_size=32",
                            f"storage={tmp_path_factory.mktemp('promote')}"])
    return data.prepare(spec, spec.sweep_dir)


SMALL = PromoteSpec(num_prompts=2, prompt_tokens=8, reference_tokens=8, max_new_tokens=4)


def test_the_final_evaluation_scores_each_model_on_the_same_test_split_and_prompts(small, tmp_path):
    tiny = model.resolve("builtin:tiny-gpt2")
    found, rows, tuned = promote.final_evaluation(tiny, tiny, small, SMALL,
                                                  baseline_checkpoint=str(tmp_path / "gone"))
    test = load_prepared(small)["test"]["input_ids"]
    total, count = promote.token_loss(tuned, test, 16)
    assert found["eval_loss"] == pytest.approx(total / count) and found["num_test_tokens"] == count
    assert count == sum(len(block) - 1 for block in test)  # every predicted token once, the last partial block too
    assert found["tuned"] == found["base"]  # the same weights: the A/B's two sides are scored alike
    assert "does not exist" in found["baseline"]["unavailable"]  # its figures missing, not the evaluation's
    assert found["generation"]["num_prompts"] == len(rows) == 2
    assert all(set(row) == {"prompt", "reference", "tuned", "base"} and row["tuned"] == row["base"] for row in rows)


def test_rerank_leaves_out_an_unreadable_checkpoint_and_orders_the_rest_by_validation_loss(small, tmp_path):
    tiny = model.resolve("builtin:tiny-gpt2")
    top = [TrialRecord("gone", best_metric=1.0), TrialRecord("tiny", best_metric=2.0), TrialRecord("rest")]
    where = {"gone": str(tmp_path / "gone"), "tiny": tiny}
    order, selection = promote.rerank(top, lambda record: where[record.trial_id], small,
                                      PromoteSpec(top_k=2))
    assert [r.trial_id for r in order] == ["tiny", "rest"]  # the unreadable one can be promoted neither
    assert selection["search_winner"] == "gone" and selection["chosen"] == "tiny" and selection["changed"]
    (entry,) = selection["candidates"]
    validation = load_prepared(small)["validation"]["input_ids"]
    total, count = promote.token_loss(model.load_model(tiny), validation, 16)
    assert entry["validation_loss"] == pytest.approx(total / count)


def test_a_checkpoint_that_cannot_be_loaded_is_unreadable_saying_why(tmp_path):
    with pytest.raises(promote.UnreadableCheckpoint, match="does not exist"):
        promote.load_checkpoint(str(tmp_path / "none"))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    with pytest.raises(promote.UnreadableCheckpoint, match="broken: "):
        promote.load_checkpoint(str(tmp_path / "broken"))


def test_instruction_passages_keep_whole_prompts_that_leave_room_to_answer():
    pairs = [([1, 2, 3], [10, 11, 12]), ([], [9]), ([4, 5, 6, 7, 8, 9], [20, 21]), ([7], [30])]
    settings = PromoteSpec(num_prompts=2, reference_tokens=2, max_new_tokens=4)
    assert promote.instruction_passages(pairs, settings, block_size=8) == [([1, 2, 3], [10, 11]),
                                                                           ([6, 7, 8, 9], [20, 21])]
