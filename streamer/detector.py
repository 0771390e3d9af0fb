"""Offline scoring of a frame stream: the pipeline's stages composed in one process.

The live pipeline splits the same calls over processes (patch stage: `push` +
`gate_mask`; scorer: `raw_scores` + `calibrated_frame` + `frame_score`; alert
stage: `CausalSmoother`), so offline and live scores agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from .model import PatchModel
from .patches import PatchExtractor
from .scoring import CausalSmoother, ScoringSettings, calibrated_frame, frame_score, gate_mask
from .sources import Frame


@dataclass
class FrameResult:
    index: int  # the source's 1-based frame number
    score: float  # frame score (aggregated, count-band calibrated), before smoothing
    smoothed: float  # what is compared with the threshold
    patch_scores: np.ndarray  # (P,) calibrated, 0 where the gate passed nothing
    active: int  # patches that reached the network


class Detector:
    """Scores one stream (one camera or clip) frame by frame, batching frames for the model."""

    def __init__(self, model: PatchModel, settings: ScoringSettings | None = None, batch_frames: int = 32):
        self.model = model
        self.card = model.card
        self.settings = settings or model.card.scoring
        self.batch_frames = batch_frames
        self.extractor = PatchExtractor(self.card.patch)
        self.smoother = CausalSmoother(self.settings)

    def reset(self) -> None:
        """Start a new stream: forget past frames."""
        self.extractor.reset()
        self.smoother.reset()

    def run(self, frames: Iterable[Frame]) -> Iterator[FrameResult]:
        batch: list[tuple[int, np.ndarray, np.ndarray]] = []
        for frame in frames:
            patches = self.extractor.push(frame.image)
            active = gate_mask(patches, self.card.patch, self.card.gate)
            batch.append((frame.index, patches[active], active))
            if len(batch) == self.batch_frames:
                yield from self._score(batch)
                batch = []
        if batch:
            yield from self._score(batch)

    def _score(self, batch: list[tuple[int, np.ndarray, np.ndarray]]) -> Iterator[FrameResult]:
        raw = self.model.raw_scores(np.concatenate([patches for _, patches, _ in batch]))
        offset = 0
        for index, patches, active in batch:
            calibrated = calibrated_frame(raw[offset : offset + len(patches)], active, self.card.calibration)
            offset += len(patches)
            score = frame_score(calibrated, len(patches), self.settings, self.card.count_bands)
            yield FrameResult(index, score, self.smoother.update(score), calibrated, len(patches))
