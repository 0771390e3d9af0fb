"""Frame-level detection metrics: ROC, AUC and equal error rate."""

from __future__ import annotations

import numpy as np


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False-positive and true-positive rates over every distinct threshold.

    A frame is flagged when score >= threshold. The curve starts at (0, 0)
    (threshold +inf) and ends at (1, 1). Returns (fpr, tpr, thresholds).
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1).astype(bool)
    if scores.shape != labels.shape:
        raise ValueError(f"{scores.size} scores but {labels.size} labels")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores must be finite")
    positives, negatives = labels.sum(), (~labels).sum()
    if positives == 0 or negatives == 0:
        raise ValueError("ROC needs both normal and abnormal frames")
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    # One ROC point per distinct score: the last index of each run of ties.
    ends = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    tp = np.cumsum(labels)[ends]
    fp = (ends + 1) - tp
    fpr = np.r_[0.0, fp / negatives]
    tpr = np.r_[0.0, tp / positives]
    thresholds = np.r_[np.inf, scores[ends]]
    return fpr, tpr, thresholds


def auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Area under the ROC curve by the trapezoidal rule."""
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def eer(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Equal error rate: where the false-positive rate equals the miss rate (1 - tpr).

    Linearly interpolated between the two ROC points that bracket the crossing.
    """
    gap = fpr - (1.0 - tpr)  # rises from -1 at (0, 0) to +1 at (1, 1)
    i = int(np.flatnonzero(gap >= 0)[0])
    if gap[i] == 0:
        return float(fpr[i])
    t = -gap[i - 1] / (gap[i] - gap[i - 1])
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def minmax_per_video(scores: np.ndarray, videos: np.ndarray) -> np.ndarray:
    """Scores min-max normalised within each video. Non-causal: it uses the whole clip."""
    scores = np.asarray(scores, dtype=np.float64)
    out = np.empty_like(scores)
    for video in np.unique(videos):
        mask = videos == video
        lo, hi = scores[mask].min(), scores[mask].max()
        out[mask] = (scores[mask] - lo) / (hi - lo) if hi > lo else 0.0
    return out
