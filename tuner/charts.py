"""SVG charts drawn by hand: axes that map values to pixels, and a plot's frame.

`report.html` and `lr-find` draw with these, so the pages open from disk with no plotting library
and no network.
"""

from __future__ import annotations

import html
import math
from typing import Any, Callable

PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7",
           "#9c755f", "#bab0ac")
WIDTH, HEIGHT, PAD = 760, 360, 56


class Axis:
    """A linear or log map from data values to pixels, with round tick values."""

    def __init__(self, low: float, high: float, start: float, end: float, log_scale: bool = False):
        self.log = log_scale and low > 0
        f = math.log10 if self.log else float
        self.low, self.high = f(low), f(high)
        if self.high == self.low:
            self.low, self.high = self.low - 0.5, self.high + 0.5
        self.start, self.end = start, end

    def __call__(self, value: float) -> float:
        v = math.log10(value) if self.log else value
        return self.start + (v - self.low) / (self.high - self.low) * (self.end - self.start)

    def ticks(self, count: int = 5) -> list[float]:
        if self.log:
            return [10 ** e for e in range(math.ceil(self.low), math.floor(self.high) + 1)] or [10 ** self.low]
        span = self.high - self.low
        step = 10 ** math.floor(math.log10(span / count))
        step *= next(m for m in (1, 2, 5, 10) if span / (step * m) <= count)
        first = math.ceil(self.low / step) * step
        return [first + i * step for i in range(int((self.high - first) / step) + 1)]


def label(value: Any) -> str:
    """A tick or table value: floats to 4 significant digits."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def plot(content: list[str], name: str, width: int = WIDTH, height: int = HEIGHT) -> str:
    """An SVG element of class `plot`, named by `data-plot` for the page's script and tests."""
    return (f'<svg class="plot" data-plot="{name}" viewBox="0 0 {width} {height}" width="{width}" '
            f'height="{height}" xmlns="http://www.w3.org/2000/svg" role="img">' + "".join(content) + "</svg>")


def frame(x: Axis, y: Axis, x_label: str, y_label: str, x_fmt: Callable[[float], str] = label) -> list[str]:
    """The axes, ticks, grid lines and axis labels of a WIDTH x HEIGHT plot."""
    parts = [f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - 16}" y2="{HEIGHT - PAD}" class="axis"/>',
             f'<line x1="{PAD}" y1="16" x2="{PAD}" y2="{HEIGHT - PAD}" class="axis"/>']
    for tick in x.ticks():
        px = x(tick)
        parts.append(f'<line x1="{px:.1f}" y1="{HEIGHT - PAD}" x2="{px:.1f}" y2="{HEIGHT - PAD + 4}" class="axis"/>'
                     f'<text x="{px:.1f}" y="{HEIGHT - PAD + 16}" text-anchor="middle">{x_fmt(tick)}</text>')
    for tick in y.ticks():
        py = y(tick)
        parts.append(f'<line x1="{PAD}" y1="{py:.1f}" x2="{WIDTH - 16}" y2="{py:.1f}" class="grid"/>'
                     f'<text x="{PAD - 6}" y="{py + 4:.1f}" text-anchor="end">{label(tick)}</text>')
    parts.append(f'<text x="{(PAD + WIDTH) / 2:.0f}" y="{HEIGHT - 14}" text-anchor="middle">'
                 f'{html.escape(x_label)}</text>'
                 f'<text x="14" y="{HEIGHT / 2:.0f}" transform="rotate(-90 14 {HEIGHT / 2:.0f})" '
                 f'text-anchor="middle">{html.escape(y_label)}</text>')
    return parts
