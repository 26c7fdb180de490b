"""The live view of a sweep: a header (trials, best, tokens against the budget, ETA) and one row per
running or recent trial, read from the sweep directory alone.

The driver shows it while its trials run (`sweep`, `resume`) and `tuner status --watch` shows the
same from another terminal or machine: both read the trial records the ledger writes, so watching
never disturbs the driver. On a terminal the view is a `rich` table redrawn every few seconds, log
lines scrolling above it; without one (a `ray job` log, CI) it is one plain progress line a minute
between the event lines.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tuner import constants as C
from tuner import hyperparams, lock, records, space
from tuner.interrupt import format_seconds
from tuner.plan import Plan
from tuner.records import TrialRecord
from tuner.spec import Spec, parse_duration

log = logging.getLogger("tuner")
REFRESH_S = 2.0  # the terminal view's redraw interval
PLAIN_EVERY_S = 60.0  # without a terminal: one progress line this often
RECENT = 6  # ended trials kept in the table below the running ones
NO_DRIVER = "no driver running"


@dataclass
class View:
    """What the view shows, computed from the records at one instant."""

    name: str
    metric: str
    elapsed_s: float
    finished: int
    running: int
    pending: int
    total: int
    best: TrialRecord | None
    tokens: int
    budget_tokens: int | None
    tokens_per_s: float | None
    eta_s: float | None
    time_left_s: float | None
    driver: str
    rows: list[dict[str, Any]] = field(default_factory=list)


def build(spec: Spec, plan: Plan | None, found: list[TrialRecord], started_at: float, now: float,
          driver: str = "") -> View:
    """The view of `found` (the sweep's records) for a driver run that started at `started_at`."""
    ended = [r for r in found if r.ended]
    running = [r for r in found if not r.ended and r.status == C.RUNNING]
    total = max(plan.num_samples if plan else spec.search.num_samples, len(found))
    tokens = sum(r.tokens_seen for r in found)
    rate = tokens_per_second(found, started_at, now)
    max_t = plan.max_t if plan else None
    left = None
    if max_t is not None:  # every unfinished trial trained to max_t: ASHA usually stops most sooner
        left = sum(max(max_t - r.tokens_seen, 0) for r in found if not r.ended) + max_t * (total - len(found))
    budget = parse_duration(spec.search.time_budget) if spec.search.time_budget else None
    return View(
        name=spec.name, metric=spec.search.metric, elapsed_s=now - started_at, finished=len(ended),
        running=len(running), pending=total - len(ended) - len(running), total=total,
        best=records.best_of(found, spec.search.mode), tokens=tokens,
        budget_tokens=plan.budget_tokens if plan else None, tokens_per_s=rate,
        eta_s=left / rate if left is not None and rate else None,
        time_left_s=max(budget - (now - started_at), 0.0) if budget else None, driver=driver,
        rows=[row(r, spec, plan) for r in shown(found)])


def tokens_per_second(found: list[TrialRecord], started_at: float, now: float) -> float | None:
    """Training tokens reported since this driver run started, per second of it."""
    trained = 0
    for record in found:
        before = 0
        for report in record.history:
            tokens = report.get(C.TOKENS_SEEN) or 0
            if (report.get("reported_at") or 0) >= started_at:
                trained += max(tokens - before, 0)
            before = tokens
    seconds = now - started_at
    return trained / seconds if trained and seconds > 0 else None


def shown(found: list[TrialRecord]) -> list[TrialRecord]:
    """The running trials, then the most recently ended ones."""
    running = sorted((r for r in found if not r.ended and r.status == C.RUNNING), key=lambda r: r.started_at or 0)
    ended = sorted((r for r in found if r.ended), key=lambda r: r.ended_at or 0, reverse=True)
    return running + ended[:RECENT]


def row(record: TrialRecord, spec: Spec, plan: Plan | None) -> dict[str, Any]:
    searched = [k for k in space.distributions(spec) if k in record.params]
    last = next((h.get(spec.search.metric) for h in reversed(record.history)
                 if records.finite(h.get(spec.search.metric))), None)
    return {"trial": record.trial_id, "status": record.status,
            "values": " ".join(f"{hyperparams.short_name(k)}={short(record.params[k])}" for k in searched),
            "tokens": record.tokens_seen, "last": last, "best": record.best_metric, "rung": rung_of(record, plan)}


def rung_of(record: TrialRecord, plan: Plan | None) -> str:
    """The ASHA rung a trial was stopped at, or the highest one it has passed (of how many)."""
    if plan is None or not plan.rungs:
        return "-"
    if record.rung is not None:
        return f"stopped at {plan.rungs.index(record.rung) + 1 if record.rung in plan.rungs else '?'}"
    passed = sum(record.tokens_seen >= r for r in plan.rungs)
    return f"{passed}/{len(plan.rungs)}"


def short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def count(value: float | None) -> str:
    """Tokens as people read them: 950, 12.3k, 4.1M, 2.0B."""
    if value is None:
        return "?"
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.1f}{unit}"
    return f"{value:.0f}"


def metric(value: float | None) -> str:
    return f"{value:.4f}" if records.finite(value) else "-"


def header_lines(view: View) -> list[str]:
    best = (f"best {view.metric} {metric(view.best.best_metric)} ({view.best.trial_id})" if view.best
            else f"best {view.metric}: none yet")
    budget = f" of {count(view.budget_tokens)} budget" if view.budget_tokens else ""
    share = f" ({view.tokens / view.budget_tokens:.0%})" if view.budget_tokens else ""
    speed = f"{count(view.tokens_per_s)} tok/s" if view.tokens_per_s else "tok/s: measuring"
    eta = f"ETA ≤ {format_seconds(view.eta_s)}" if view.eta_s is not None else "ETA: measuring"
    left = f" · time budget left {format_seconds(view.time_left_s)}" if view.time_left_s is not None else ""
    driver = f" · {view.driver}" if view.driver else ""
    return [f"sweep {view.name} · elapsed {format_seconds(view.elapsed_s)}{driver}",
            f"trials: {view.finished}/{view.total} finished · {view.running} running · {view.pending} pending · {best}",
            f"tokens: {count(view.tokens)}{budget}{share} · {speed} · {eta}{left}"]


def plain(view: View) -> str:
    """The one-line progress of a run without a terminal."""
    return "progress: " + " | ".join(line.replace(" · ", ", ") for line in header_lines(view)[1:])


def render(view: View):
    """The header and the trial table as one `rich` renderable."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table(expand=False, show_edge=False, pad_edge=False, header_style="bold")
    columns: tuple[tuple[str, Literal["left", "right"]], ...] = (
        ("trial", "left"), ("status", "left"), ("values", "left"), ("tokens", "right"), ("last", "right"),
        ("best", "right"), ("rung", "right"))
    for name, justify in columns:
        table.add_column(name, justify=justify, no_wrap=name != "values")
    for r in view.rows:
        style = "green" if r["status"] == C.RUNNING else ("dim" if r["status"] != C.COMPLETED else "")
        table.add_row(r["trial"], r["status"], r["values"], count(r["tokens"]), metric(r["last"]),
                      metric(r["best"]), r["rung"], style=style)
    return Group(*(Text(line) for line in header_lines(view)), table)


# ---------------------------------------------------------------------------------------------
# Showing it: in the driver while trials run, and in `status --watch`.


class Source:
    """Where a view's numbers come from: the sweep directory, refreshed before each read."""

    def __init__(self, spec: Spec, plan: Plan | None, started_at: float, folder: Path | None = None,
                 refresh: Callable[[], object] | None = None):
        self.spec, self.plan, self.started_at, self.refresh = spec, plan, started_at, refresh
        self.folder = folder or spec.sweep_dir  # a bucket's records are fetched into a folder of their own

    def view(self) -> View:
        if self.refresh is not None:
            self.refresh()
        holder = lock.read_holder(self.folder)
        driver = f"driver pid {holder.pid} on {holder.host}" if holder else NO_DRIVER
        started = holder.started_at if holder else self.started_at
        found = records.load_all(self.folder, self.spec.location)
        return build(self.spec, self.plan, found, started, time.time(), driver)


def is_terminal(stream=None) -> bool:
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


@contextlib.contextmanager
def showing(source: Source, terminal: bool | None = None) -> Iterator[None]:
    """While the block runs: the terminal view redrawn every REFRESH_S, or a progress line every
    PLAIN_EVERY_S. A view that fails to read is skipped, never fatal to the sweep."""
    terminal = is_terminal() if terminal is None else terminal
    if terminal:
        with _terminal(source):
            yield
        return
    with _in_background(_plain_loop, source, name="tuner-progress"):
        yield


@contextlib.contextmanager
def _in_background(loop: Callable[..., None], *args: Any, name: str) -> Iterator[None]:
    """`loop(*args, stop)` on a daemon thread while the block runs; told to stop, and joined, after."""
    stop = threading.Event()
    thread = threading.Thread(target=loop, args=(*args, stop), name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def _plain_loop(source: Source, stop: threading.Event) -> None:
    while not stop.wait(PLAIN_EVERY_S):
        with contextlib.suppress(Exception):
            log.info("%s", plain(source.view()))


@contextlib.contextmanager
def _terminal(source: Source) -> Iterator[None]:
    """A rich Live display on stderr; our log lines (and anything printed) scroll above it."""
    from rich.console import Console
    from rich.live import Live

    console = Console(file=sys.stderr)
    with Live(console=console, auto_refresh=False, redirect_stdout=True, redirect_stderr=True,
              transient=False) as display:
        streams = _follow_stderr()
        try:
            with _in_background(_redraw, source, display, name="tuner-live"):
                yield
        finally:  # the last view stays on the screen, however the block ended
            with contextlib.suppress(Exception):
                display.update(render(source.view()), refresh=True)
            _restore_streams(streams)


def _redraw(source: Source, display, stop: threading.Event) -> None:
    while True:
        with contextlib.suppress(Exception):
            display.update(render(source.view()), refresh=True)
        if stop.wait(REFRESH_S):
            return


def _follow_stderr() -> list[tuple[logging.StreamHandler, Any]]:
    """Point the log handlers that write to the terminal at Live's stderr (it prints them above the
    table); returns what to put back."""
    moved = []
    for logger in (logging.getLogger(), log):
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler) \
                    and getattr(handler.stream, "isatty", lambda: False)():
                moved.append((handler, handler.setStream(sys.stderr)))
    return moved


def _restore_streams(moved: list[tuple[logging.StreamHandler, Any]]) -> None:
    for handler, stream in moved:
        handler.setStream(stream)


def watch(source: Source, once: bool = False) -> int:
    """`tuner status --watch`: the view until the sweep has no driver and no running trial, or Ctrl-C."""
    terminal = is_terminal(sys.stdout)
    if not terminal:
        while True:
            view = source.view()
            print(plain(view), flush=True)
            if once or _over(view):
                return 0
            time.sleep(PLAIN_EVERY_S)
    from rich.console import Console
    from rich.live import Live

    with Live(console=Console(), auto_refresh=False) as display:
        try:
            while True:
                view = source.view()
                display.update(render(view), refresh=True)
                if once or _over(view):
                    return 0
                time.sleep(REFRESH_S)
        except KeyboardInterrupt:
            return 0


def _over(view: View) -> bool:
    """No driver holds the sweep: nothing will change until one does."""
    return view.driver == NO_DRIVER
