"""report.html, opened in a real headless Chromium (Debian's `chromium`, installed by
scripts/setup-browser): every section rendered with its plots, no JavaScript errors, nothing fetched.
The learning curves and the baseline verdict are also checked as HTML built from records written
here (fast, no Ray)."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import TINY
from tuner import constants as C
from tuner import layout, report
from tuner.data import read_prepared
from tuner.pipeline import load_sweep_spec
from tuner.plan import make_plan
from tuner.records import TrialRecord
from tuner.records import load_all as load_records
from tuner.records import save as save_record
from tuner.spec import Spec, load_spec

TRAIN_BLOCKS, BLOCK_SIZE = 1000, 64  # the fabricated sweep's train split: 64,000 tokens


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("chromium is not installed: run `bash scripts/setup-browser` (Debian's chromium package)")
    return path


def render(page: Path) -> tuple[str, str]:
    """The DOM after the page's scripts ran, and what the browser logged (console messages included)."""
    done = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
         "--dump-dom", page.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, done.stderr


def js_errors(dom: str, log: str) -> list[str]:
    body = re.search(r"<body[^>]*>", dom).group(0)
    counted = re.search(r'data-js-errors="(\d+)"', body)
    uncaught = [line for line in log.splitlines() if "Uncaught" in line or ":CONSOLE" in line and "rror" in line]
    return uncaught + ([] if counted and counted.group(1) == "0" else [f"page counted errors: {body}"])


def section(dom: str, key: str) -> str:
    match = re.search(rf'<section id="{key}">(.*?)</section>', dom, re.S)
    assert match, f"section {key} missing"
    return match.group(1)


def view(curves: str, name: str) -> str:
    """One view of the learning curves (`tokens` or `steps`)."""
    match = re.search(rf'<div class="view" id="curves-{name}">(.*?)</div>', curves, re.S)
    assert match, f"curves view {name} missing"
    return match.group(1)


def rung_lines(html: str) -> list[tuple[int, float]]:
    """(tokens, x) of each dashed rung line."""
    return [(int(t), float(x)) for t, x in re.findall(r'<line class="rung" data-tokens="(\d+)" x1="([\d.]+)"', html)]


def shown_curves(dom: str) -> str:
    """The curve views the browser displays, as the page's script found them."""
    return re.search(r'data-curves-shown="([^"]*)"', dom).group(1)


def xs(html: str, trial_id: str) -> list[float]:
    """The x coordinates of a trial's curve."""
    points = re.search(rf'data-trial="{trial_id}" points="([^"]+)"', html).group(1)
    return [float(point.split(",")[0]) for point in points.split()]


def fabricated(trial_id: str, tokens_per_step: int, losses: list[float], **fields) -> TrialRecord:
    """A trial that reported every 8,192 tokens; its steps follow from its batch (`tokens_per_step`)."""
    history = [{C.STEP: 8192 * k // tokens_per_step, C.TOKENS_SEEN: 8192 * k, C.EVAL_LOSS: loss}
               for k, loss in enumerate(losses, 1)]
    return TrialRecord(trial_id, history=history, reports=len(history), best_metric=min(losses),
                       tokens_seen=history[-1][C.TOKENS_SEEN], **fields)


TRIALS = [fabricated("small", 512, [5.0, 4.0, 3.5, 3.2], status=C.COMPLETED),  # batch 8 × 64 tokens
          fabricated("large", 2048, [5.5, 4.8], status=C.STOPPED_ASHA, rung=16384)]  # batch 32 × 64 tokens


def fabricated_sweep(tmp_path: Path, *overrides: str) -> Spec:
    """A sweep directory with the tiny preset's spec, two trial records and a data summary: all the
    report reads, with nothing run."""
    spec = load_spec(TINY, [f"storage={tmp_path / 'sweep'}", *overrides])
    for record in TRIALS:
        save_record(record, spec.sweep_dir)
    splits = ("train", "validation", "test")
    layout.write_json(spec.sweep_dir / layout.DATA_DIR / layout.DATA_SUMMARY, {
        "source": "fabricated", "split": "seeded", "block_size": BLOCK_SIZE, "cleaning": {"records_in": 10},
        "records": dict.fromkeys(splits, 1), "tokens": dict.fromkeys(splits, 1),
        "blocks": {"train": TRAIN_BLOCKS, "validation": 1, "test": 1}, "packing_efficiency": dict.fromkeys(splits, 1.0),
        "length_histogram": {"bins": [1, 2], "counts": {name: [1, 0] for name in splits}}})
    return spec


def test_curves_are_against_tokens_first_and_against_steps_beside():
    curves = report.learning_curves(TRIALS, C.EVAL_LOSS, rungs=[8192, 16384])
    toggle = re.findall(r'<input type="radio" name="curves-x" id="curves-x-(\w+)"( checked)?>', curves)
    assert toggle == [("tokens", " checked"), ("steps", "")]
    tokens, steps = view(curves, "tokens"), view(curves, "steps")
    assert "training tokens" in tokens and "training step" in steps
    for shown in (tokens, steps):
        assert shown.count('class="curve"') == 2 and shown.count('class="asha-stop"') == 1
    # After the same tokens, the same x: a trial with 4 times the batch lines up; by step it does not.
    assert xs(tokens, "large") == xs(tokens, "small")[:2]
    assert xs(steps, "large") != xs(steps, "small")[:2]
    assert [t for t, _ in rung_lines(tokens)] == [8192, 16384] and rung_lines(steps) == []


def test_rung_lines_are_at_the_plans_rungs_from_the_sweeps_train_tokens(tmp_path):
    spec = fabricated_sweep(tmp_path)
    rungs = make_plan(spec, TRAIN_BLOCKS * BLOCK_SIZE).rungs
    assert rungs == [16384, 32768, 65536]  # grace 16,384 tokens, halving, below max_t (2 epochs)
    axis = report.Axis(0, max(rungs), report.PAD, report.WIDTH - 16)
    expected = [(rung, pytest.approx(axis(rung), abs=0.06)) for rung in rungs]
    curves = section(report.write_report(spec).read_text(), "curves")
    assert rung_lines(view(curves, "tokens")) == expected
    assert "<title>ASHA rung: 32,768 tokens</title>" in curves and ">32,768</text>" in curves
    # A sweep older than the data summary: the train split's size from its one prepared.json.
    (spec.sweep_dir / layout.DATA_DIR / layout.DATA_SUMMARY).unlink()
    layout.write_json(spec.sweep_dir / layout.DATA_DIR / "0123abcd" / "prepared.json",
                      {"blocks": {"train": TRAIN_BLOCKS}, "block_size": BLOCK_SIZE})
    assert rung_lines(view(section(report.write_report(spec).read_text(), "curves"), "tokens")) == expected


def test_without_asha_the_curves_have_no_rungs(tmp_path):
    curves = section(report.write_report(fabricated_sweep(tmp_path, "scheduler=none")).read_text(), "curves")
    assert 'class="rung"' not in curves and "Dashed lines" not in curves
    assert view(curves, "tokens").count('class="curve"') == view(curves, "steps").count('class="curve"') == 2


BASELINE = {"trial_id": "base", "search_metric": 4.5, "tuning_beat_baseline": True, "tokens_seen": 65536,
            "step": 8, "winner_tokens_seen": 962560, "winner_step": 940, "perplexity": 90.0}


def test_the_final_evaluation_says_when_the_baseline_was_cut_short():
    final = {"trial_id": "win", "step": 940, "num_test_tokens": 1000, "perplexity": 60.0,
             "baseline": {**BASELINE, "status": C.STOPPED_ASHA}}
    assert ('<p id="baseline-verdict" data-like-for-like="false">Tuning beat the baseline (trial base, stopped '
            "by ASHA at 65,536 tokens, step 8, against a winner trained 962,560 tokens, 940 steps; search "
            "eval_loss 4.5000) — not like for like.</p>") in report.final_html(final, [], C.EVAL_LOSS)
    final["baseline"]["status"] = C.COMPLETED
    assert ('<p id="baseline-verdict" data-like-for-like="true">Tuning beat the baseline (trial base, completed, '
            "search eval_loss 4.5000).</p>") in report.final_html(final, [], C.EVAL_LOSS)


@pytest.mark.integration
def test_the_tokens_view_shows_first_and_the_steps_view_a_click_away(tmp_path):
    """In the browser: the CSS toggle shows one view, tokens until the steps button is checked."""
    page = report.write_report(fabricated_sweep(tmp_path))
    dom, log = render(page)
    assert js_errors(dom, log) == [] and shown_curves(dom) == "curves-tokens"
    steps = tmp_path / "steps.html"
    steps.write_text(page.read_text().replace('id="curves-x-tokens" checked', 'id="curves-x-tokens"')
                     .replace('id="curves-x-steps"', 'id="curves-x-steps" checked'))
    assert shown_curves(render(steps)[0]) == "curves-steps"


@pytest.mark.integration
def test_report_renders_every_section_with_its_plots(tiny_sweep):
    page = tiny_sweep.paths["report"]
    dom, log = render(page)
    assert 'data-rendered="true"' in dom
    assert js_errors(dom, log) == []
    records = load_records(tiny_sweep.sweep_dir)
    reported = [r for r in records if r.history]
    curves = section(dom, "curves")
    assert shown_curves(dom) == "curves-tokens"
    for name in ("tokens", "steps"):
        assert view(curves, name).count('class="curve"') == len(reported) >= 4
        assert view(curves, name).count('class="asha-stop"') == sum(r.status == C.STOPPED_ASHA for r in records) >= 1
    prepared = read_prepared(next((tiny_sweep.sweep_dir / "data").glob("*/prepared.json")).parent)
    rungs = make_plan(load_sweep_spec(tiny_sweep.sweep_dir), prepared.train_tokens()).rungs
    assert [t for t, _ in rung_lines(view(curves, "tokens"))] == rungs and rungs
    assert re.search(r'data-plot="importances-fANOVA"', section(dom, "importances"))
    assert section(dom, "importances").count('class="bar"') >= 2
    finite = [r for r in records if r.best_metric is not None and math.isfinite(r.best_metric)]
    assert section(dom, "parallel").count('class="pc-line"') == len(finite)
    board = section(dom, "leaderboard")
    assert board.count("<tr>") == len(records) + 1  # the header row too
    assert tiny_sweep.best.trial_id in board
    final = section(dom, "final")
    ab = re.search(r'<table id="ab-table">(.*?)</table>', final, re.S).group(1)
    assert re.findall(r"<tr><th>(\w+)</th><td>", ab) == ["base", "baseline", "tuned"]
    assert re.search(r'<table id="samples-table">.*?</table>', final, re.S).group(0).count("<tr>") == 4 + 1
    data = section(dom, "data")
    summary = json.loads((tiny_sweep.sweep_dir / "data" / "summary.json").read_text())
    assert f"<th>records in</th><td>{summary['cleaning']['records_in']}</td>" in data
    for name in ("train", "validation", "test"):
        assert f"<tr><th>{name}</th><td>{summary['records'][name]}</td>" in data
    assert data.count("<rect ") >= 3  # length bins with records
    assert 'data-plot="lengths"' in data


@pytest.mark.integration
def test_report_is_self_contained(tiny_sweep):
    text = tiny_sweep.paths["report"].read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)  # no script, style or font fetched
    assert "@import" not in text and "url(" not in text


@pytest.mark.integration
def test_a_script_error_on_the_page_is_caught(tiny_sweep, tmp_path):
    """The error check itself can fail: a page with a broken script is reported."""
    broken = tmp_path / "report.html"
    broken.write_text(tiny_sweep.paths["report"].read_text().replace(
        "</body>", "<script>window.thisFunctionDoesNotExist();</script></body>"))
    dom, log = render(broken)
    assert js_errors(dom, log)


@pytest.mark.integration
def test_report_of_a_sweep_not_yet_promoted(tiny_sweep, tmp_path):
    """While trials run there is no final evaluation yet: the page says so and still renders."""
    spec = load_sweep_spec(tiny_sweep.sweep_dir)
    copy = tmp_path / "running"
    copy.mkdir()
    for name in ("spec.yaml", "optuna.db"):
        shutil.copy(tiny_sweep.sweep_dir / name, copy / name)
    shutil.copytree(tiny_sweep.sweep_dir / "trials", copy / "trials")
    spec.storage = str(copy)
    page = report.write_report(spec)
    dom, log = render(page)
    assert js_errors(dom, log) == []
    assert "has not promoted a model yet" in section(dom, "final")
    assert view(section(dom, "curves"), "tokens").count('class="curve"') >= 4


@pytest.mark.integration
def test_report_command_rebuilds_it_and_status_points_to_it(tiny_sweep, capsys):
    import launch

    page = tiny_sweep.paths["report"]
    before = page.read_text()
    page.unlink()
    assert launch.main(["report", str(tiny_sweep.sweep_dir)]) == 0
    assert page.read_text() == before  # the same files give the same page
    assert launch.main(["status", str(tiny_sweep.sweep_dir)]) == 0
    assert f"report: {page}" in capsys.readouterr().out
