"""From raw patch scores to one frame score, the same way offline and live.

  raw patch scores --calibrate--> calibrated patch scores --aggregate--> frame score
  frame scores --causal smoothing--> smoothed score, compared with the threshold

Calibration comes from training data only (stored in the model card): per patch
position (a static camera's background differs from place to place) or global,
calibrated = (raw - loc) / scale with loc the median and scale the spread up to
a high quantile of normal training scores. So 0 is a typical normal patch and 1
is a patch as unusual as the top 1 % of normal ones, whatever the model.

A patch the cascade gate rejects (no motion) is confidently normal and counts 0.
"""

from __future__ import annotations

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
