"""Results: the leaderboard, read from the per-trial records the sweep keeps on disk.

It reads files only, so `status` works on a running sweep, a finished one, or one whose driver died.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from tuner import constants as C
from tuner.sweep import STUDY_DB, TRIALS_DIR

FIRST = ("trial_id", "status", "rung")
LAST = ("best_eval_loss", "best_metric", "best_step", "reports", "retries", "restarted_from_step_0",
        "micro_batch", "accumulation", "checkpoint_deleted", "tokens_seen", "train_seconds",
        "node_id", "gpu_ids", "optuna_trial", "optuna_state", "log_file")


def load_records(sweep_dir: Path) -> list[dict[str, Any]]:
    folder = Path(sweep_dir) / TRIALS_DIR
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []


def _optuna_states(sweep_dir: Path, study_name: str | None) -> dict[str, tuple[int, str]]:
    """Ray trial id → (Optuna trial number, state), from the study's SQLite file."""
    path = Path(sweep_dir) / STUDY_DB
    if not path.exists() or not study_name:
        return {}
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=study_name, storage=f"sqlite:///{path}")
    except KeyError:
        return {}
    return {t.user_attrs["ray_trial_id"]: (t.number, t.state.name)
            for t in study.get_trials(deepcopy=False) if "ray_trial_id" in t.user_attrs}


def sort_key(record: dict[str, Any], mode: str) -> tuple:
    value = record.get("best_metric")
    usable = value is not None and math.isfinite(value) and record.get("status") in C.PROMOTABLE
    return (0, value if mode == "min" else -value) if usable else (1, 0)


def leaderboard(sweep_dir: Path, mode: str = "min", study_name: str | None = None) -> list[dict[str, Any]]:
    """One row per trial, best first: status, every sampled hyperparameter, and what it reached."""
    records = sorted(load_records(sweep_dir), key=lambda r: sort_key(r, mode))
    params = sorted({name for r in records for name in r.get("params", {})})
    states = _optuna_states(sweep_dir, study_name)
    rows = []
    for r in records:
        row = {key: r.get(key) for key in FIRST}
        row.update({name: r.get("params", {}).get(name) for name in params})
        row.update({key: r.get(key) for key in LAST})
        row["optuna_trial"], row["optuna_state"] = states.get(r["trial_id"], (None, None))
        row["train_seconds"] = round(float(r.get("train_seconds") or 0), 2)
        rows.append(row)
    return rows


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    if not rows:
        return
    with open(path, "w", newline="") as f:
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


def best_records(sweep_dir: Path, mode: str) -> list[dict[str, Any]]:
    """Promotable trials with a checkpoint, best first. NaN or inf never wins."""
    records = [r for r in load_records(sweep_dir) if sort_key(r, mode)[0] == 0 and r.get("best_checkpoint")
               and not r.get("checkpoint_deleted")]
    return sorted(records, key=lambda r: sort_key(r, mode))


def baseline_record(records: list[dict[str, Any]], baseline: dict[str, Any] | None) -> dict[str, Any] | None:
    """The trial enqueued with `search.baseline`, if the spec has one and it ran."""
    if not baseline:
        return None
    return next((r for r in records if _same_params(r.get("params", {}), baseline)), None)


def baseline_comparison(match: dict[str, Any] | None, best: dict[str, Any], mode: str) -> dict[str, Any] | None:
    """Did tuning beat the baseline trial on the search's metric?"""
    if match is None:
        return None
    value = match.get("best_metric")
    beaten = value is None or not math.isfinite(value) or (
        best["best_metric"] < value if mode == "min" else best["best_metric"] > value)
    return {"trial_id": match["trial_id"], "status": match["status"], "search_metric": value,
            "tuning_beat_baseline": bool(beaten and best["trial_id"] != match["trial_id"])}


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


def _same_params(params: dict[str, Any], baseline: dict[str, Any]) -> bool:
    def same(a: Any, b: Any) -> bool:
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
        return a == b
    return all(same(params.get(k), v) for k, v in baseline.items())


def disk_summary(spec) -> str:
    """What the sweep occupies: its directory, and its bucket where it has one."""
    from tuner import storage

    def mib(location: str) -> str:
        return f"{storage.size_bytes(location) / 2**20:.1f} MiB"

    kept = sum(1 for r in load_records(spec.sweep_dir) if r.get("best_checkpoint") and not r.get("checkpoint_deleted"))
    text = f"{mib(str(spec.sweep_dir))} in {spec.sweep_dir}"
    if storage.is_uri(spec.location):
        text += f", {mib(spec.location)} in {spec.location}"
    return f"{text}; {kept} trial checkpoints kept (promote.keep_best: {spec.promote.keep_best})"
