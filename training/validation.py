"""Pseudo-anomaly validation on held-out normal training clips.

Anomaly detectors cannot be tuned on the test set, and training data has no
anomalies. This proxy makes some, from training data alone: in a random box
around one moving person, the past frames are replaced by frames further back
(t - speedup*j instead of t - j), so that one person appears to move `speedup`
times faster than everyone else: a stand-in for a cyclist or skateboarder among
walkers. Each held-out frame is scored twice, as it is and with one sped-up
person, and the frame-level EER/AUC of telling them apart is the validation
figure used to choose hyperparameters (see README).
"""

from __future__ import annotations

import os

import cv2
import numpy as np

from streamer.metrics import auc, eer, roc_curve
from streamer.model import PatchModel
from streamer.patches import PatchExtractor, extract_patches, patches_from_frames
from streamer.scoring import ScoringSettings, aggregate, calibrated_frame, gate_mask
from streamer.sources import FolderSource

MOVING_DIFF = 4.0  # mean |frame difference| marking a patch as holding a moving person


def _moving_patches(previous: np.ndarray, current: np.ndarray, size: int, stride: int) -> np.ndarray:
    diff = extract_patches(cv2.absdiff(current, previous)[None], size, stride)
    return np.flatnonzero(diff.reshape(len(diff), -1).mean(axis=1) >= MOVING_DIFF)


def speed_proxy(
    model: PatchModel,
    folders: list[os.PathLike],
    speedup: int = 2,
    box: int = 48,
    seed: int = 0,
    settings: ScoringSettings | None = None,
) -> dict:
    """Frame-level EER and AUC of normal vs locally sped-up frames of the given clips.

    EER and AUC are None when the clips hold nobody moving to speed up.
    """
    card = model.card
    spec, settings = card.patch, settings or card.scoring
    history = max(spec.history, 1)
    rng = np.random.default_rng(seed)
    scores, labels = [], []
    for folder in folders:
        extractor = PatchExtractor(spec)
        frames = [extractor.prepare(f.image) for f in FolderSource(folder)]
        h, w = frames[0].shape
        boxes = extractor.boxes((h, w))
        samples = []
        for t in range(speedup * history, len(frames)):
            normal = frames[t - spec.history : t + 1] if spec.history else [frames[t]]
            samples.append((patches_from_frames(normal, spec), 0))
            moving = _moving_patches(frames[t - 1], frames[t], spec.size, spec.stride)
            if not len(moving):
                continue
            x, y, bw, bh = boxes[rng.choice(moving)]
            cy, cx = y + bh // 2, x + bw // 2
            y0, y1 = max(0, cy - box // 2), min(h, cy + box // 2)
            x0, x1 = max(0, cx - box // 2), min(w, cx + box // 2)
            faster = []
            for j in range(spec.history, 0, -1):
                past = frames[t - j].copy()
                past[y0:y1, x0:x1] = frames[t - speedup * j][y0:y1, x0:x1]
                faster.append(past)
            samples.append((patches_from_frames(faster + [frames[t]], spec), 1))
        active = [gate_mask(p, spec, card.gate) for p, _ in samples]
        raw = model.raw_scores(np.concatenate([p[a] for (p, _), a in zip(samples, active)]))
        offset = 0
        for (patches, label), a in zip(samples, active):
            n = int(a.sum())
            scores.append(aggregate(calibrated_frame(raw[offset : offset + n], a, card.calibration), settings))
            labels.append(label)
            offset += n
    result = {"speedup": speedup, "frames": len(labels), "anomalous": int(np.sum(labels)), "eer": None, "auc": None}
    if 0 < result["anomalous"] < len(labels):
        fpr, tpr, _ = roc_curve(np.array(scores), np.array(labels))
        result.update(eer=eer(fpr, tpr), auc=auc(fpr, tpr))
    return result
