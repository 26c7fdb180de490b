"""The training core without Ray: report cadence, checkpoints at report steps, NaN handling.

The tests that run the Trainer are in the integration tier; the fast tier drives `ReportCallback` by
hand and fakes the Trainer and `_train` (the end of this file)."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import TrainerControl, TrainerState

from tuner import constants as C
from tuner import data, model, space
from tuner.records import TrialRecord
from tuner.spec import apply_override, load_spec
from tuner.trial import ReportCallback, TrialContext, run_trial, training_arguments

ROOT = Path(__file__).resolve().parents[1]
HYPER = {"learning_rate": 1e-3, "per_device_train_batch_size": 8, "num_train_epochs": 1,
         "warmup_ratio": 0.1, "gradient_accumulation_steps": 2, "weight_decay": 0.0}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    spec = load_spec(ROOT / "search_spaces" / "tiny.yaml", [
        "data.max_records=300", "data.block_size=32", "train.report_every_tokens=2048",
        f"storage={tmp_path_factory.mktemp('trial')}"])
    prepared = data.prepare(spec, spec.sweep_dir)
    return spec, prepared


def _run(spec, prepared, hyper=HYPER):
    reports = []

    def report(metrics, checkpoint):
        files = sorted(p.name for p in Path(checkpoint).iterdir()) if checkpoint else []
        reports.append((metrics, files))

    ctx = TrialContext(spec, prepared, model.resolve(spec.model.name_or_path))
    summary = run_trial(hyper, ctx, report)
    return reports, summary


@pytest.mark.integration
def test_reports_every_report_every_tokens_with_a_checkpoint_at_that_step(small):
    spec, prepared = small
    reports, summary = _run(spec, prepared)
    tokens_per_step = 8 * 2 * 32
    steps = [m[C.STEP] for m, _ in reports]
    assert steps[:-1] == list(range(4, 4 * len(steps[:-1]) + 1, 4))  # 2048 tokens = 4 steps of 512
    assert all(m[C.TOKENS_SEEN] == m[C.STEP] * tokens_per_step for m, _ in reports[:-1])
    last, files = reports[-1]
    assert last[C.FINAL] and last[C.TRIAL_STATUS] == C.COMPLETED
    assert last[C.TOKENS_SEEN] == prepared.blocks["train"] * 32
    assert not any(m[C.FINAL] for m, _ in reports[:-1])
    for metrics, files in reports:
        assert set(C.REPORT_KEYS) <= set(metrics)
        assert math.isfinite(metrics[C.EVAL_LOSS])
        assert "model.safetensors" in files and "trainer_state.json" in files
        assert "training_args.bin" not in files  # what resume needs, no more (and nothing pickled)
    assert all("optimizer.pt" in files for _, files in reports[:-1])  # the trial goes on from these
    assert "optimizer.pt" not in reports[-1][1]  # nothing resumes from the last: its weights alone
    assert summary["reports"] == len(reports)
    assert summary["best_eval_loss"] == min(m[C.EVAL_LOSS] for m, _ in reports)


@pytest.mark.integration
def test_stop_after_steps_ends_with_a_final_report_at_that_step(small):
    spec, prepared = small
    spec = load_spec(_with(spec, "train.stop_after_steps=6"))
    reports, _ = _run(spec, prepared)
    assert [m[C.STEP] for m, _ in reports] == [4, 6]
    assert reports[-1][0][C.FINAL]


def _with(spec, override):
    raw = spec.to_dict()
    raw.pop("origin")
    apply_override(raw, override)
    return raw


def test_warmup_ratio_becomes_a_fractional_warmup_steps(small, tmp_path):
    spec, _ = small
    args = training_arguments(spec, space.resolve(spec, HYPER), tmp_path)
    assert args.warmup_steps == 0.1
    assert args.get_warmup_steps(200) == 20


def test_neftune_noise_alpha_reaches_the_training_arguments(small):
    spec, _ = small
    noisy = load_spec(_with(spec, "train.neftune_noise_alpha=15"))
    assert training_arguments(noisy, space.resolve(noisy, HYPER), "unused").neftune_noise_alpha == 15.0
    assert training_arguments(spec, space.resolve(spec, HYPER), "unused").neftune_noise_alpha is None


@pytest.mark.integration
def test_neftune_noise_changes_training_and_leaves_evaluation_clean(small):
    """neftune_noise_alpha (added as one row in tuner/hyperparams.py) reaches the Trainer: the same
    seed trains to another loss with noise on the embeddings, and the evaluation still runs."""
    spec, prepared = small
    plain = load_spec(_with(spec, "train.stop_after_steps=4"))
    noisy = load_spec(_with(plain, "train.neftune_noise_alpha=15"))
    args = training_arguments(noisy, space.resolve(noisy, HYPER), "unused")
    assert args.neftune_noise_alpha == 15.0
    quiet, _ = _run(plain, prepared)
    loud, _ = _run(noisy, prepared)
    assert loud[0][0][C.TRAIN_LOSS] != pytest.approx(quiet[0][0][C.TRAIN_LOSS], rel=1e-4)
    assert math.isfinite(loud[0][0][C.EVAL_LOSS])


def test_a_run_resumed_at_the_trials_last_step_closes_it_with_a_copy_of_its_last_report(small):
    """Resumed from the checkpoint of its last report (the driver killed after it), the run has no step
    left: it sends one closing copy, completed, with where it went on from and the last evaluation."""
    spec, _ = small
    sent = []
    callback = ReportCallback(spec, lambda metrics, checkpoint: sent.append((metrics, checkpoint)), None)
    state, control = TrainerState(), TrainerControl()
    state.global_step, state.max_steps, state.num_input_tokens_seen, state.epoch = 79, 79, 40192, 1.0
    state.log_history = [{C.EVAL_LOSS: 6.9, "step": 64}, {"loss": 6.8, "step": 70}, {C.EVAL_LOSS: 6.7, "step": 79}]
    callback.on_train_begin(None, state, control)
    callback.on_train_end(None, state, control)
    (metrics, checkpoint), = sent
    assert checkpoint is None and metrics[C.REPEAT] and metrics[C.FINAL]
    assert metrics[C.TRIAL_STATUS] == C.COMPLETED and metrics[C.START_STEP] == metrics[C.STEP] == 79
    assert metrics[C.EVAL_LOSS] == 6.7 and callback.reports == 0 and callback.ended_as == C.COMPLETED


def test_a_run_that_reported_or_has_steps_left_sends_nothing_at_its_end(small):
    spec, _ = small
    sent = []
    callback = ReportCallback(spec, lambda metrics, checkpoint: sent.append(metrics), None)
    state, control = TrainerState(), TrainerControl()
    state.global_step, state.max_steps = 40, 79  # stopped before its end (ASHA, a budget): Tune ends it
    callback.on_train_begin(None, state, control)
    callback.on_train_end(None, state, control)
    state.global_step = 0  # a fresh run that ends at once made no checkpoint to go on from
    callback.on_train_begin(None, state, control)
    callback.on_train_end(None, state, control)
    assert sent == []


def test_a_nan_loss_stops_the_trial_and_reports_it_diverged(small):
    spec, _ = small
    sent = []
    callback = ReportCallback(spec, lambda metrics, checkpoint: sent.append((metrics, checkpoint)), None)
    state, control = TrainerState(), TrainerControl()
    state.global_step, state.max_steps, state.num_input_tokens_seen = 3, 100, 768
    callback.on_log(None, state, control, logs={"loss": float("nan")})
    assert control.should_training_stop and not control.should_save
    callback.on_step_end(None, state, control)
    assert not control.should_evaluate  # no evaluation, checkpoint or report of a diverged model
    callback.on_train_end(None, state, control)
    (metrics, checkpoint), = sent
    assert metrics[C.TRIAL_STATUS] == C.DIVERGED and metrics[C.FINAL]
    assert math.isnan(metrics[C.EVAL_LOSS]) and checkpoint is None


def _oom_when(monkeypatch, too_big) -> None:
    """Raise the error torch raises on CUDA out-of-memory when `too_big(trainer, inputs)`."""
    import torch
    from transformers import Trainer

    real = Trainer.training_step

    def training_step(self, model, inputs, *args, **kwargs):
        if too_big(self, inputs):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return real(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(Trainer, "training_step", training_step)


@pytest.mark.integration
def test_an_oom_retries_with_half_the_micro_batch_and_the_same_steps(small, monkeypatch):
    spec, prepared = small
    reference, _ = _run(spec, prepared)
    # Out of memory at micro-batch 8, after the first report: the retry must not report step 4 again.
    _oom_when(monkeypatch, lambda trainer, inputs: inputs["input_ids"].shape[0] > 4 and trainer.state.global_step >= 5)
    reports, summary = _run(spec, prepared)
    assert [m[C.STEP] for m, _ in reports] == [m[C.STEP] for m, _ in reference]  # same effective batch
    assert [m[C.MICRO_BATCH] for m, _ in reports] == [8] + [4] * (len(reports) - 1)
    assert [m[C.ACCUMULATION] for m, _ in reports] == [2] + [4] * (len(reports) - 1)
    assert reports[-1][0][C.TRIAL_STATUS] == C.COMPLETED and summary["status"] == C.COMPLETED
    assert reports[-1][0][C.TOKENS_SEEN] == reference[-1][0][C.TOKENS_SEEN]


@pytest.mark.integration
def test_an_oom_at_half_the_batch_too_ends_the_trial_as_oom_without_raising(small, monkeypatch):
    spec, prepared = small
    _oom_when(monkeypatch, lambda trainer, inputs: True)
    reports, summary = _run(spec, prepared)
    assert summary["status"] == C.OOM
    (last, files), = reports
    assert last[C.TRIAL_STATUS] == C.OOM and last[C.FINAL] and math.isnan(last[C.EVAL_LOSS]) and not files
    assert last[C.MICRO_BATCH] == 4 and last[C.ACCUMULATION] == 4


def _nan_model(tmp_path: Path) -> str:
    """The tiny model with one weight NaN: every loss it computes is NaN."""
    import torch
    from transformers import AutoModelForCausalLM

    from tuner import builtin

    nan = AutoModelForCausalLM.from_pretrained(builtin.tiny_gpt2_path())
    with torch.no_grad():
        nan.lm_head.weight[0, 0] = float("nan")
    nan.save_pretrained(tmp_path / "nan")
    return str(tmp_path / "nan")


@pytest.mark.integration
def test_a_real_nan_loss_stops_the_trainer_at_once_as_diverged(small, tmp_path):
    spec, prepared = small
    reports = []
    ctx = TrialContext(spec, prepared, _nan_model(tmp_path))
    summary = run_trial(HYPER, ctx, lambda metrics, checkpoint: reports.append((metrics, checkpoint)))
    (last, checkpoint), = reports  # no evaluation, checkpoint or report of a diverged model
    assert last[C.TRIAL_STATUS] == C.DIVERGED and last[C.FINAL] and checkpoint is None
    assert last[C.STEP] <= 10  # the first loss logged (every 10 steps) or evaluated stops it
    assert summary["status"] == C.DIVERGED


@pytest.mark.integration
def test_a_trial_resumed_from_its_last_checkpoint_completes_without_training(small, tmp_path):
    """A driver killed after a trial's last report, before Tune ended it, resumes the trial from that
    checkpoint: the run trains nothing and closes the trial, completed, from the step it went on from."""
    spec, prepared = small
    spec = load_spec(_with(spec, "train.report_every_tokens=1000000000"))
    checkpoint, step = _first_checkpoint(spec, prepared, tmp_path)  # the one report: the epoch's end
    reports = []
    summary = run_trial(HYPER, TrialContext(spec, prepared, model.resolve(spec.model.name_or_path)),
                        lambda metrics, checkpoint: reports.append((metrics, checkpoint)), resume_from=str(checkpoint))
    (last, kept), = reports
    assert kept is None and last[C.REPEAT] and last[C.FINAL] and last[C.TRIAL_STATUS] == C.COMPLETED
    assert last[C.START_STEP] == last[C.STEP] == step > 0 and math.isfinite(last[C.EVAL_LOSS])
    assert summary["status"] == C.COMPLETED


def _first_checkpoint(spec, prepared, tmp_path: Path) -> tuple[Path, int]:
    """A copy of the trial's first checkpoint (the core deletes its own once reported)."""
    import shutil

    kept = []

    def report(metrics, checkpoint):
        if checkpoint and not kept:
            shutil.copytree(checkpoint, tmp_path / "first")
            kept.append(metrics[C.STEP])

    run_trial(HYPER, TrialContext(spec, prepared, model.resolve(spec.model.name_or_path)), report)
    return tmp_path / "first", kept[0]


@pytest.mark.integration
def test_a_resumed_trial_goes_on_from_its_checkpoint_step(small, tmp_path):
    spec, prepared = small
    checkpoint, step = _first_checkpoint(spec, prepared, tmp_path)
    reports = []
    run_trial(HYPER, TrialContext(spec, prepared, model.resolve(spec.model.name_or_path)),
              lambda metrics, _: reports.append(metrics), resume_from=str(checkpoint))
    assert reports[0][C.START_STEP] == step > 0 and reports[0][C.STEP] > step


@pytest.mark.integration
def test_a_checkpoint_whose_optimizer_state_would_run_code_is_refused(small, tmp_path):
    """Optimizer, scheduler and RNG state are loaded weights-only: a pickle that runs code is refused."""
    import pickle

    from tuner.trial import UnsafeCheckpoint

    spec, prepared = small
    checkpoint, _ = _first_checkpoint(spec, prepared, tmp_path)
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (checkpoint / "optimizer.pt").write_bytes(pickle.dumps({"state": Payload()}))
    with pytest.raises(UnsafeCheckpoint, match="refused, not loaded"):
        run_trial(HYPER, TrialContext(spec, prepared, model.resolve(spec.model.name_or_path)),
                  lambda *_: None, resume_from=str(checkpoint))
    assert not marker.exists()


@pytest.mark.integration
def test_each_report_carries_where_the_trial_spent_its_time(small):
    spec, prepared = small
    reports, _ = _run(spec, prepared)
    for metrics, _ in reports:
        assert set(C.TIME_KEYS) <= set(metrics)
    totals = [[m[key] for key in C.TIME_KEYS] for m, _ in reports]
    assert all(b >= a for earlier, later in zip(totals, totals[1:]) for a, b in zip(earlier, later))  # running totals
    last = reports[-1][0]
    assert last[C.TIME_TRAIN] > 0 and last[C.TIME_EVAL] > 0 and last[C.TIME_SAVE] > 0 and last[C.TIME_MODEL] > 0
    # tokens/s counts training steps only: the interval's tokens over its training time
    assert all(m[C.TOKENS_PER_S] > 0 for m, _ in reports)


def _last_report_callback(spec, best: float, loss: float):
    """A callback that has reported `best` and now evaluates `loss` at the trial's last step."""
    sent = []
    callback = ReportCallback(spec, lambda metrics, checkpoint: sent.append((metrics, checkpoint)), None)
    callback.best = best
    state, control = TrainerState(), TrainerControl()
    state.global_step = state.max_steps = 10
    state.num_input_tokens_seen = 5120
    control.should_save = True
    args = type("Args", (), {"save_only_model": False})()
    callback.on_evaluate(args, state, control, metrics={"eval_loss": loss})
    return sent, control, args


def test_a_last_report_that_is_not_the_trials_best_writes_no_checkpoint(small):
    spec, _ = small
    sent, control, args = _last_report_callback(spec, best=3.0, loss=3.5)
    assert not control.should_save  # its earlier best checkpoint is the one promotion can use
    (metrics, checkpoint), = sent
    assert checkpoint is None and metrics[C.FINAL] and metrics[C.TRIAL_STATUS] == C.COMPLETED
    assert metrics[C.EVAL_LOSS] == 3.5


def test_a_last_report_that_is_the_trials_best_saves_the_weights_alone(small):
    spec, _ = small
    sent, control, args = _last_report_callback(spec, best=3.0, loss=2.5)
    assert control.should_save and args.save_only_model and not sent  # reported from on_save


def test_a_sampled_validation_set_is_fixed_by_its_seed(small):
    spec, prepared = small
    full = data.load_prepared(prepared)["validation"]
    _, sample = data.trial_splits(prepared, 5, 42)
    data._trial_splits.cache_clear()
    _, again = data.trial_splits(prepared, 5, 42)
    _, other = data.trial_splits(prepared, 5, 7)
    assert len(sample) == 5 and len(full) > 5
    ids = [row.tolist() for row in sample["input_ids"]]
    assert ids == [row.tolist() for row in again["input_ids"]]  # every trial, every retry: the same blocks
    assert ids != [row.tolist() for row in other["input_ids"]]
    assert all(row in full["input_ids"] for row in ids)
    assert len(data.trial_splits(prepared, None, 42)[1]) == len(full)


def test_a_reused_worker_reads_the_base_model_once_and_trains_a_fresh_copy(small, monkeypatch):
    spec, _ = small
    reads = []
    read = model._read
    monkeypatch.setattr(model, "_read", lambda *key: reads.append(key) or read(*key))
    model._pristine.clear()
    path = model.resolve(spec.model.name_or_path)
    first = model.load_model(path, reuse=True)
    with torch.no_grad():
        next(first.parameters()).add_(1.0)  # a trial trains its copy
    second = model.load_model(path, reuse=True, freeze_layers=1)
    assert len(reads) == 1 and first is not second
    assert torch.equal(next(second.parameters()), next(read(path, None, None, False).parameters()))
    assert not next(second.parameters()).requires_grad and next(first.parameters()).requires_grad
    assert second.config._attn_implementation == "sdpa"


@pytest.mark.integration
def test_patience_stops_a_trial_that_stopped_improving(small):
    """At a learning rate of 0 no report improves on the first: with patience 2 the third report
    ends the trial, stopped_patience, without a checkpoint (the first stays its best)."""
    spec, prepared = small
    spec = load_spec(_with(spec, "train.patience=2"))
    reports, summary = _run(spec, prepared, {**HYPER, "learning_rate": 0.0, "warmup_ratio": 0.0})
    assert [m[C.TRIAL_STATUS] for m, _ in reports] == [C.RUNNING, C.RUNNING, C.STOPPED_PATIENCE]
    assert reports[-1][0][C.FINAL] and reports[-1][1] == []
    assert reports[-1][0][C.STEP] < 4 * 5  # well before the epoch's end
    assert summary["best_eval_loss"] == reports[0][0][C.EVAL_LOSS] and summary["status"] == C.STOPPED_PATIENCE


@pytest.mark.integration
def test_reduce_on_plateau_halves_the_rate_at_reports_that_do_not_improve(small):
    """A threshold no report can meet makes every report after the first a plateau: the rate the
    Trainer logs halves at each (patience 0), and the Trainer never evaluates on its own."""
    spec, prepared = small
    raw = spec.to_dict()
    raw.pop("origin")
    for override in ("search.baseline=null", "search.space.warmup_ratio=0.0",
                     "train.lr_scheduler_type=reduce_lr_on_plateau",
                     "train.lr_scheduler_kwargs={factor: 0.5, patience: 0, threshold: 0.99}"):
        apply_override(raw, override)
    spec = load_spec(raw)
    reports, _ = _run(spec, prepared, {**HYPER, "warmup_ratio": 0.0})
    rates = [m[C.LEARNING_RATE] for m, _ in reports[:4]]
    assert rates[0] == pytest.approx(1e-3) and rates[1] == pytest.approx(1e-3)
    assert rates[2] == pytest.approx(5e-4) and rates[3] == pytest.approx(2.5e-4)
    assert [m[C.STEP] for m, _ in reports[:4]] == [4, 8, 12, 16]  # our reports only


@pytest.mark.integration
def test_lora_trains_adapters_only_and_checkpoints_them(small, tmp_path):
    """use_lora: only peft's adapters train; the checkpoints hold the adapter, and promotion puts it
    back on the base model: the same logits as the trained model."""
    from tuner import promote

    spec, prepared = small
    spec = load_spec(_with(spec, "train.stop_after_steps=4"))
    hyper = space.resolve(spec, {**HYPER, "use_lora": True, "lora_r": 4, "lora_alpha": 8.0})
    ctx = TrialContext(spec, prepared, model.resolve(spec.model.name_or_path))
    base = model.load_model(ctx.model_path)
    wrapped = model.with_lora(model.load_model(ctx.model_path), hyper)
    trainable = {n for n, p in wrapped.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    kept = tmp_path / "kept"

    def report(metrics, checkpoint):
        if checkpoint:
            import shutil
            shutil.copytree(checkpoint, kept, dirs_exist_ok=True)

    run_trial(hyper, ctx, report)
    assert model.is_adapter(kept) and not (kept / "model.safetensors").exists()
    restored = promote.load_checkpoint(str(kept), load_base=lambda: model.load_model(ctx.model_path))
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        tuned = restored(input_ids=ids).logits
        untouched = base(input_ids=ids).logits
        merged = restored.merge_and_unload()(input_ids=ids).logits
    assert not torch.allclose(tuned, untouched)  # the adapters learned something
    assert torch.allclose(tuned, merged, atol=1e-5)  # and merging them changes nothing
    with pytest.raises(promote.UnreadableCheckpoint, match="without their base model"):
        promote.load_checkpoint(str(kept))


def test_a_lora_winner_is_exported_merged_and_as_an_adapter(small, tmp_path):
    from transformers import AutoModelForCausalLM

    from tuner import export

    spec, prepared = small
    hyper = {"use_lora": True, "lora_r": 4, "lora_alpha": 8.0, "lora_dropout": 0.0}
    lora = model.with_lora(model.load_model(model.resolve(spec.model.name_or_path)), hyper)
    with torch.no_grad():  # as if trained: adapters that change the output
        for name, parameter in lora.named_parameters():
            if "lora_B" in name:
                parameter.fill_(0.01)
    ids = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad():
        expected = lora(input_ids=ids).logits
    spec.storage = str(tmp_path)
    record = TrialRecord("t1", params={**HYPER, **hyper}, best_metric=5.0, best_checkpoint="x", best_step=4)
    best = export.write_best(spec, record, {"eval_loss": 5.0}, [], lora, prepared.tokenizer_path)
    assert model.is_adapter(best / "adapter") and not model.is_adapter(best / "model")
    merged = AutoModelForCausalLM.from_pretrained(best / "model")
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, expected, atol=1e-5)
    again = model.load_adapter(model.load_model(model.resolve(spec.model.name_or_path)), best / "adapter")
    with torch.no_grad():
        assert torch.allclose(again(input_ids=ids).logits, expected, atol=1e-5)


@pytest.mark.integration
def test_instruction_data_trains_and_evaluates_on_completions_only(tmp_path):
    """A real Trainer run on prompt/completion records: the loss is the completions' (the final
    evaluation counts only their tokens)."""
    import json

    from tests.test_data import corpus_lines
    from tuner import promote
    from tuner.data import load_prepared
    from tuner.packing import IGNORE

    rows = []
    for line in corpus_lines(200):
        words = line.split()
        rows.append({"prompt": "Q: " + " ".join(words[:4]) + "\nA:", "completion": " " + " ".join(words[4:])})
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    spec = load_spec(ROOT / "search_spaces" / "tiny.yaml", [
        f"data.path={path}", "data.prompt_column=prompt", "data.completion_column=completion",
        "data.block_size=32", "train.report_every_tokens=2048", "train.stop_after_steps=8", "train.eval_blocks=null",
        f"storage={tmp_path / 'sweep'}"])
    prepared = data.prepare(spec, spec.sweep_dir)
    reports, _ = _run(spec, prepared, {**HYPER, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1})
    assert all(math.isfinite(m[C.EVAL_LOSS]) for m, _ in reports)
    validation = load_prepared(prepared)["validation"]
    base = model.load_model(model.resolve(spec.model.name_or_path))
    total, count = promote.token_loss(base, validation["input_ids"], 16, validation["labels"])
    assert count == sum(sum(label != IGNORE for label in labels[1:]) for labels in validation["labels"])
    assert count < sum(len(ids) - 1 for ids in validation["input_ids"])


# ---------------------------------------------------------------------------------------------
# The same core in the fast tier: the callback driven by hand, the Trainer and `_train` faked.


def _drive_reports(callback: ReportCallback, tmp_path: Path, losses: dict[int, float], max_steps: int,
                   tokens_per_step: int = 512) -> list[int]:
    """Step `callback` as the Trainer would, one report's evaluation and save wherever it asks; the
    eval loss at step s is `losses[s]`. Returns the steps at which it asked for a report."""
    state, args = TrainerState(), SimpleNamespace(output_dir=str(tmp_path), save_only_model=False)
    state.max_steps = max_steps
    callback.on_train_begin(args, state, TrainerControl())
    asked = []
    for step in range(1, max_steps + 1):
        state.global_step, state.num_input_tokens_seen = step, step * tokens_per_step
        control = TrainerControl()
        callback.on_log(args, state, control, logs={"loss": 4.0, "learning_rate": 1e-3})
        callback.on_step_end(args, state, control)
        if control.should_evaluate:
            asked.append(step)
            callback.on_evaluate(args, state, control, metrics={"eval_loss": losses[step]})
            if control.should_save:
                checkpoint = tmp_path / f"checkpoint-{step}"
                checkpoint.mkdir()
                (checkpoint / "training_args.bin").write_bytes(b"pickled")
                (checkpoint / "model.safetensors").write_bytes(b"weights")
                callback.on_save(args, state, control)
        if control.should_training_stop:
            break
    return asked


def test_the_callback_reports_every_report_every_tokens_and_at_the_end_with_a_checkpoint(small, tmp_path):
    spec, _ = small  # train.report_every_tokens=2048: every 4 steps of 512 tokens
    sent = []

    def report(metrics, checkpoint):
        sent.append((metrics, sorted(p.name for p in Path(checkpoint).iterdir()) if checkpoint else None))

    callback = ReportCallback(spec, report, None)
    asked = _drive_reports(callback, tmp_path, {4: 3.0, 8: 2.5, 10: 2.0}, max_steps=10)
    assert asked == [4, 8, 10]
    assert [m[C.STEP] for m, _ in sent] == [4, 8, 10]
    assert [m[C.TRIAL_STATUS] for m, _ in sent] == [C.RUNNING, C.RUNNING, C.COMPLETED]
    assert [m[C.FINAL] for m, _ in sent] == [False, False, True]
    assert [m[C.EVAL_LOSS] for m, _ in sent] == [3.0, 2.5, 2.0]
    assert all(m[C.TOKENS_SEEN] == m[C.STEP] * 512 and m[C.TRAIN_LOSS] == 4.0 for m, _ in sent)
    assert all(files == ["model.safetensors"] for _, files in sent)  # the pickled arguments never travel
    assert not list(tmp_path.glob("checkpoint-*"))  # the reporter copies what it keeps; the rest goes
    assert callback.best_loss == 2.0 and callback.reports == 3 and callback.ended_as == C.COMPLETED


def test_the_callback_stops_a_trial_out_of_patience_without_a_checkpoint(small, tmp_path):
    spec, _ = small
    spec = load_spec(_with(spec, "train.patience=2"))
    sent = []
    callback = ReportCallback(spec, lambda metrics, checkpoint: sent.append((metrics, checkpoint)), None)
    asked = _drive_reports(callback, tmp_path, {4: 3.0, 8: 3.1, 12: 3.2}, max_steps=100)
    assert asked == [4, 8, 12]  # the third report not better than the first is the second in a row
    assert [m[C.TRIAL_STATUS] for m, _ in sent] == [C.RUNNING, C.RUNNING, C.STOPPED_PATIENCE]
    assert sent[-1][0][C.FINAL] and sent[-1][1] is None
    assert callback.best_loss == 3.0


def test_max_t_completes_a_trial_at_its_report(small, tmp_path):
    """ASHA's max_t: the report that reaches it is the trial's completed one, though its loop goes on."""
    spec, _ = small
    sent = []
    callback = ReportCallback(spec, lambda metrics, checkpoint: sent.append(metrics), max_t=4096)
    _drive_reports(callback, tmp_path, {4: 3.0, 8: 2.9, 12: 2.8}, max_steps=12)
    assert [m[C.TRIAL_STATUS] for m in sent][:2] == [C.RUNNING, C.COMPLETED]


def _fake_train(calls: list[dict], oom_at: set[int], reports_per_run: int = 2):
    """`trial._train` without a Trainer: reports steps 4, 8, … through the reporter, and raises
    CUDA's out-of-memory error after the first report when the micro-batch is in `oom_at`."""
    def train(hyper, ctx, report, resume_from, workdir):
        calls.append(hyper)
        used = {C.MICRO_BATCH: hyper["per_device_train_batch_size"],
                C.ACCUMULATION: hyper["gradient_accumulation_steps"]}
        for n in range(1, reports_per_run + 1):
            report({C.STEP: 4 * n, C.TOKENS_SEEN: 2048 * n, C.EVAL_LOSS: 3.0 / n, C.TRIAL_STATUS: C.RUNNING,
                    C.FINAL: n == reports_per_run, **used}, None)
            if hyper["per_device_train_batch_size"] in oom_at:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (fake)")
        return {"status": C.COMPLETED, "reports": reports_per_run, "hyperparameters": hyper}
    return train


def test_an_oom_retries_once_with_half_the_micro_batch_and_reports_each_step_once(small, monkeypatch):
    import tuner.trial as trial

    spec, prepared = small
    calls: list[dict] = []
    monkeypatch.setattr(trial, "_train", _fake_train(calls, oom_at={8}))
    freed = []
    monkeypatch.setattr(trial, "free_cuda", lambda: freed.append(len(calls)))  # a full gc.collect on CPU
    sent = []
    summary = run_trial(HYPER, TrialContext(spec, prepared, "unused"), lambda m, c: sent.append(m))
    assert [(h["per_device_train_batch_size"], h["gradient_accumulation_steps"]) for h in calls] == [(8, 2), (4, 4)]
    assert freed == [1]  # the failed attempt's memory released before the retry
    assert [m[C.STEP] for m in sent] == [4, 8]  # the retry's step 4 is not reported again
    assert [m[C.MICRO_BATCH] for m in sent] == [8, 4]
    assert summary["status"] == C.COMPLETED


def test_an_oom_at_half_the_micro_batch_too_ends_the_trial_as_oom(small, monkeypatch):
    import tuner.trial as trial

    spec, prepared = small
    calls: list[dict] = []
    monkeypatch.setattr(trial, "_train", _fake_train(calls, oom_at={8, 4}))
    monkeypatch.setattr(trial, "free_cuda", lambda: None)
    sent = []
    summary = run_trial(HYPER, TrialContext(spec, prepared, "unused"), lambda m, c: sent.append(m))
    assert summary["status"] == C.OOM and len(calls) == 2
    last = sent[-1]
    assert last[C.TRIAL_STATUS] == C.OOM and last[C.FINAL] and math.isnan(last[C.EVAL_LOSS])
    assert (last[C.MICRO_BATCH], last[C.ACCUMULATION], last[C.STEP]) == (4, 4, 4)


def test_a_failing_metric_fn_fails_the_trial_with_its_message_and_no_retry(small, monkeypatch):
    import tuner.trial as trial
    from tuner.trial_metrics import MetricFnError

    def train(hyper, ctx, report, resume_from, workdir):
        raise MetricFnError("metric_fn raised ZeroDivisionError")

    spec, prepared = small
    monkeypatch.setattr(trial, "_train", train)
    sent = []
    summary = run_trial(HYPER, TrialContext(spec, prepared, "unused"), lambda m, c: sent.append(m))
    assert summary["status"] == C.FAILED and "ZeroDivisionError" in summary["error"]
    (last,) = sent
    assert last[C.TRIAL_STATUS] == C.FAILED and last[C.TRIAL_ERROR] == summary["error"]


class _FakeTrainer:
    """Stands in for the Trainer `_train` builds: keeps what it was given; `train` raises `fails`."""

    built: list["_FakeTrainer"] = []
    fails: BaseException | None = None

    def __init__(self, **kwargs):
        self.kwargs, self.callbacks, self.resumed_from = kwargs, [], "never trained"
        self.state = TrainerState()
        _FakeTrainer.built.append(self)

    def add_callback(self, callback):
        self.callbacks.append(callback)

    def train(self, resume_from_checkpoint=None):
        self.resumed_from = resume_from_checkpoint
        if _FakeTrainer.fails is not None:
            raise _FakeTrainer.fails
        self.state.num_input_tokens_seen = 1024


@pytest.fixture
def fake_trainer(monkeypatch):
    import tuner.trial as trial

    _FakeTrainer.built, _FakeTrainer.fails = [], None
    monkeypatch.setattr(trial, "counting_trainer", lambda: _FakeTrainer)
    return _FakeTrainer


def test_the_trainer_is_built_with_the_trials_arguments_and_splits(small, fake_trainer, tmp_path):
    spec, prepared = small
    summary = run_trial(HYPER, TrialContext(spec, prepared, model.resolve(spec.model.name_or_path)),
                        lambda *_: None, resume_from="ckpt", workdir=tmp_path)
    (trainer,) = fake_trainer.built
    args = trainer.kwargs["args"]
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (8, 2)
    assert args.learning_rate == HYPER["learning_rate"] and args.save_strategy == "no"
    assert len(trainer.kwargs["train_dataset"]) == prepared.blocks["train"]
    assert len(trainer.kwargs["eval_dataset"]) == min(spec.train.eval_blocks, prepared.blocks["validation"])
    assert [type(c) for c in trainer.callbacks] == [ReportCallback] and trainer.resumed_from == "ckpt"
    assert summary["status"] == C.COMPLETED and summary["tokens_seen"] == 1024
    assert not (tmp_path / "hf").exists()  # the Trainer's scratch directory goes with the run


def test_a_checkpoint_that_fails_to_unpickle_is_refused_as_unsafe(small, fake_trainer):
    import pickle

    from tuner.trial import UnsafeCheckpoint

    spec, prepared = small
    ctx = TrialContext(spec, prepared, model.resolve(spec.model.name_or_path))
    fake_trainer.fails = pickle.UnpicklingError("Weights only load failed")
    with pytest.raises(UnsafeCheckpoint, match="ckpt: .* refused, not loaded"):
        run_trial(HYPER, ctx, lambda *_: None, resume_from="ckpt")
    with pytest.raises(pickle.UnpicklingError):  # not resuming: not a checkpoint's fault
        run_trial(HYPER, ctx, lambda *_: None)
