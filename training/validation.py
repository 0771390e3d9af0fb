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
from collections import deque
from typing import Iterable, Iterator

import cv2
import numpy as np

from streamer.metrics import auc, eer, roc_curve
from streamer.model import PatchModel
from streamer.patches import PatchExtractor, extract_patches, motion_energy, patches_from_frames
from streamer.scoring import ScoringSettings, calibrated_frame, frame_score, passes_gate, smooth_series
from streamer.sources import FolderSource

MOVING_DIFF = 4.0  # mean |frame difference| marking a patch as holding a moving person
CHUNK_SAMPLES = 64  # samples scored together: a bounded batch for the network


def _moving_patches(previous: np.ndarray, current: np.ndarray, size: int, stride: int) -> np.ndarray:
    diff = extract_patches(cv2.absdiff(current, previous)[None], size, stride)
    return np.flatnonzero(diff.reshape(len(diff), -1).mean(axis=1) >= MOVING_DIFF)


def proxy_frame_scores(
    model: PatchModel, segments: Iterable, speedup: int = 2, box: int = 48, seed: int = 0
) -> list[dict[int, dict[int, float]]]:
    """Per segment: {frame t: {0: score as it is, 1: score with one person sped up}} (1 only where someone moves).

    Scores are the card's aggregated, calibrated frame scores before temporal smoothing.
    """
    return _proxy_draws(model, segments, speedup, box, [seed])[0]


def _proxy_draws(
    model: PatchModel, segments: Iterable, speedup: int, box: int, seeds: list[int]
) -> list[list[dict[int, dict[int, float]]]]:
    """`proxy_frame_scores` for each seed in one pass: the frames are read and their plain patches scored once."""
    return proxy_scores_with(model.card, proxy_samples(model, segments, speedup, box, seeds), len(seeds))


def enlarge_into(frame: np.ndarray, region: np.ndarray, cy: int, cx: int, zoom: float) -> None:
    """Paste `region` scaled by `zoom` into `frame`, centred on (cy, cx), clipped at the frame's edges."""
    big = cv2.resize(region, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_LINEAR)
    top, left = cy - big.shape[0] // 2, cx - big.shape[1] // 2
    t0, l0 = max(0, top), max(0, left)
    t1, l1 = min(frame.shape[0], top + big.shape[0]), min(frame.shape[1], left + big.shape[1])
    frame[t0:t1, l0:l1] = big[t0 - top : t1 - top, l0 - left : l1 - left]


def proxy_samples(
    model: PatchModel,
    segments: Iterable,
    speedup: int,
    box: int,
    seeds: list[int],
    gate: bool = True,
    zoom: float = 1.0,
) -> Iterator[Iterator[tuple]]:
    """Per segment, lazily: (frame t, draw index or None for the frame as it is, motion energy per patch, raw scores).

    `segments`: frame folders, or iterables of grayscale frames (consecutive
    frames of one recording). Each segment's samples come as an iterator, to be
    read before the next segment's; a segment's frames are read one at a time
    and kept only while a stand-in needs them, and patches are scored
    CHUNK_SAMPLES samples at a time, so memory stays flat however long the
    segments. (Callers that go over the samples more than once keep them:
    `[list(s) for s in proxy_samples(...)]`.)

    The expensive part of the proxy (optical flow, the network), kept apart so
    that other calibrations, gates and frame-score settings can be tried on the
    same raw scores (`proxy_scores_with`). Raw scores are NaN where the card's
    gate kept the patch from the network; with `gate=False` every patch is scored.

    With `zoom` > 1 the box's content is also enlarged that much, in the
    current frame and the past ones alike: a stand-in that covers more ground
    and, in pixels, moves `zoom` times faster (a cart or a cyclist nearer the
    camera), where the plain speed-up changes how fast one walker moves but
    hardly how many patches move.
    """
    rngs = [np.random.default_rng(seed) for seed in seeds]
    for segment in segments:
        images = (f.image for f in FolderSource(segment)) if isinstance(segment, (str, os.PathLike)) else segment
        yield _segment_samples(model, images, speedup, box, rngs, gate, zoom)


def _segment_samples(model, images: Iterable[np.ndarray], speedup, box, rngs, gate, zoom) -> Iterator[tuple]:
    card = model.card
    sampling_gate = card.gate if gate else None
    spec = card.patch
    history = max(spec.history, 1)
    extractor = PatchExtractor(spec)
    window: deque[np.ndarray] = deque(maxlen=speedup * history + 1)  # window[-1 - j] is frame t - j
    pending = []  # (t, draw index, or None for the frame as it is; motion energy; gate mask; patches passed)

    def add(t, draw, patches):
        energy = motion_energy(patches, spec)
        active = passes_gate(energy, sampling_gate)
        pending.append((t, draw, energy, active, patches[active]))

    def scored():
        raw = model.raw_scores(np.concatenate([p for *_, p in pending]))
        offsets = np.cumsum([0] + [len(p) for *_, p in pending])
        for (t, draw, energy, active, _), a, b in zip(pending, offsets, offsets[1:]):
            scores = np.full(len(active), np.nan, np.float32)
            scores[active] = raw[a:b]
            yield t, draw, energy, scores
        pending.clear()

    for t, image in enumerate(images):
        window.append(extractor.prepare(image))
        if t < speedup * history:
            continue
        h, w = window[-1].shape
        boxes = extractor.boxes((h, w))
        plain = [window[-1 - j] for j in range(spec.history, -1, -1)]  # the past frames, then frame t
        add(t, None, patches_from_frames(plain, spec))
        moving = _moving_patches(window[-2], window[-1], spec.size, spec.stride)
        if len(moving):
            for draw, rng in enumerate(rngs):
                x, y, bw, bh = boxes[rng.choice(moving)]
                cy, cx = y + bh // 2, x + bw // 2
                y0, y1 = max(0, cy - box // 2), min(h, cy + box // 2)
                x0, x1 = max(0, cx - box // 2), min(w, cx + box // 2)
                faster = []
                for j in range(spec.history, -1, -1):  # the past frames, then the current one (j = 0)
                    frame = window[-1 - j].copy()  # zoom 1 pastes the region back where it came from
                    region = window[-1 - speedup * j][y0:y1, x0:x1]
                    enlarge_into(frame, region, (y0 + y1) // 2, (x0 + x1) // 2, zoom)
                    faster.append(frame)
                add(t, draw, patches_from_frames(faster, spec))
        if len(pending) >= CHUNK_SAMPLES:
            yield from scored()
    if pending:
        yield from scored()


def proxy_scores_with(card, clips: list, draws: int) -> list[list[dict[int, dict[int, float]]]]:
    """Frame scores of `proxy_samples` under the card's calibration and frame-score settings, per draw and clip."""
    result = [[] for _ in range(draws)]
    for samples in clips:
        clip = [{} for _ in range(draws)]
        for t, draw, energy, raw in samples:
            active = passes_gate(energy, card.gate)
            if np.isnan(raw[active]).any():
                raise ValueError("the card's gate passes patches the samples did not score: sample with gate=False")
            calibrated = calibrated_frame(raw[active], active, card.calibration)
            score = frame_score(calibrated, int(active.sum()), card.scoring, card.count_bands)
            if draw is None:
                for scores in clip:
                    scores[t] = {0: score}
            else:
                clip[draw][t][1] = score
        for per_draw, scores in zip(result, clip):
            per_draw.append(scores)
    return result


def proxy_pairs(per_draw: list[list[dict[int, dict[int, float]]]]) -> tuple[list[float], list[int]]:
    """(scores, labels) of every frame as it is (once: it is the same in every draw) and every sped-up version."""
    scores, labels = [], []
    for draw, clips in enumerate(per_draw):
        for clip in clips:
            for variants in clip.values():
                for label, score in variants.items():
                    if label or not draw:
                        scores.append(score)
                        labels.append(label)
    return scores, labels


def interleaved_folds(names: list[str], folds: int) -> list[list[str]]:
    """Clip names split into `folds` folds, every `folds`-th name in each: the cross-validated proxy's split."""
    return [names[i::folds] for i in range(folds)]


def roc_summary(scores: list[float], labels: list[int]) -> dict:
    result = {"frames": len(labels), "anomalous": int(np.sum(labels)), "eer": None, "auc": None}
    if 0 < result["anomalous"] < len(labels):
        fpr, tpr, _ = roc_curve(np.array(scores), np.array(labels))
        result.update(eer=eer(fpr, tpr), auc=auc(fpr, tpr))
    return result


def speed_proxy(
    model: PatchModel, segments: Iterable, speedup: int = 2, box: int = 48, seed: int = 0, draws: int = 1
) -> dict:
    """Frame-level EER and AUC of normal vs locally sped-up frames of the given segments, frame by frame.

    With `draws` > 1 each frame is sped up `draws` times, around people drawn with
    seeds seed, seed + 1, ...: more anomalous frames, a less noisy figure (the
    normal frames are the same in every draw and count once).
    EER and AUC are None when the clips hold nobody moving to speed up.
    """
    scores, labels = proxy_pairs(_proxy_draws(model, segments, speedup, box, list(range(seed, seed + draws))))
    return {"speedup": speedup, "draws": draws, **roc_summary(scores, labels)}


def block_pairs(
    per_draw: list[list[dict[int, dict[int, float]]]], block: int, settings: ScoringSettings
) -> tuple[list[float], list[int]]:
    """Causally smoothed (scores, labels) of each clip and draw alternating `block` frames as they are and sped up.

    Anomalies last seconds, not single frames; smoothing trades noise against blur at
    the starts and ends, and this measures that trade on training data alone.
    """
    scores, labels = [], []
    for clips in per_draw:
        for clip in clips:
            series = [int((t // block) % 2 == 1 and 1 in clip[t]) for t in sorted(clip)]
            plain_or_faster = [clip[t][label] for t, label in zip(sorted(clip), series)]
            scores.extend(smooth_series(np.array(plain_or_faster), settings))
            labels.extend(series)
    return scores, labels
