"""From raw patch scores to one frame score, the same way offline and live.

  raw patch scores --calibrate--> calibrated patch scores --aggregate--> frame score
  frame score --count bands (optional)--> frame score calibrated for how many patches move
  frame scores --causal smoothing--> smoothed score, compared with the threshold

Calibration comes from training data only (stored in the model card): per patch
position (a static camera's background differs from place to place) or global,
calibrated = (raw - loc) / scale with loc the median and scale the spread up to
a high quantile of normal training scores. So 0 is a typical normal patch and 1
is a patch as unusual as the top 1 % of normal ones, whatever the model.

A patch the cascade gate rejects (no motion) is confidently normal and counts 0.

Count bands: the mean of the top patch scores runs higher when more patches
move (a crowd offers more chances of an unusual patch), so crowded normal
scenes raise most false alarms. With count bands in the card, a frame score is
calibrated again among training frames with about as many gate-passing
patches: the band's median and spread. The count is the frame's own, so this
is causal and the live scorer computes it the same way.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass

import numpy as np

from .patches import PatchSpec, motion_energy

AGGREGATIONS = ("max", "topk")
SMOOTHINGS = ("none", "mean", "ema")


@dataclass
class Calibration:
    mode: str  # "position" or "global"
    loc: np.ndarray  # (P,) for "position", (1,) for "global"
    scale: np.ndarray
    quantile: float = 0.99

    def __post_init__(self):
        if self.mode not in ("position", "global"):
            raise ValueError(f"calibration mode must be 'position' or 'global', got {self.mode!r}")
        self.loc = np.asarray(self.loc, dtype=np.float32).reshape(-1)
        self.scale = np.asarray(self.scale, dtype=np.float32).reshape(-1)
        if self.loc.shape != self.scale.shape or self.loc.size == 0:
            raise ValueError("calibration loc and scale must be non-empty and of equal length")
        if self.mode == "global" and self.loc.size != 1:
            raise ValueError("global calibration has one loc and one scale")
        if not np.all(np.isfinite(self.loc)) or not np.all(self.scale > 0):
            raise ValueError("calibration needs finite locs and positive scales")
        if not 0 < self.quantile < 1:
            raise ValueError(f"calibration quantile must be in (0, 1), got {self.quantile!r}")

    @classmethod
    def fit(
        cls, raw: np.ndarray, mode: str = "position", quantile: float = 0.99, min_scale_fraction: float = 0.25
    ) -> "Calibration":
        """Fit on raw scores (frames, positions) of normal data.

        Per-position scales are floored at `min_scale_fraction` of the global
        scale, so a spot where nothing ever changes (a wall) does not turn
        sensor noise into alarms.
        """
        raw = np.asarray(raw, dtype=np.float64)
        if raw.ndim != 2 or raw.shape[0] < 2:
            raise ValueError(f"calibration needs raw scores of shape (frames >= 2, positions), got {raw.shape}")
        global_loc = np.median(raw)
        global_scale = max(np.quantile(raw, quantile) - global_loc, 1e-12)
        if mode == "global":
            return cls("global", [global_loc], [global_scale], quantile)
        loc = np.median(raw, axis=0)
        scale = np.maximum(np.quantile(raw, quantile, axis=0) - loc, min_scale_fraction * global_scale)
        return cls("position", loc, scale, quantile)

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """Calibrate raw scores of all grid positions, shape (..., P)."""
        return ((raw - self.loc) / self.scale).astype(np.float32)

    def apply_at(self, raw: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Calibrate raw scores of the given grid positions only (gated frames)."""
        if self.mode == "global":
            return self.apply(raw)
        return ((raw - self.loc[positions]) / self.scale[positions]).astype(np.float32)

    def to_dict(self) -> dict:
        return {
            "mode": self.mode,
            "quantile": self.quantile,
            "loc": [float(v) for v in self.loc],
            "scale": [float(v) for v in self.scale],
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Calibration":
        return cls(d["mode"], d["loc"], d["scale"], d.get("quantile", 0.99))


@dataclass
class CountBands:
    """Frame-score calibration per band of the gate-passing patch count; band b holds edges[b-1] <= count < edges[b]."""

    edges: np.ndarray  # (B - 1,) increasing counts
    loc: np.ndarray  # (B,) median training frame score in each band
    scale: np.ndarray  # (B,) its spread up to `quantile`
    quantile: float = 0.99

    MIN_FRAMES = 100  # per band: a 99th percentile needs about this many frames

    def __post_init__(self):
        self.edges = np.asarray(self.edges, dtype=np.float64).reshape(-1)
        self.loc = np.asarray(self.loc, dtype=np.float64).reshape(-1)
        self.scale = np.asarray(self.scale, dtype=np.float64).reshape(-1)
        if self.loc.size == 0 or self.loc.shape != self.scale.shape or self.edges.size != self.loc.size - 1:
            raise ValueError("count bands need B locs and scales and B - 1 edges")
        if np.any(np.diff(self.edges) <= 0):
            raise ValueError("count band edges must increase")
        if not np.all(np.isfinite(self.loc)) or not np.all(self.scale > 0):
            raise ValueError("count bands need finite locs and positive scales")
        if not 0 < self.quantile < 1:
            raise ValueError(f"count band quantile must be in (0, 1), got {self.quantile!r}")

    @classmethod
    def fit(
        cls,
        scores: np.ndarray,
        counts: np.ndarray,
        bands: int = 5,
        quantile: float = 0.99,
        min_scale_fraction: float = 0.25,
    ) -> "CountBands":
        """Fit on the frame scores of normal training frames and their gate-passing patch counts.

        Edges are quantiles of the counts (counts that occur); an edge that would leave a band with
        fewer than MIN_FRAMES frames is dropped, so few or tied counts give fewer
        bands (one band: a plain frame-score calibration). Scales are floored at
        `min_scale_fraction` of the all-frames scale, so a band of near-constant
        scores (e.g. empty scenes) does not turn small changes into alarms.
        """
        scores, counts = np.asarray(scores, np.float64), np.asarray(counts, np.float64)
        if scores.shape != counts.shape or scores.ndim != 1 or len(scores) < 2:
            raise ValueError("count bands need one score and one count per frame, at least 2 frames")
        edges: list[float] = []
        for edge in np.unique(np.quantile(counts, np.arange(1, bands) / bands, method="higher")):
            lower = edges[-1] if edges else -np.inf
            below, above = ((counts >= lower) & (counts < edge)).sum(), (counts >= edge).sum()
            if below >= cls.MIN_FRAMES and above >= cls.MIN_FRAMES:
                edges.append(float(edge))
        band_of = np.digitize(counts, edges)
        in_band = [scores[band_of == b] for b in range(len(edges) + 1)]
        loc = np.array([np.median(band) for band in in_band])
        spread = np.array([np.quantile(band, quantile) for band in in_band]) - loc
        floor = max(min_scale_fraction * (np.quantile(scores, quantile) - np.median(scores)), 1e-12)
        return cls(edges, loc, np.maximum(spread, floor), quantile)

    def band(self, count: int) -> int:
        return int(np.digitize(count, self.edges))

    def apply(self, score: float, count: int) -> float:
        band = self.band(count)
        return float((score - self.loc[band]) / self.scale[band])

    def level(self, value: float, count: int) -> float:
        """The aggregated score that `apply` maps to `value` for a frame with `count` gate-passing patches."""
        band = self.band(count)
        return float(self.loc[band] + value * self.scale[band])

    def to_dict(self) -> dict:
        return {
            "quantile": self.quantile,
            "edges": [float(v) for v in self.edges],
            "loc": [float(v) for v in self.loc],
            "scale": [float(v) for v in self.scale],
        }

    @classmethod
    def from_dict(cls, d: dict) -> "CountBands":
        return cls(d["edges"], d["loc"], d["scale"], d.get("quantile", 0.99))


@dataclass
class ScoringSettings:
    """The operating point: how patch scores become an alarm. Stored in the card, overridable in config."""

    aggregation: str = "max"  # max over patches, or mean of the top_k
    top_k: int = 3
    smoothing: str = "mean"  # causal: moving mean over the last `window` frames, or EMA
    window: int = 3  # frames; chosen on the cross-validated proxy (README)
    alpha: float = 0.3  # EMA weight of the newest frame
    threshold: float = 1.0  # on the smoothed frame score

    def __post_init__(self):
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}")
        if self.smoothing not in SMOOTHINGS:
            raise ValueError(f"smoothing must be one of {SMOOTHINGS}, got {self.smoothing!r}")
        if self.top_k < 1 or self.window < 1 or not 0 < self.alpha <= 1:
            raise ValueError("top_k and window must be >= 1 and alpha in (0, 1]")
        if not math.isfinite(self.threshold):
            raise ValueError(f"threshold must be a finite number, got {self.threshold!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ScoringSettings":
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown scoring settings: {sorted(unknown)}")
        return cls(**d)


def aggregate(calibrated: np.ndarray, settings: ScoringSettings) -> float:
    """One frame score from the calibrated scores of all its patches."""
    if calibrated.size == 0:
        return 0.0
    if settings.aggregation == "max" or settings.top_k >= calibrated.size:
        return float(calibrated.max()) if settings.aggregation == "max" else float(calibrated.mean())
    top = np.partition(calibrated, calibrated.size - settings.top_k)[-settings.top_k :]
    return float(top.mean())


def frame_score(calibrated: np.ndarray, active: int, settings: ScoringSettings, bands: CountBands | None) -> float:
    """The frame score compared (after smoothing) with the threshold: aggregated, then count-band calibrated."""
    score = aggregate(calibrated, settings)
    return score if bands is None else bands.apply(score, active)


class CausalSmoother:
    """Smooths a frame-score stream using only the current and past frames."""

    def __init__(self, settings: ScoringSettings):
        self.settings = settings
        self._recent: deque[float] = deque(maxlen=settings.window)
        self._ema: float | None = None

    def reset(self) -> None:
        self._recent.clear()
        self._ema = None

    def update(self, score: float) -> float:
        method = self.settings.smoothing
        if method == "none":
            return score
        if method == "mean":
            self._recent.append(score)
            return float(sum(self._recent) / len(self._recent))
        self._ema = score if self._ema is None else self.settings.alpha * score + (1 - self.settings.alpha) * self._ema
        return self._ema


def smooth_series(scores: np.ndarray, settings: ScoringSettings) -> np.ndarray:
    smoother = CausalSmoother(settings)
    return np.array([smoother.update(float(s)) for s in scores], dtype=np.float64)


def gate_mask(patches: np.ndarray, spec: PatchSpec, gate: dict | None) -> np.ndarray:
    """Which patches the cascade's first stage passes on to the network (all, without a gate)."""
    if not gate:
        return np.ones(len(patches), dtype=bool)
    return passes_gate(motion_energy(patches, spec), gate)


def passes_gate(energy: np.ndarray, gate: dict | None) -> np.ndarray:
    """`gate_mask` from motion energies already computed."""
    if not gate:
        return np.ones(np.shape(energy), dtype=bool)
    return energy >= gate["motion_threshold"]


def calibrated_frame(raw_active: np.ndarray, active: np.ndarray, calibration: Calibration) -> np.ndarray:
    """Calibrated scores of every grid position of a frame; gated-out positions count 0."""
    calibrated = np.zeros(active.shape[0], dtype=np.float32)
    calibrated[active] = calibration.apply_at(raw_active, np.flatnonzero(active))
    return calibrated
