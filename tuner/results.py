"""Results: the leaderboard, read from the per-trial records the sweep keeps on disk.

It reads files only, so `status` works on a running sweep, a finished one, or one whose driver died.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Iterable

from tuner import layout, records, storage, study
from tuner.records import TrialRecord

FIRST = ("trial_id", "status", "rung")
LAST = ("best_eval_loss", "best_metric", "best_step", "reports", "retries", "restarted_from_step_0",
        "micro_batch", "accumulation", "checkpoint_deleted", "tokens_seen", "train_seconds",
        "node_id", "gpu_ids", "optuna_trial", "optuna_state", "log_file")


def leaderboard(sweep_dir: Path, mode: str = "min", study_name: str | None = None,
                found: Iterable[TrialRecord] | None = None) -> list[dict[str, Any]]:
    """One row per trial, best first: status, every sampled hyperparameter, and what it reached."""
    ranked = records.ranked(records.load_all(sweep_dir) if found is None else found, mode)
    params = sorted({name for r in ranked for name in r.params})
    states = study.states(sweep_dir, study_name)
    rows = []
    for r in ranked:
        values = r.to_dict()
        row = {key: values.get(key) for key in FIRST}
        row.update({name: r.params.get(name) for name in params})
        row.update({key: values.get(key) for key in LAST})
        row["optuna_trial"], row["optuna_state"] = states.get(r.trial_id, (None, None))
        row["train_seconds"] = round(float(r.train_seconds or 0), 2)
        rows.append(row)
    return rows


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
                           and not r.checkpoint_deleted), mode)


def baseline_record(found: Iterable[TrialRecord], baseline: dict[str, Any] | None) -> TrialRecord | None:
    """The trial enqueued with `search.baseline`, if the spec has one and it ran."""
    if not baseline:
        return None
    return next((r for r in found if records.same_params(r.params, baseline)), None)


def baseline_comparison(match: TrialRecord | None, best: TrialRecord, mode: str) -> dict[str, Any] | None:
    """Did tuning beat the baseline trial on the search's metric?"""
    if match is None:
        return None
    beaten = records.better(best.best_metric, match.best_metric, mode)
    return {"trial_id": match.trial_id, "status": match.status, "search_metric": match.best_metric,
            "tuning_beat_baseline": bool(beaten and best.trial_id != match.trial_id)}


AB_MODELS = ("base", "baseline", "tuned")
AB_FIGURES = (("perplexity", "perplexity", "{:.2f}"), ("bleu", "BLEU", "{:.2f}"), ("rouge1", "ROUGE-1", "{:.3f}"),
              ("rouge2", "ROUGE-2", "{:.3f}"), ("rougeL", "ROUGE-L", "{:.3f}"))


def ab_rows(final: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The models of the final evaluation that have figures, in the order base, baseline, tuned."""
    return [(name, final[name]) for name in AB_MODELS
            if isinstance(final.get(name), dict) and "perplexity" in final[name]]


def ab_lines(final: dict[str, Any]) -> list[str]:
    """The final evaluation's A/B table as text lines, for the terminal."""
    rows = ab_rows(final)
    if not rows:
        return []
    figures = [f for f in AB_FIGURES if any(f[0] in row for _, row in rows)]
    lines = [f"{'':<9}" + "".join(f"{label:>12}" for _, label, _ in figures)]
    for name, row in rows:
        cells = "".join(f"{fmt.format(row[key]) if key in row else '-':>12}" for key, _, fmt in figures)
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
