"""`report.html`: what a sweep learned, on one self-contained page.

Learning curves against training tokens (or steps) with ASHA's rungs and stopping points, Optuna's
hyperparameter importances, parallel coordinates, the leaderboard, the final evaluation's A/B figures
and samples, and the data summary. The plots are SVG drawn here, the few lines of script are
inline: the page opens from disk with no network, and the sweep directory can be copied anywhere
with it. Built from the files the sweep keeps (records, the Optuna study, best/, the data summary),
so it can be rebuilt at any time: `tuner report SWEEP_DIR`.
"""

from __future__ import annotations

import html
import json
import logging
import math
import re
import warnings
from functools import partial
from pathlib import Path
from typing import Any, Callable

from tuner import charts, layout, pareto, records, results
from tuner import constants as C
from tuner.charts import HEIGHT, PAD, PALETTE, WIDTH, Axis
from tuner.plan import make_plan
from tuner.records import TrialRecord
from tuner.spec import Spec

log = logging.getLogger("tuner")
REPORT_FILE = layout.REPORT_FILE
SECTIONS = ("curves", "importances", "parallel", "leaderboard", "final", "data")


def write_report(spec: Spec) -> Path:
    """Build the sweep's report.html from what its directory holds now; returns its path."""
    sweep_dir = spec.sweep_dir
    found = records.load_all(sweep_dir)
    final = _read_json(sweep_dir / layout.BEST_DIR / "final_eval.json")
    samples = _read_jsonl(sweep_dir / layout.BEST_DIR / "samples.jsonl")
    board = results.leaderboard(sweep_dir, spec.search.mode, spec.name, found, pareto.objectives(spec))
    summary = _read_json(sweep_dir / layout.DATA_DIR / layout.DATA_SUMMARY)
    rungs = make_plan(spec, train_tokens(sweep_dir, summary)).rungs  # none without ASHA
    body = "\n".join([
        _section("curves", "Learning curves", learning_curves(found, spec.search.metric, rungs)),
        _section("importances", "Hyperparameter importances", importances_html(sweep_dir, spec)),
        _section("parallel", "Parallel coordinates", parallel_coordinates(found, spec)),
        *([_section("pareto", "Pareto front", pareto_front(found, spec))] if spec.search.metrics else []),
        _section("leaderboard", "Leaderboard", leaderboard_table(board, spec)),
        _section("final", "Final evaluation", final_html(final, samples, spec.search.metric)),
        _section("data", "Data", data_html(summary)),
    ])
    path = sweep_dir / REPORT_FILE
    layout.write_text(path, _page(spec, found, body))
    return path


def train_tokens(sweep_dir: Path, summary: dict[str, Any] | None) -> int | None:
    """The train split's tokens as the sweep's plan counts them (full blocks × block size): from the
    summary of the data the sweep uses now, else from the one prepared data set a sweep older than
    the summary holds. None where unknown: ASHA's rungs are then left off the curves."""
    if summary is None:
        prepared = list((sweep_dir / layout.DATA_DIR).glob("*/prepared.json"))
        summary = _read_json(prepared[0]) if len(prepared) == 1 else None
    return summary["blocks"]["train"] * summary["block_size"] if summary else None


# ---------------------------------------------------------------------------------------------
# Plots: SVG strings.


def _count(value: float) -> str:
    """A tick label for a token count: 65536 reads 65.5k."""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.0f}"


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# The curves' x axes: (history key, view name, axis label, tick format). Tokens first, the default:
# trials with different batch sizes line up there, and ASHA compares trials there.
CURVE_VIEWS = ((C.TOKENS_SEEN, "tokens", "training tokens", _count), (C.STEP, "steps", "training step", charts.label))


def learning_curves(found: list[TrialRecord], metric: str, rungs: list[int]) -> str:
    """Every trial's metric against the training tokens it had seen (shown first), or against its
    training step (a radio button away, no script); ASHA's rungs dashed on the tokens axis, an ×
    where ASHA stopped a trial."""
    reported = [r for r in found if any(_finite(h.get(metric)) for h in r.history)]
    if not reported:
        return '<p class="empty">No trial has reported yet.</p>'
    toggle = "".join(f'<input type="radio" name="curves-x" id="curves-x-{name}"{" checked" if i == 0 else ""}>'
                     f'<label for="curves-x-{name}">against {label}</label>'
                     for i, (_, name, label, _) in enumerate(CURVE_VIEWS))
    views = "".join(_curves_view(reported, metric, key, name, label, fmt, rungs if key == C.TOKENS_SEEN else [])
                    for key, name, label, fmt in CURVE_VIEWS)
    stopped = sum(r.status == C.STOPPED_ASHA for r in reported)
    rung_key = (f" Dashed lines mark ASHA's rungs ({len(rungs)}), where it kept the best trials and stopped the "
                "rest." if rungs else "")
    note = (f"<p>{len(reported)} trials; <span class=\"stop-key\">×</span> marks where ASHA stopped a trial "
            f"({stopped} of them).{rung_key} Hover a line for its trial.</p>")
    return f'{note}<div class="curves">{toggle}{views}</div>'


def _curves_view(reported: list[TrialRecord], metric: str, key: str, name: str, label: str,
                 x_fmt: Callable[[float], str], rungs: list[int]) -> str:
    """One view of the curves: x from `key` of each report. A trial keeps its colour in every view."""
    curves = [(i, r, [(h[key], h[metric]) for h in r.history if _finite(h.get(key)) and _finite(h.get(metric))])
              for i, r in enumerate(reported)]
    curves = [(i, r, points) for i, r, points in curves if points]
    if not curves:
        return f'<div class="view" id="curves-{name}"><p class="empty">No trial reported its {label}.</p></div>'
    x = Axis(0, max([s for _, _, points in curves for s, _ in points] + rungs), PAD, WIDTH - 16)
    values = [v for _, _, points in curves for _, v in points]
    y = Axis(min(values), max(values), HEIGHT - PAD, 16)
    parts = charts.frame(x, y, label, metric, x_fmt) + [_rung_line(x(rung), rung) for rung in rungs]
    for i, record, points in curves:
        parts.extend(_curve(record, points, x, y, PALETTE[i % len(PALETTE)], name))
    return f'<div class="view" id="curves-{name}">{charts.plot(parts, f"curves-{name}")}</div>'


def _rung_line(px: float, rung: int) -> str:
    """A dashed vertical line at an ASHA rung, labelled with its tokens along it, from the top."""
    return (f'<line class="rung" data-tokens="{rung}" x1="{px:.1f}" y1="16" x2="{px:.1f}" y2="{HEIGHT - PAD}" '
            f'stroke="#999" stroke-dasharray="4 3"><title>ASHA rung: {rung:,} tokens</title></line>'
            f'<text class="rung-label" x="{px - 3:.1f}" y="18" text-anchor="end" '
            f'transform="rotate(-90 {px - 3:.1f} 18)">{rung:,}</text>')


def _curve(record: TrialRecord, points: list[tuple[float, float]], x: Axis, y: Axis, color: str,
           unit: str) -> list[str]:
    """One trial's polyline and report points, and its × where ASHA stopped it."""
    path = " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in points)
    parts = [(f'<polyline class="curve" data-trial="{record.trial_id}" points="{path}" fill="none" '
              f'stroke="{color}" stroke-width="1.6"><title>{record.trial_id} ({record.status})</title></polyline>')]
    parts.extend(f'<circle cx="{x(s):.1f}" cy="{y(v):.1f}" r="2.5" fill="{color}"><title>{record.trial_id} '
                 f"{charts.label(s)} {unit}: {v:.4f}</title></circle>" for s, v in points)
    if record.status == C.STOPPED_ASHA:
        sx, sy = x(points[-1][0]), y(points[-1][1])
        parts.append(f'<path class="asha-stop" d="M{sx - 5:.1f},{sy - 5:.1f}L{sx + 5:.1f},{sy + 5:.1f}'
                     f'M{sx - 5:.1f},{sy + 5:.1f}L{sx + 5:.1f},{sy - 5:.1f}" stroke="#c00" stroke-width="2">'
                     f"<title>{record.trial_id}: stopped by ASHA at {record.rung} tokens</title></path>")
    return parts


def parallel_coordinates(found: list[TrialRecord], spec: Spec) -> str:
    """One line per trial through each searched hyperparameter's axis to its best metric, coloured
    by that metric (dark = better)."""
    # (record, its best metric): the metric, past the filter, a float for the type checker too
    rows = [(r, r.best_metric) for r in found if r.best_metric is not None and _finite(r.best_metric) and r.params]
    names = [n for n in spec.search.space if isinstance(spec.search.space[n], dict)]
    if not rows or not names:
        return '<p class="empty">No trial has a finite result yet.</p>'
    columns = names + [spec.search.metric]
    left, right = PAD, WIDTH - PAD
    xs = [left + i * (right - left) / max(1, len(columns) - 1) for i in range(len(columns))]
    axes: list[Callable[[Any], float]] = []
    labels: list[list[tuple[float, str]]] = []
    for name in columns:
        values = [m if name == spec.search.metric else r.params.get(name) for r, m in rows]
        entry = spec.search.space.get(name, {})
        if entry.get("type") == "categorical" or not all(_finite(v) for v in values if v is not None):
            choices = list(entry.get("choices") or sorted({str(v) for v in values}))
            slot = {str(c): i for i, c in enumerate(choices)}
            axis = Axis(0, max(1, len(choices) - 1), HEIGHT - PAD, 24)
            axes.append(partial(_at_slot, axis, slot))
            labels.append([(axis(i), str(c)) for i, c in enumerate(choices)])
        else:
            present = [v for v in values if v is not None]
            axis = Axis(min(present), max(present), HEIGHT - PAD, 24, bool(entry.get("log")))
            axes.append(axis)
            labels.append([(axis(t), charts.label(t)) for t in axis.ticks(4)])
    best = [m for _, m in rows]
    sign = 1 if spec.search.mode == "min" else -1
    low, high = min(sign * b for b in best), max(sign * b for b in best)
    parts = []
    for i, (x, name, marks) in enumerate(zip(xs, columns, labels)):
        parts.append(f'<line x1="{x:.1f}" y1="24" x2="{x:.1f}" y2="{HEIGHT - PAD}" class="axis"/>'
                     f'<text x="{x:.1f}" y="{HEIGHT - PAD + 16 + 14 * (i % 2)}" text-anchor="middle" class="axis-name">'
                     f"{html.escape(name)}</text>")
        parts.extend(f'<text x="{x + 4:.1f}" y="{py + 3:.1f}" class="tick">{html.escape(text)}</text>'
                     for py, text in marks)
    for r, m in sorted(rows, key=lambda rm: -sign * rm[1]):  # the best drawn last, on top
        shade = 0.0 if high == low else (sign * m - low) / (high - low)
        values = [m if name == spec.search.metric else r.params.get(name) for name in columns]
        points = " ".join(f"{x:.1f},{axis(v):.1f}" for x, axis, v in zip(xs, axes, values) if v is not None)
        parts.append(f'<polyline class="pc-line" points="{points}" fill="none" stroke="{_shade(shade)}" '
                     f'stroke-width="1.8" opacity="0.85"><title>{r.trial_id}: {spec.search.metric} '
                     f"{m:.4f}</title></polyline>")
    return (f"<p>{len(rows)} trials with a finite {html.escape(spec.search.metric)}; darker lines are better.</p>"
            + charts.plot(parts, "parallel"))


def _at_slot(axis: Axis, slot: dict[str, int], value: Any) -> float:
    """Where a categorical value sits on its axis: its choice's slot (the first, for one not among them)."""
    return axis(slot.get(str(value), 0))


def pareto_front(found: list[TrialRecord], spec: Spec) -> str:
    """The completed trials on the first two objectives, those on the Pareto front (of all the
    objectives) highlighted and, with two objectives, joined by the front's staircase."""
    objectives = pareto.objectives(spec)
    points = {r.trial_id: v for r in found if r.status == C.COMPLETED and (v := pareto.values(r, objectives))}
    if not points:
        return '<p class="empty">No trial has completed with a value for every objective yet.</p>'
    on_front = pareto.front(points, [mode for _, mode in objectives])
    (x_name, x_mode), (y_name, y_mode) = objectives[:2]
    x = Axis(min(v[0] for v in points.values()), max(v[0] for v in points.values()), PAD, WIDTH - 16)
    y = Axis(min(v[1] for v in points.values()), max(v[1] for v in points.values()), HEIGHT - PAD, 16)
    parts = charts.frame(x, y, f"{x_name} ({x_mode})", f"{y_name} ({y_mode})")
    if len(objectives) == 2:
        stairs = sorted(points[t] for t in on_front)
        path = " ".join(f"{x(a):.1f},{y(b):.1f}" for a, b in stairs)
        parts.append(f'<polyline class="front-line" points="{path}" fill="none" stroke="{PALETTE[1]}" '
                     'stroke-width="1.5" stroke-dasharray="5 3"/>')
    for trial_id, value in sorted(points.items(), key=lambda item: item[0] in on_front):  # the front on top
        kind, radius, colour = ("front-point", 6, PALETTE[1]) if trial_id in on_front else ("trial-point", 4, "#999")
        label = ", ".join(f"{name} {charts.label(v)}" for (name, _), v in zip(objectives, value))
        parts.append(f'<circle class="{kind}" data-trial="{trial_id}" cx="{x(value[0]):.1f}" cy="{y(value[1]):.1f}" '
                     f'r="{radius}" fill="{colour}"><title>{trial_id}: {html.escape(label)}</title></circle>')
    rows = "".join(f"<tr><td>{t}</td>" + "".join(f"<td>{charts.label(v)}</td>" for v in points[t]) + "</tr>"
                   for t in sorted(on_front, key=lambda t: points[t]))
    head = "".join(f"<th>{html.escape(name)} ({mode})</th>" for name, mode in objectives)
    more = " (on every objective: a point may look dominated in these two)" if len(objectives) > 2 else ""
    return (f"<p>{len(points)} completed trials on {html.escape(x_name)} and {html.escape(y_name)}; the "
            f"{len(on_front)} on the Pareto front{more} are highlighted. `tuner export SWEEP_DIR --trial ID` "
            "exports any of them.</p>" + charts.plot(parts, "pareto")
            + f'<table id="pareto-table"><thead><tr><th>trial</th>{head}</tr></thead><tbody>{rows}</tbody></table>')


def _shade(fraction: float) -> str:
    """Dark blue (best) to orange (worst)."""
    start, end = (8, 29, 88), (253, 174, 97)
    r, g, b = (round(s + (e - s) * fraction) for s, e in zip(start, end))
    return f"#{r:02x}{g:02x}{b:02x}"


def importances(sweep_dir: Path, spec: Spec) -> dict[str, dict[str, float]]:
    """Optuna's importance evaluators (fANOVA, PED-ANOVA) on the sweep's study: evaluator → {param:
    share}. An evaluator that cannot run on these trials (too few, one parameter) is left out."""
    import optuna

    path = sweep_dir / layout.STUDY_DB
    if not path.exists():
        return {}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=spec.name, storage=f"sqlite:///{path}")
    except KeyError:
        return {}
    evaluators = {"fANOVA": optuna.importance.FanovaImportanceEvaluator(seed=0),
                  "PED-ANOVA": optuna.importance.PedAnovaImportanceEvaluator()}
    # several objectives (search.metrics): the importances for the first, which ASHA ranks by too
    target = (lambda trial: trial.values[0]) if len(study.directions) > 1 else None
    out = {}
    for name, evaluator in evaluators.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                shares = dict(optuna.importance.get_param_importances(study, evaluator=evaluator, target=target))
            except (ImportError, ValueError, RuntimeError, ZeroDivisionError) as exc:
                log.info("report: %s importances not computed (%s)", name, exc)
                continue
        if any("too small" in str(w.message) for w in caught):  # PED-ANOVA then returns equal shares
            log.info("report: %s importances left out: too few trials", name)
            continue
        out[name] = shares
    return out


def importances_html(sweep_dir: Path, spec: Spec) -> str:
    found = importances(sweep_dir, spec)
    if not found:
        return ('<p class="empty">Not enough completed trials with varied hyperparameters for Optuna\'s '
                "importance evaluators yet.</p>")
    blocks = []
    for evaluator, shares in found.items():
        rows = sorted(shares.items(), key=lambda item: -item[1])
        height = 28 + 24 * len(rows)
        parts = []
        for i, (name, share) in enumerate(rows):
            y = 16 + i * 24
            width = max(1.0, share * 420)
            parts.append(f'<text x="190" y="{y + 14}" text-anchor="end">{html.escape(name)}</text>'
                         f'<rect class="bar" x="200" y="{y}" width="{width:.1f}" height="18" fill="#4e79a7">'
                         f"<title>{html.escape(name)}: {share:.3f}</title></rect>"
                         f'<text x="{206 + width:.1f}" y="{y + 14}">{share:.3f}</text>')
        blocks.append(f"<h3>{evaluator}</h3>" + charts.plot(parts, f"importances-{evaluator}", 700, height))
    return ("<p>Share of the variation in the objective each hyperparameter explains, over the study's "
            "completed trials (Optuna's evaluators).</p>" + "".join(blocks))


# ---------------------------------------------------------------------------------------------
# Tables.


def leaderboard_table(board: list[dict[str, Any]], spec: Spec) -> str:
    if not board:
        return '<p class="empty">No trials yet.</p>'
    params = [n for n in spec.search.space if any(n in row for row in board)]
    objectives = [c for c in board[0] if c.startswith("objective_") or c == results.PARETO]  # several objectives
    columns = ["trial_id", "status", *params, *objectives, "best_metric", "best_step", "reports", "tokens_seen",
               "optuna_state"]
    head = "".join(f'<th data-col="{i}">{html.escape(c)}</th>' for i, c in enumerate(columns))
    body = "".join("<tr>" + "".join(f'<td data-value="{html.escape(str(row.get(c)))}">'
                                    f'{html.escape(charts.label(row.get(c)))}</td>'
                                    for c in columns) + "</tr>" for row in board)
    return ("<p>Best first; click a column to sort.</p>"
            f'<div class="scroll"><table class="sortable" id="leaderboard-table"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


def final_html(final: dict[str, Any] | None, samples: list[dict[str, Any]], metric: str) -> str:
    if not final:
        return '<p class="empty">The sweep has not promoted a model yet.</p>'
    rows = results.ab_rows(final)
    figures = results.ab_figures(final, rows)
    parts = [f"<p>Trial {html.escape(str(final.get('trial_id')))} at step {final.get('step')}, on the whole "
             f"test split ({final.get('num_test_tokens')} tokens).</p>"]
    head = "".join(f"<th>{label}</th>" for _, label, _ in figures)
    body = "".join(f"<tr><th>{name}</th>" + "".join(
        f"<td>{fmt.format(row[key]) if key in row else '–'}</td>" for key, _, fmt in figures) + "</tr>"
        for name, row in rows)
    parts.append(f'<table id="ab-table"><thead><tr><th>model</th>{head}</tr></thead><tbody>{body}</tbody></table>')
    baseline = final.get("baseline")
    if isinstance(baseline, dict) and "tuning_beat_baseline" in baseline:
        line = results.baseline_verdict(baseline, metric)
        parts.append(f'<p id="baseline-verdict" data-like-for-like="{str(results.like_for_like(baseline)).lower()}">'
                     f"{html.escape(line[0].upper() + line[1:])}.</p>")
    selection = final.get("selection")
    if selection:
        verdict = (f"changed the choice from {selection['search_winner']} to {selection['chosen']}"
                   if selection["changed"] else "kept the search's choice")
        where = (f"by {selection['metric']} on {selection.get('prompts')} validation prompts" if selection.get("metric")
                 else "on the whole validation split")
        parts.append(f"<p>Re-evaluating the best {selection['top_k']} {html.escape(where)} {verdict}.</p>")
    if samples:
        models = [m for m in ("base", "baseline", "tuned") if any(m in s for s in samples)]
        head = "".join(f"<th>{c}</th>" for c in ("prompt", "reference", *models))
        body = "".join("<tr>" + "".join(f"<td>{html.escape(_one_line(str(s.get(c, ''))))}</td>"
                                        for c in ("prompt", "reference", *models)) + "</tr>" for s in samples)
        generation = final.get("generation", {})
        settings = ", ".join(f"{k} {v}" for k, v in generation.items())
        parts.append(f"<h3>Samples</h3><p>{html.escape(settings)}</p>"
                     f'<table id="samples-table"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>')
    return "".join(parts)


SPLIT_NAMES = ("train", "validation", "test")


def data_html(summary: dict[str, Any] | None) -> str:
    """The data summary: what each cleaning rule changed or dropped, tokens and blocks per split,
    packing efficiency, and a histogram of record lengths in tokens."""
    if not summary:
        return '<p class="empty">No data summary (data prepared by an older tuner, or not yet).</p>'
    cleaning = summary["cleaning"]
    rules = "".join(f"<tr><th>{html.escape(key.replace('_', ' '))}</th><td>{value}</td></tr>"
                    for key, value in cleaning.items())
    rows = "".join(f"<tr><th>{name}</th><td>{summary['records'][name]}</td><td>{summary['tokens'][name]}</td>"
                   f"<td>{summary['blocks'][name]}</td><td>{summary['packing_efficiency'][name]:.2%}</td></tr>"
                   for name in SPLIT_NAMES)
    return (f"<p>{html.escape(str(summary['source']))}: {html.escape(str(summary['split']))}; blocks of "
            f"{summary['block_size']} tokens.</p>"
            f'<table id="cleaning-table"><tbody>{rules}</tbody></table>'
            '<table id="splits-table"><thead><tr><th>split</th><th>records</th><th>tokens (with EOS)</th>'
            f"<th>blocks</th><th>packing efficiency</th></tr></thead><tbody>{rows}</tbody></table>"
            + length_histogram(summary["length_histogram"]))


def length_histogram(histogram: dict[str, Any]) -> str:
    """Bars of record counts per length bin (powers of two), all splits together."""
    bins = histogram["bins"]
    counts = [sum(histogram["counts"][s][i] for s in histogram["counts"]) for i in range(len(bins))]
    used = [i for i, c in enumerate(counts) if c]
    if not used:
        return ""
    shown = list(range(used[0], used[-1] + 1))
    top = max(counts)
    width = (WIDTH - PAD - 16) / len(shown)
    parts = [f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - 16}" y2="{HEIGHT - PAD}" class="axis"/>']
    for n, i in enumerate(shown):
        height = (HEIGHT - PAD - 24) * counts[i] / top
        x = PAD + n * width
        label = f"{bins[i]}+" if i == len(bins) - 1 else f"{bins[i]}–{bins[i + 1] - 1}" if bins[i + 1] - 1 > bins[i] \
            else str(bins[i])
        parts.append(f'<rect x="{x + 2:.1f}" y="{HEIGHT - PAD - height:.1f}" width="{width - 4:.1f}" '
                     f'height="{height:.1f}" fill="{PALETTE[0]}"><title>{label} tokens: {counts[i]} records'
                     f'</title></rect><text x="{x + width / 2:.1f}" y="{HEIGHT - PAD + 16}" '
                     f'text-anchor="middle" class="tick">{label}</text>')
    parts.append(f'<text x="{(PAD + WIDTH) / 2:.0f}" y="{HEIGHT - 14}" text-anchor="middle">record length '
                 f'(tokens)</text><text x="{PAD}" y="14">records (most: {top})</text>')
    return "<h3>Record lengths</h3>" + charts.plot(parts, "lengths")


def _one_line(text: str) -> str:
    """Line breaks shown as ⏎, runs of them once: a model that writes blank lines keeps its row short."""
    return re.sub(r"\s*\n[\s\n]*", " ⏎ ", text).strip()


# ---------------------------------------------------------------------------------------------
# The page.


def _section(key: str, title: str, content: str) -> str:
    return f'<section id="{key}"><h2>{title}</h2>{content}</section>'


STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1000px; color: #222; }
h1 { font-size: 22px; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 32px; }
svg.plot text { font-size: 11px; fill: #444; } .axis { stroke: #888; } .grid { stroke: #eee; }
.axis-name { font-weight: 600; } .tick { font-size: 10px; } .stop-key { color: #c00; font-weight: 700; }
table { border-collapse: collapse; margin: 8px 0; } th, td { border: 1px solid #ddd; padding: 3px 8px; }
th { background: #f6f6f6; } table.sortable th { cursor: pointer; } td { vertical-align: top; }
#samples-table td { max-width: 260px; font-size: 12px; word-break: break-all; }
.scroll { overflow-x: auto; } .empty { color: #777; font-style: italic; }
.curves label { margin: 0 16px 0 4px; } svg.plot text.rung-label { font-size: 10px; fill: #777; }
#curves-x-tokens:not(:checked) ~ #curves-tokens, #curves-x-steps:not(:checked) ~ #curves-steps { display: none; }
#baseline-verdict[data-like-for-like="false"] { color: #a04000; font-weight: 600; }
"""

SCRIPT = """
window.reportErrors = [];
window.addEventListener('error', function (e) { window.reportErrors.push(String(e.message)); });
document.addEventListener('DOMContentLoaded', function () {
  document.querySelectorAll('table.sortable').forEach(function (table) {
    table.querySelectorAll('th').forEach(function (th, col) {
      th.addEventListener('click', function () {
        var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
        var up = th.dataset.order !== 'asc'; th.dataset.order = up ? 'asc' : 'desc';
        rows.sort(function (a, b) {
          var x = a.cells[col].dataset.value, y = b.cells[col].dataset.value;
          var nx = parseFloat(x), ny = parseFloat(y);
          var c = (isNaN(nx) || isNaN(ny)) ? x.localeCompare(y) : nx - ny;
          return up ? c : -c;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
  var plots = document.querySelectorAll('svg.plot');
  document.body.dataset.plots = plots.length;
  var views = Array.prototype.slice.call(document.querySelectorAll('.curves .view'));
  document.body.dataset.curvesShown = views.filter(function (v) { return getComputedStyle(v).display !== 'none'; })
    .map(function (v) { return v.id; }).join(' ');
  document.body.dataset.rendered = 'true';
  document.body.dataset.jsErrors = window.reportErrors.length;
});
"""


def _page(spec: Spec, found: list[TrialRecord], body: str) -> str:
    done = sum(r.ended for r in found)
    title = f"tuner report: {html.escape(spec.name)}"
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{STYLE}</style><script>{SCRIPT}</script></head><body>"
            f"<h1>{title}</h1><p>{done} of {len(found)} trials ended; model "
            f"{html.escape(str(spec.model.name_or_path))}; metric {html.escape(spec.search.metric)} "
            f"({spec.search.mode}).</p>{body}</body></html>")


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
