"""Line charts as inline SVG: the report needs no plotting library and no network.

One function, :func:`line_chart`: series of (x, y) points on linear or log axes, with
shaded bands (the scenario's segments, the stress steps) and dashed reference lines
(the SLO targets). Text is escaped; numbers are rounded to keep the file small.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from html import escape

PALETTE = ("#c0392b", "#d68910", "#2e86c1", "#28b463", "#7d3c98", "#566573")
LEFT, RIGHT, TOP, BOTTOM = 76, 20, 46, 46


@dataclass(frozen=True, slots=True)
class Series:
    name: str
    points: Sequence[tuple[float, float]]
    color: str
    dashed: bool = False
    width: float = 1.8
    right: bool = False  # drawn against the right-hand axis (``y2``)


@dataclass(frozen=True, slots=True)
class Axis:
    label: str
    log: bool = False
    fmt: Callable[[float], str] = field(default=lambda v: f"{v:,.6g}")


@dataclass(frozen=True, slots=True)
class Band:
    start: float
    end: float
    label: str


@dataclass(frozen=True, slots=True)
class RefLine:
    y: float
    label: str
    color: str


@dataclass
class _Scale:
    low: float
    high: float
    pixels_from: float
    pixels_to: float
    log: bool

    def __call__(self, value: float) -> float:
        low, high, value = self._t(self.low), self._t(self.high), self._t(value)
        share = (value - low) / (high - low) if high > low else 0.5
        return round(self.pixels_from + share * (self.pixels_to - self.pixels_from), 1)

    def _t(self, value: float) -> float:
        return math.log10(max(value, 1e-12)) if self.log else value


def nice_ticks(low: float, high: float, count: int = 6) -> list[float]:
    """Round-numbered ticks from at or below ``low`` to at or above ``high``."""
    if high <= low:
        return [low]
    raw = (high - low) / max(1, count - 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first, last = math.floor(low / step), math.ceil(high / step - 1e-9)
    return [round(k * step, 10) for k in range(first, last + 1)]


def log_ticks(low: float, high: float) -> list[float]:
    """1, 2, 5 × powers of ten inside [low, high]."""
    ticks = []
    for exponent in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1):
        for mantissa in (1, 2, 5):
            value = mantissa * 10.0**exponent
            if low <= value <= high:
                ticks.append(value)
    return ticks


def _extent(values: list[float], log: bool, refs: Sequence[float] = ()) -> tuple[float, float]:
    values = [v for v in [*values, *refs] if not log or v > 0]
    if not values:
        return (1.0, 10.0) if log else (0.0, 1.0)
    low, high = min(values), max(values)
    if log:
        return 10 ** math.floor(math.log10(low)), 10 ** math.ceil(math.log10(high))
    low = min(0.0, low)
    if high <= low:
        high = low + 1
    ticks = nice_ticks(low, high)
    return ticks[0], max(ticks[-1], high)


def line_chart(
    title: str,
    series: Sequence[Series],
    x: Axis,
    y: Axis,
    *,
    width: int = 1100,
    height: int = 300,
    bands: Sequence[Band] = (),
    refs: Sequence[RefLine] = (),
    y2: Axis | None = None,
) -> str:
    """``y2``: a second, linear axis on the right for the series marked ``right`` (its
    labels inside the plot's right edge)."""
    xs = [p[0] for s in series for p in s.points] + [b.end for b in bands]
    ys = [p[1] for s in series for p in s.points if not s.right]
    x_low, x_high = _extent(xs, x.log)
    y_low, y_high = _extent(ys, y.log, [r.y for r in refs])
    sx = _Scale(x_low, x_high, LEFT, width - RIGHT, x.log)
    sy = _Scale(y_low, y_high, height - BOTTOM, TOP, y.log)
    y2_range = _extent([p[1] for s in series for p in s.points if s.right], False)
    sy2 = _Scale(*y2_range, height - BOTTOM, TOP, False)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
        f'<text x="{LEFT}" y="20" font-size="14" font-weight="bold">{escape(title)}</text>',
        *_bands(bands, sx, height),
        *_grid(x, y, sx, sy, (x_low, x_high), (y_low, y_high), width, height),
        *_refs(refs, sy, width),
        *(_right_axis(y2, sy2, y2_range, width) if y2 else []),
        *(_polyline(s, sx, sy2 if s.right else sy) for s in series if s.points),
        *_legend(series, width),
        "</svg>",
    ]
    return "\n".join(parts)


def _bands(bands: Sequence[Band], sx: _Scale, height: int) -> list[str]:
    out = []
    for index, band in enumerate(bands):
        x0, x1 = sx(band.start), sx(band.end)
        fill = "#f4f6f7" if index % 2 == 0 else "#eaeded"
        out.append(f'<rect x="{x0}" y="{TOP}" width="{max(0.0, x1 - x0):.1f}" '
                   f'height="{height - TOP - BOTTOM}" fill="{fill}"/>')  # fmt: skip
        out.append(f'<text x="{x0 + 3}" y="{height - BOTTOM - 4}" font-size="10" '
                   f'fill="#566573">{escape(band.label)}</text>')  # fmt: skip
    return out


def _grid(
    x: Axis,
    y: Axis,
    sx: _Scale,
    sy: _Scale,
    x_range: tuple[float, float],
    y_range: tuple[float, float],
    width: int,
    height: int,
) -> list[str]:
    out = [f'<rect x="{LEFT}" y="{TOP}" width="{width - LEFT - RIGHT}" '
           f'height="{height - TOP - BOTTOM}" fill="none" stroke="#aab7b8"/>']  # fmt: skip
    x_ticks = log_ticks(*x_range) if x.log else nice_ticks(*x_range, count=10)
    for tick in x_ticks:
        px = sx(tick)
        out.append(f'<line x1="{px}" x2="{px}" y1="{TOP}" y2="{height - BOTTOM}" '
                   'stroke="#d5dbdb" stroke-width="0.6"/>')  # fmt: skip
        out.append(f'<text x="{px}" y="{height - BOTTOM + 15}" text-anchor="middle">'
                   f"{escape(x.fmt(tick))}</text>")  # fmt: skip
    for tick in log_ticks(*y_range) if y.log else nice_ticks(*y_range):
        py = sy(tick)
        out.append(f'<line x1="{LEFT}" x2="{width - RIGHT}" y1="{py}" y2="{py}" '
                   'stroke="#d5dbdb" stroke-width="0.6"/>')  # fmt: skip
        out.append(f'<text x="{LEFT - 6}" y="{py + 4}" text-anchor="end">'
                   f"{escape(y.fmt(tick))}</text>")  # fmt: skip
    out.append(f'<text x="{(LEFT + width - RIGHT) / 2}" y="{height - 8}" '
               f'text-anchor="middle">{escape(x.label)}</text>')  # fmt: skip
    out.append(f'<text x="14" y="{(TOP + height - BOTTOM) / 2}" text-anchor="middle" '
               f'transform="rotate(-90 14 {(TOP + height - BOTTOM) / 2})">'
               f"{escape(y.label)}</text>")  # fmt: skip
    return out


def _right_axis(y2: Axis, sy: _Scale, y_range: tuple[float, float], width: int) -> list[str]:
    out = [f'<text x="{width - RIGHT - 4}" y="{TOP - 6}" text-anchor="end" font-size="11">'
           f"{escape(y2.label)} →</text>"]  # fmt: skip
    for tick in nice_ticks(*y_range):
        out.append(f'<text x="{width - RIGHT - 4}" y="{sy(tick) + 4}" text-anchor="end" '
                   f'font-size="11" fill="#566573">{escape(y2.fmt(tick))}</text>')  # fmt: skip
    return out


def _refs(refs: Sequence[RefLine], sy: _Scale, width: int) -> list[str]:
    out = []
    for ref in refs:
        py = sy(ref.y)
        out.append(f'<line x1="{LEFT}" x2="{width - RIGHT}" y1="{py}" y2="{py}" '
                   f'stroke="{ref.color}" stroke-dasharray="6 4" stroke-width="1.2"/>')  # fmt: skip
        out.append(f'<text x="{width - RIGHT - 4}" y="{py - 4}" text-anchor="end" '
                   f'fill="{ref.color}" font-size="11">{escape(ref.label)}</text>')  # fmt: skip
    return out


SPARSE = 40  # series with at most this many points also get a dot per point


def _polyline(series: Series, sx: _Scale, sy: _Scale) -> str:
    points = " ".join(f"{sx(px)},{sy(py)}" for px, py in series.points)
    dash = ' stroke-dasharray="4 3"' if series.dashed else ""
    title = f"<title>{escape(series.name)}</title>"
    line = (f'<polyline fill="none" stroke="{series.color}" stroke-width="{series.width}"'
            f'{dash} points="{points}">{title}</polyline>')  # fmt: skip
    if len(series.points) > SPARSE:
        return line
    dots = "".join(f'<circle cx="{sx(px)}" cy="{sy(py)}" r="2.5" fill="{series.color}"/>'
                   for px, py in series.points)  # fmt: skip
    return line + dots


def _legend(series: Sequence[Series], width: int) -> list[str]:
    out, x = [], width - RIGHT
    for item in reversed(series):
        x -= 14 + 7 * len(item.name) + 16
        dash = ' stroke-dasharray="4 3"' if item.dashed else ""
        out.append(f'<line x1="{x}" x2="{x + 14}" y1="32" y2="32" stroke="{item.color}" '
                   f'stroke-width="2.5"{dash}/>')  # fmt: skip
        out.append(f'<text x="{x + 18}" y="36">{escape(item.name)}</text>')
    return out
