"""An event's score over time against the threshold, as the numbers an inline SVG needs (no script, no library)."""

from __future__ import annotations

import math

WIDTH, HEIGHT = 760, 240
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 12, 30  # margins for the axes' labels


def _ticks(low: float, high: float, count: int = 6) -> list[float]:
    """Round-numbered ticks covering [low, high]."""
    span = max(high - low, 1e-9)
    raw = span / count
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 5, 10) if m * step >= raw)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def score_plot(trace: dict, start: float, end: float | None) -> dict | None:
    """Polylines of the smoothed and raw score, the threshold line, the event's span and the axes' ticks.

    `trace` as `EventStore.trace` gives it; times are seconds from the event's start (`start`, capture time).
    """
    frames = trace["frames"] if trace else []
    if len(frames) < 2:
        return None
    threshold = trace["threshold"]
    times = [t - start for t, _, _ in frames]
    top = max(max(s for _, s, _ in frames), max(r for _, _, r in frames), threshold) * 1.1
    bottom = min(0.0, min(s for _, s, _ in frames), min(r for _, _, r in frames))
    t0, t1 = times[0], max(times[-1], times[0] + 1e-3)
    inner_w, inner_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(t: float) -> float:
        return LEFT + (t - t0) / (t1 - t0) * inner_w

    def y(v: float) -> float:
        return TOP + (top - v) / (top - bottom) * inner_h

    def line(values: list[float]) -> str:
        return " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in zip(times, values))

    peak = max(range(len(frames)), key=lambda i: frames[i][1])
    span_end = (end - start) if end is not None else times[-1]
    return {
        "width": WIDTH,
        "height": HEIGHT,
        "left": LEFT,
        "right": WIDTH - RIGHT,
        "top": TOP,
        "bottom": HEIGHT - BOTTOM,
        "smoothed": line([s for _, s, _ in frames]),
        "raw": line([r for _, _, r in frames]),
        "threshold_y": round(y(threshold), 1),
        "threshold": threshold,
        "span": (round(x(max(0.0, t0)), 1), round(x(min(span_end, t1)), 1)),
        "peak": (round(x(times[peak]), 1), round(y(frames[peak][1]), 1), frames[peak][1]),
        "x_ticks": [(round(x(t), 1), f"{t:g}") for t in _ticks(t0, t1)],
        "y_ticks": [(round(y(v), 1), f"{v:g}") for v in _ticks(bottom, top, 4)],
    }
