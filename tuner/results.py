"""Results: the leaderboard, read from the per-trial records the sweep keeps on disk.

It reads files only, so `status` works on a running sweep, a finished one, or one whose driver died.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Iterable

from tuner import constants as C
from tuner import layout, pareto, records, storage, study
from tuner.records import TrialRecord

FIRST = ("trial_id", "status", "rung")
LAST = ("best_eval_loss", "best_metric", "best_step", "reports", "retries", "restarted_from_step_0",
        "micro_batch", "accumulation", "checkpoint_deleted", "tokens_seen", "train_seconds",
        "node_id", "gpu_ids", "optuna_trial", "optuna_state", "log_file")
PARETO = "pareto"  # the column saying a trial is on the Pareto front (several objectives only)


def leaderboard(sweep_dir: Path, mode: str = "min", study_name: str | None = None,
                found: Iterable[TrialRecord] | None = None,
                objectives: pareto.Objectives | None = None) -> list[dict[str, Any]]:
    """One row per trial, best first: status, every sampled hyperparameter, and what it reached.
    With several `objectives`: each one's value (the trial's best report on the first) and
    whether the trial is on the Pareto front."""
    ranked = records.ranked(records.load_all(sweep_dir) if found is None else found, mode)
    params = sorted({name for r in ranked for name in r.params})
    states = study.states(sweep_dir, study_name)
    on_front = pareto.front_ids(ranked, objectives) if objectives else set()
    rows = []
    for r in ranked:  # the fields by name: a record's whole copy (its history) is not needed here
        row = {key: getattr(r, key, None) for key in FIRST}
        row.update({name: r.params.get(name) for name in params})
        if objectives:
            row.update(objective_columns(r, objectives, r.trial_id in on_front))
        row.update({key: getattr(r, key, None) for key in LAST})
        row["optuna_trial"], row["optuna_state"] = states.get(r.trial_id, (None, None))
        row["train_seconds"] = round(float(r.train_seconds or 0), 2)
        rows.append(row)
    return rows


def objective_columns(record: TrialRecord, objectives: pareto.Objectives, on_front: bool) -> dict[str, Any]:
    """A trial's `objective_<name>` values and its `pareto` flag, for the leaderboard."""
    values = pareto.values(record, objectives)
    row: dict[str, Any] = {f"objective_{name}": values[i] if values else None for i, (name, _) in enumerate(objectives)}
    row[PARETO] = on_front
    return row


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    if not rows:
        return
    with layout.atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def format_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """A plain-text table for the terminal."""
    if not rows:
        return "(no trials yet)"
    columns = columns or [c for c in rows[0] if c not in ("log_file", "best_metric")]
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(line, widths)) for line in cells]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def best_records(sweep_dir: Path, mode: str) -> list[TrialRecord]:
    """Promotable trials with a checkpoint, best first. NaN or inf never wins."""
    return records.ranked((r for r in records.load_all(sweep_dir) if r.promotable and r.best_checkpoint
                           and not r.checkpoint_deleted), mode, by_checkpoint=True)


def baseline_record(found: Iterable[TrialRecord], baseline: dict[str, Any] | None) -> TrialRecord | None:
    """The trial enqueued with `search.baseline`, if the spec has one and it ran."""
    if not baseline:
        return None
    return next((r for r in found if records.same_params(r.params, baseline)), None)


def baseline_comparison(match: TrialRecord | None, best: TrialRecord, mode: str) -> dict[str, Any] | None:
    """Did tuning beat the baseline trial on the search's metric? With how far each of the two
    trained: a baseline cut short (by ASHA before it was exempt, the time budget, patience) is no
    like-for-like opponent for a fully trained winner, and `baseline_verdict` says so."""
    if match is None:
        return None
    beaten = records.better(best.best_metric, match.best_metric, mode)
    return {"trial_id": match.trial_id, "status": match.status, "search_metric": match.best_metric,
            "tuning_beat_baseline": bool(beaten and best.trial_id != match.trial_id),
            "tokens_seen": match.tokens_seen, "step": last_step(match),
            "winner_tokens_seen": best.tokens_seen, "winner_step": last_step(best)}


def last_step(record: TrialRecord) -> int | None:
    """The training step of the trial's last report: how far it trained."""
    return record.history[-1].get(C.STEP) if record.history else None


# How a baseline that did not complete ended, in words.
ENDED = {C.STOPPED_ASHA: "stopped by ASHA", C.STOPPED_PATIENCE: "stopped for lack of improvement (patience)",
         C.STOPPED_BUDGET: "cut short by the time budget or Ctrl-C", C.TIMED_OUT: "ended at search.trial_timeout",
         C.STALLED: "ended for sending no report (search.stall_timeout)", C.DIVERGED: "diverged",
         C.OOM: "out of memory", C.FAILED: "failed"}


def baseline_verdict(baseline: dict[str, Any], metric: str) -> str:
    """One line on the baseline comparison (`baseline_comparison`'s dict, as final_eval.json keeps
    it): whether tuning beat it and, where the baseline did not run to completion, how it ended,
    where, and how long the winner trained, so a win over a cut-short baseline is not read as fair."""
    verdict = "beat" if baseline["tuning_beat_baseline"] else "did not beat"
    value = baseline.get("search_metric")
    score = f"search {metric} {value:.4f}" if records.finite(value) else f"no finite search {metric}"
    status = baseline.get("status")
    if like_for_like(baseline):
        return f"tuning {verdict} the baseline (trial {baseline['trial_id']}, completed, {score})"
    where = _trained(baseline.get("tokens_seen"), baseline.get("step"), "step {:,}")
    winner = _trained(baseline.get("winner_tokens_seen"), baseline.get("winner_step"), "{:,} steps")
    ended = ENDED.get(str(status), str(status)) + (f" at {where}" if where else "")
    against = f", against a winner trained {winner}" if winner else ""
    return (f"tuning {verdict} the baseline (trial {baseline['trial_id']}, {ended}{against}; {score}) "
            "— not like for like")


def like_for_like(baseline: dict[str, Any]) -> bool:
    """Whether the baseline trial ran to completion: cut short, it is no fair match for a trained winner."""
    return baseline.get("status") == C.COMPLETED


def _trained(tokens: int | None, step: int | None, steps: str) -> str:
    """'65,536 tokens, step 8': how far a trial trained, from what is known of it (a final_eval.json
    written before these were kept knows neither)."""
    parts = [f"{tokens:,} tokens"] if tokens else []
    return ", ".join(parts + ([steps.format(step)] if step is not None else []))


AB_MODELS = ("base", "baseline", "tuned")
AB_FIGURES = (("perplexity", "perplexity", "{:.2f}"), ("bleu", "BLEU", "{:.2f}"),
              ("rouge1", "ROUGE-1", "{:.3f}"), ("rouge2", "ROUGE-2", "{:.3f}"), ("rougeL", "ROUGE-L", "{:.3f}"),
              ("exact_match", "exact match", "{:.3f}"))


def ab_rows(final: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The models of the final evaluation that have figures, in the order base, baseline, tuned."""
    return [(name, final[name]) for name in AB_MODELS
            if isinstance(final.get(name), dict) and "perplexity" in final[name]]


def ab_figures(final: dict[str, Any], rows: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, str, str]]:
    """The A/B table's columns: (key, label, format) of the figures some model has, a metric_fn's last."""
    custom = [(key, key, "{:.4g}") for key in final.get("custom_metrics", [])]
    return [f for f in (*AB_FIGURES, *custom) if any(f[0] in row for _, row in rows)]


def ab_lines(final: dict[str, Any]) -> list[str]:
    """The final evaluation's A/B table as text lines, for the terminal."""
    rows = ab_rows(final)
    if not rows:
        return []
    figures = ab_figures(final, rows)
    widths = [max(12, len(label) + 2) for _, label, _ in figures]  # a metric_fn's names may be long
    lines = [f"{'':<9}" + "".join(f"{label:>{w}}" for (_, label, _), w in zip(figures, widths))]
    for name, row in rows:
        cells = "".join(f"{fmt.format(row[key]) if key in row else '-':>{w}}"
                        for (key, _, fmt), w in zip(figures, widths))
        lines.append(f"{name:<9}{cells}")
    return lines


def disk_summary(spec) -> str:
    """What the sweep occupies: its directory, and its bucket where it has one."""
    def mib(location: str) -> str:
        return f"{storage.size_bytes(location) / 2**20:.1f} MiB"

    kept = sum(1 for r in records.load_all(spec.sweep_dir) if r.best_checkpoint and not r.checkpoint_deleted)
    text = f"{mib(str(spec.sweep_dir))} in {spec.sweep_dir}"
    if storage.is_uri(spec.location):
        text += f", {mib(spec.location)} in {spec.location}"
    return f"{text}; {kept} trial checkpoints kept (promote.keep_best: {spec.promote.keep_best})"
