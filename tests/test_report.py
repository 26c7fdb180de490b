"""report.html, opened in a real headless Chromium (Debian's `chromium`, installed by
scripts/setup-browser): every section rendered with its plots, no JavaScript errors, nothing fetched."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tuner import constants as C
from tuner import report
from tuner.pipeline import load_sweep_spec
from tuner.records import load_all as load_records

pytestmark = pytest.mark.integration


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


def test_report_renders_every_section_with_its_plots(tiny_sweep):
    page = tiny_sweep.paths["report"]
    dom, log = render(page)
    assert 'data-rendered="true"' in dom
    assert js_errors(dom, log) == []
    records = load_records(tiny_sweep.sweep_dir)
    reported = [r for r in records if r.history]
    curves = section(dom, "curves")
    assert curves.count('class="curve"') == len(reported) >= 4
    assert curves.count('class="asha-stop"') == sum(r.status == C.STOPPED_ASHA for r in records) >= 1
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


def test_report_is_self_contained(tiny_sweep):
    text = tiny_sweep.paths["report"].read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)  # no script, style or font fetched
    assert "@import" not in text and "url(" not in text


def test_a_script_error_on_the_page_is_caught(tiny_sweep, tmp_path):
    """The error check itself can fail: a page with a broken script is reported."""
    broken = tmp_path / "report.html"
    broken.write_text(tiny_sweep.paths["report"].read_text().replace(
        "</body>", "<script>window.thisFunctionDoesNotExist();</script></body>"))
    dom, log = render(broken)
    assert js_errors(dom, log)


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
    assert section(dom, "curves").count('class="curve"') >= 4


def test_report_command_rebuilds_it_and_status_points_to_it(tiny_sweep, capsys):
    import launch

    page = tiny_sweep.paths["report"]
    before = page.read_text()
    page.unlink()
    assert launch.main(["report", str(tiny_sweep.sweep_dir)]) == 0
    assert page.read_text() == before  # the same files give the same page
    assert launch.main(["status", str(tiny_sweep.sweep_dir)]) == 0
    assert f"report: {page}" in capsys.readouterr().out
