"""Promotion: the best trial's final evaluation on the test split, then `best/`, once per sweep.

The best promotable trial whose checkpoint can be read is evaluated (re-ranked first on the whole
validation split when `promote.top_k` > 1), beside the base model and the baseline trial; `best/`
is written whole, in one step (see `layout.staged_dir`). A sweep already promoted is not promoted
again unless a new trial beat its winner.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuner import (
    data,
    export,
    layout,
    model,
    pareto,
    promote,
    records,
    results,
    state,
    storage,
    tracking,
    trial_metrics,
)
from tuner.constants import EVAL_LOSS
from tuner.context import TrialContext
from tuner.errors import UserError, first_line
from tuner.records import TrialRecord
from tuner.spec import Spec

log = logging.getLogger("tuner")


class SweepFailed(Exception):
    """No trial finished with a usable result: nothing to promote or export."""


@dataclass
class SweepResult:
    sweep_dir: Path
    leaderboard: list[dict[str, Any]]
    best: TrialRecord | None  # the promoted trial's record
    final_eval: dict[str, Any]
    paths: dict[str, Path] = field(default_factory=dict)


def already_exported(spec: Spec, board: list[dict[str, Any]], progress: state.SweepState) -> bool:
    """Whether best/ already holds this sweep's winner: no trial ran since the export, or the ones
    that did (an extension) did not beat it. Promotion is a full test-set evaluation: done once."""
    final = spec.sweep_dir / layout.BEST_DIR / "final_eval.json"
    if not final.exists() or progress.exported_trials is None:
        return False
    if progress.exported_trials == len(board):
        return True
    best = candidates(spec)
    exported = json.loads(final.read_text())
    return bool(best) and (best[0].trial_id, best[0].best_checkpoint) == (exported["trial_id"], exported["checkpoint"])


def exported_result(spec: Spec, board: list[dict[str, Any]]) -> SweepResult:
    """The result of a sweep promoted and exported by an earlier run, read back from best/."""
    best_dir = spec.sweep_dir / layout.BEST_DIR
    final_eval = json.loads((best_dir / "final_eval.json").read_text())
    best = next((r for r in records.load_all(spec.sweep_dir) if r.trial_id == final_eval.get("trial_id")), None)
    if best is not None:
        _summary(spec, best, final_eval, best_dir)
    return _result(spec, board, best, final_eval, best_dir)


def promote_and_export(spec: Spec, ctx: TrialContext, board: list[dict[str, Any]],
                       tracker: tracking.Tracker) -> SweepResult:
    """The best promotable trial's final evaluation on the test split, then `best/`."""
    sweep_dir, prepared = spec.sweep_dir, ctx.prepared
    found = records.load_all(sweep_dir)
    if ctx.trial_fn is not None and not any(r.best_checkpoint for r in found):
        top = records.ranked(found, spec.search.mode)[:1]  # non-promotable and NaN rank last
        if top and top[0].promotable:
            return _unpromotable(spec, board, top[0])
    baseline_record = results.baseline_record(found, spec.search.baseline)
    best, (metrics, samples, best_model), selection = _evaluate_best_readable(spec, ctx, baseline_record)
    baseline = results.baseline_comparison(baseline_record, best, spec.search.mode)
    if baseline is not None:
        metrics["baseline"] = {**baseline, **metrics.get("baseline", {})}
    if selection is not None:
        metrics["selection"] = selection
    best_dir = export.write_best(spec, best, metrics, samples, best_model, prepared.tokenizer_path)
    final_eval = json.loads((best_dir / "final_eval.json").read_text())
    tracker.final_evaluation(best, final_eval, samples)
    if storage.is_uri(spec.location):  # the bucket gets the results and the logs too: all in one place
        for name in (layout.LOGS_DIR, layout.BEST_DIR):
            if (sweep_dir / name).exists():
                storage.upload(sweep_dir / name, storage.join(spec.location, name))
    _summary(spec, best, final_eval, best_dir)
    return _result(spec, board, best, final_eval, best_dir)


def _unpromotable(spec: Spec, board: list[dict[str, Any]], best: TrialRecord) -> SweepResult:
    """A `trial_fn` whose reports carry no checkpoint: its trials are ranked (the leaderboard), and
    nothing is promoted or exported, which needs a model to load."""
    log.info("best trial %s: search %s %.4f at step %s", best.trial_id, spec.search.metric, best.best_metric,
             best.best_step)
    log.info("no trial reported a checkpoint (trial_fn's report(metrics, checkpoint_dir)), so nothing was "
             "promoted or exported; results: %s (leaderboard.csv)", spec.sweep_dir)
    return SweepResult(spec.sweep_dir, board, best, {}, {"leaderboard": spec.sweep_dir / layout.LEADERBOARD,
                                                         "report": spec.sweep_dir / layout.REPORT_FILE})


def _result(spec: Spec, board: list[dict[str, Any]], best: TrialRecord | None, final_eval: dict[str, Any],
            best_dir: Path) -> SweepResult:
    sweep_dir = spec.sweep_dir
    return SweepResult(sweep_dir, board, best, final_eval, {
        "leaderboard": sweep_dir / layout.LEADERBOARD, "best": best_dir,
        "config": best_dir / "config.yaml", "model": best_dir / "model",
        "final_eval": best_dir / "final_eval.json", "samples": best_dir / "samples.jsonl",
        "report": sweep_dir / layout.REPORT_FILE})


def export_trial(spec: Spec, trial_id: str) -> Path:
    """`tuner export --trial ID`: the trial's best checkpoint and config in exports/ID/ (a trial of
    the Pareto front, say, beside the promoted one in best/). Refuses a trial the sweep does not
    have, or one whose best checkpoint is gone or was never kept."""
    found = {r.trial_id: r for r in records.load_all(spec.sweep_dir, spec.location)}
    record = found.get(trial_id)
    if record is None:
        raise UserError(f"--trial {trial_id}: no such trial in {spec.sweep_dir}; its trials are "
                        f"{', '.join(sorted(found)) or 'none yet'} (see leaderboard.csv)")
    if not record.promotable or not record.best_checkpoint or record.checkpoint_deleted:
        why = ("its checkpoint was deleted (promote.keep_best keeps the best ones and the Pareto front's)"
               if record.checkpoint_deleted else f"it has no checkpoint to export ({record.status})")
        raise UserError(f"--trial {trial_id}: {why}; export a trial with a checkpoint, e.g. one marked on the "
                        "Pareto front in leaderboard.csv")
    model_path = model.resolve(spec.model.name_or_path)
    try:
        checkpoint = fetch(layout.resolve(record.best_checkpoint, spec.location),
                           spec.sweep_dir / layout.PROMOTED_DIR / record.trial_id)
        loaded = promote.load_checkpoint(checkpoint, spec.model.trust_remote_code, lambda: model.load_model(
            model_path, spec.model.revision, token_env=spec.model.token_env,
            trust_remote_code=spec.model.trust_remote_code, code_revision=spec.model.code_revision))
    except promote.UnreadableCheckpoint as exc:
        raise UserError(f"--trial {trial_id}: its checkpoint cannot be read ({exc}); export another trial") from None
    return export.write_trial(spec, record, loaded, data.find_prepared(spec).tokenizer_path)


def fetch(checkpoint: str, local: Path) -> str:
    """A local directory holding `checkpoint` (downloaded when it lives in a bucket)."""
    if not storage.is_uri(checkpoint):
        if not Path(checkpoint).is_dir():
            raise promote.UnreadableCheckpoint(f"{checkpoint}: no such directory")
        return checkpoint
    try:
        storage.download(checkpoint, local)
    except OSError as exc:  # gone from the bucket, or unreachable: promotion takes the next best
        raise promote.UnreadableCheckpoint(f"{checkpoint}: {first_line(exc)}") from None
    return str(local)


def candidates(spec: Spec) -> list[TrialRecord]:
    """Promotable trials with a checkpoint, the one to promote first: the best by search.metric,
    or, with `promote.pick`, the pick among the near-best by its cost (see `pareto.pick`)."""
    found = results.best_records(spec.sweep_dir, spec.search.mode)
    pick = spec.promote.pick
    if pick is None or not found:
        return found
    ordered = pareto.pick(found, records.load_all(spec.sweep_dir), pareto.objectives(spec), pick)
    log.info("promote: promote.pick takes trial %s: %s within %s of the best, then the best %s (among %s)",
             ordered[0].trial_id, pick.metric or spec.search.metric, pick.within, pick.then,
             "the Pareto front" if pick.among == "front" else "every finished trial")
    return ordered


def _evaluate_best_readable(spec: Spec, ctx: TrialContext, baseline: TrialRecord | None,
                            ) -> tuple[TrialRecord, tuple, dict[str, Any] | None]:
    """The final evaluation of the best trial whose checkpoint can be read, best first (re-ranked on
    the whole validation split when `promote.top_k` > 1): a missing or corrupt checkpoint falls back
    to the next best, and says so. Returns the record, the evaluation and the re-ranking, if any."""
    sweep_dir = spec.sweep_dir
    ordered = candidates(spec)

    def locate(record: TrialRecord) -> str:
        assert record.best_checkpoint is not None  # candidates() are promotable: each has a checkpoint
        checkpoint = layout.resolve(record.best_checkpoint, spec.location)
        return fetch(checkpoint, sweep_dir / layout.PROMOTED_DIR / record.trial_id)

    selection = None
    if spec.promote.top_k > 1 and len(ordered) > 1:
        ordered, selection = promote.rerank(ordered, locate, ctx.prepared, spec.promote,
                                               spec.model.trust_remote_code, lambda: model.load_model(
                                                   ctx.model_path, spec.model.revision, token_env=spec.model.token_env,
                                                   trust_remote_code=spec.model.trust_remote_code,
                                                   code_revision=spec.model.code_revision), _rescore(spec, ctx))
        _log_selection(selection)
    baseline_checkpoint = None
    if baseline is not None and baseline.best_checkpoint and not baseline.checkpoint_deleted:
        try:
            baseline_checkpoint = locate(baseline)
        except promote.UnreadableCheckpoint as exc:
            log.warning("promote: the baseline trial's checkpoint is unreadable (%s)", exc)
    skipped = []
    for record in ordered:
        try:
            checkpoint = locate(record)
            return record, promote.final_evaluation(checkpoint, ctx.model_path, ctx.prepared, spec.promote,
                                                    spec.model.revision, spec.model.token_env,
                                                    spec.model.trust_remote_code, baseline_checkpoint,
                                                    spec.model.code_revision,
                                                    trial_metrics.final_scorer(spec, ctx.metric_fn)), selection
        except promote.UnreadableCheckpoint as exc:  # not the base model's errors: those are not the checkpoint's
            skipped.append(f"  {record.trial_id}: {exc}")
            log.warning("promote: the checkpoint of trial %s is missing or unreadable (%s); promoting the "
                        "next best trial instead", record.trial_id, exc)
    lines = skipped or [f"  {r.trial_id}: {r.status}" + (f" ({r.error})" if r.error else "")
                        for r in records.load_all(sweep_dir)]
    reason = "no readable checkpoint" if skipped else f"no trial finished with a finite {spec.search.metric}"
    raise SweepFailed(f"{reason}; nothing to promote or export:\n" + "\n".join(lines))


def _rescore(spec: Spec, ctx: TrialContext) -> promote.Rescore | None:
    """The re-ranking by the search's metric, where it is not the loss (a generation metric, a metric_fn's)."""
    if spec.search.metric == EVAL_LOSS or not trial_metrics.wanted(spec, ctx.metric_fn):
        return None
    tokenizer = model.load_tokenizer(ctx.prepared.tokenizer_path)
    return trial_metrics.rescore(spec, ctx.prepared, tokenizer, ctx.metric_fn)


def _log_selection(selection: dict[str, Any]) -> None:
    if selection.get("error"):
        return  # rerank said why already
    metric = selection.get("metric")
    where = (f"by {metric} on {selection['prompts']} validation prompts" if metric
             else f"on the whole validation split ({selection['blocks']} blocks)")
    log.info("promote: the best %d trials re-evaluated %s: %s", len(selection["candidates"]), where, ", ".join(
        f"{c['trial_id']} {c['validation_metric' if metric else 'validation_loss']:.4f}"
        for c in selection["candidates"]))
    log.info("promote: %s", f"the choice changed from {selection['search_winner']} to {selection['chosen']}"
             if selection["changed"] else f"the choice stands: {selection['chosen']}")


def _summary(spec: Spec, best: TrialRecord, final: dict[str, Any], best_dir: Path) -> None:
    log.info("best trial %s: search %s %.4f at step %s; test perplexity %.2f", best.trial_id,
             spec.search.metric, records.checkpoint_metric(best), records.checkpoint_step(best), final["perplexity"])
    for line in results.ab_lines(final):
        log.info("  %s", line)
    if "baseline" in final and "tuning_beat_baseline" in final["baseline"]:
        log.info("%s", results.baseline_verdict(final["baseline"], spec.search.metric))
    log.info("results: %s (leaderboard.csv, best/config.yaml, best/model, best/final_eval.json)",
             spec.sweep_dir)
