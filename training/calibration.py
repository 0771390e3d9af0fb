"""Calibration, motion gate and threshold, fitted on normal footage read frame by frame.

Everything a card holds beside the network is fitted on normal footage only:
  calibration  per-position or global median and high quantile of raw patch scores
  gate         (optional) the motion level below which patches are left out
  count bands  (optional) frame-score median and spread per band of the gate-passing patch count
  threshold    a quantile of smoothed frame scores (a false-alarm rate on normal video)

The footage is read once and every patch scored. What the fit needs, each
frame's raw patch scores and motion energies (8 bytes a patch), is kept for at
most `max_frames` frames: footage that fits is kept whole, longer footage is
sampled evenly (seeded) in runs of RUN_FRAMES consecutive frames. Each run is
kept with the frames before it that the causal smoother remembers, so its
smoothed scores are the ones the live daemon computes in the middle of the
recording. `vad train` calibrates its exported graph on the training footage;
`vad calibrate` refits a model's card on other normal footage (a new scene or
camera, `recalibrate`) and needs no PyTorch.
"""

from __future__ import annotations

import heapq
import logging
import math
import os
import shutil
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from streamer.footage import Clip, frames_of, open_footage, recordings_beside, redact, total_frames
from streamer.model import ModelCard, ModelError, PatchModel, card_path_for
from streamer.patches import PatchExtractor, PatchSpec, motion_energy
from streamer.scoring import Calibration, CountBands, ScoringSettings, aggregate, passes_gate, smooth_series

from .provenance import git_commit, now

log = logging.getLogger(__name__)

RUN_FRAMES = 100  # consecutive frames sampled together when the footage is longer than the bound
SAMPLING_STREAM = 2  # the calibration sample's random stream, apart from the training sample's


@dataclass
class CalibrationSample:
    """Raw patch scores and motion energies of normal frames: all of them, or runs of them."""

    raw: np.ndarray  # (F, P) float32 raw score of every patch of the frames kept
    energy: np.ndarray  # (F, P) float32 motion energy of each patch
    run: np.ndarray  # (F,) run number: a run is consecutive frames of one clip, smoothed together
    counted: np.ndarray  # (F,) bool; False for the frames kept only to warm the smoother up
    frames_read: int  # frames of the footage, kept or not

    @property
    def frames(self) -> int:
        """Frames the fit counts."""
        return int(self.counted.sum())


def smoother_memory(settings: ScoringSettings) -> int:
    """How many past frames a smoothed score depends on (EMA: until their weight is below 0.1 %)."""
    if settings.smoothing == "mean":
        return settings.window - 1
    if settings.smoothing == "ema" and settings.alpha < 1:
        return math.ceil(math.log(1e-3) / math.log(1 - settings.alpha))
    return 0


class RunSampler:
    """Runs of frames, at most `max_frames` frames in all: those with the largest seeded keys.

    Keys follow Efraimidis and Spirakis' weighted reservoir (u ** (1 / weight),
    weight = the run's counted frames), so every frame has the same chance
    whatever the length of its run; a run pushed out frees its memory at once.
    """

    def __init__(self, max_frames: int | None, rng: np.random.Generator):
        self.max_frames = max_frames
        self.rng = rng
        self._heap: list = []  # (key, sequence number, raw, energy, lead)
        self._frames = 0
        self._offered = 0

    def offer(self, raw: np.ndarray, energy: np.ndarray, lead: int) -> None:
        """A run of frames, the first `lead` of them only warming the smoother up."""
        key = math.log(self.rng.random()) / (len(raw) - lead)
        heapq.heappush(self._heap, (key, self._offered, raw, energy, lead))
        self._offered += 1
        self._frames += len(raw)
        while self.max_frames is not None and self._frames > self.max_frames:
            self._frames -= len(heapq.heappop(self._heap)[2])

    def sample(self, frames_read: int) -> CalibrationSample:
        runs = sorted(self._heap, key=lambda run: run[1])
        if not runs:
            raise ValueError("no frames to calibrate on")
        counted = [np.arange(len(raw)) >= lead for _, _, raw, _, lead in runs]
        return CalibrationSample(
            np.concatenate([run[2] for run in runs]),
            np.concatenate([run[3] for run in runs]),
            np.concatenate([np.full(len(run[2]), n, np.int32) for n, run in enumerate(runs)]),
            np.concatenate(counted),
            frames_read,
        )


def collect(
    clips: list[Clip],
    spec: PatchSpec,
    score: Callable[[np.ndarray], np.ndarray],
    settings: ScoringSettings,
    max_frames: int | None,
    seed: int = 0,
    frames_per_clip: int | None = None,
    progress: bool = True,
    run_frames: int = RUN_FRAMES,
    batch_frames: int = 16,
) -> CalibrationSample:
    """Score every patch of the footage with `score` (uint8 patches -> raw scores); keep a bounded sample.

    `max_frames` None keeps every frame, each clip one run (for research on short clips).
    """
    lead = smoother_memory(settings) if max_frames is not None else 0
    if max_frames is not None and max_frames < run_frames + lead:
        raise ValueError(f"a calibration bound of {max_frames} frames cannot hold a run of {run_frames + lead}")
    sampler = RunSampler(max_frames, np.random.default_rng([SAMPLING_STREAM, seed]))
    run: list[tuple[np.ndarray, np.ndarray]] = []
    recent: deque = deque(maxlen=lead)  # the clip's last frames: the next run's lead-in
    pending: list[tuple[np.ndarray, np.ndarray]] = []  # frames waiting for the network
    run_lead, in_clip, current, frames_read = 0, 0, None, 0

    def close_run():
        nonlocal run
        if len(run) > run_lead:
            sampler.offer(np.stack([r for r, _ in run]), np.stack([e for _, e in run]), run_lead)
        run = []

    def score_pending():
        nonlocal run, run_lead, in_clip
        if not pending:
            return
        raw = score(np.concatenate([p for p, _ in pending])).reshape(len(pending), -1)
        for scores, (_, energy) in zip(raw, pending):
            if in_clip == 0 or (max_frames is not None and in_clip % run_frames == 0):
                close_run()
                run, run_lead = list(recent), len(recent)
            run.append((scores, energy))
            if lead:
                recent.append((scores, energy))
            in_clip += 1
        pending.clear()

    bar = tqdm(
        total=total_frames(clips, frames_per_clip), unit="frame", desc="calibrating", leave=False, disable=not progress
    )
    for number, _, frame, _ in frames_of(clips, frames_per_clip):
        if number != current:  # a new recording: nothing carries over
            score_pending()
            close_run()
            recent.clear()
            extractor, current, in_clip = PatchExtractor(spec), number, 0
        patches = extractor.push(frame.image)
        pending.append((patches, motion_energy(patches, spec)))
        if len(pending) == batch_frames:
            score_pending()
        frames_read += 1
        bar.update()
    score_pending()
    close_run()
    bar.close()
    sample = sampler.sample(frames_read)
    log.info("calibration sample: %d of %d frames, %d runs", sample.frames, frames_read, int(sample.run.max()) + 1)
    return sample


def fit_gate(energy: np.ndarray, calibrated: np.ndarray, max_hidden: float) -> dict:
    """The highest motion threshold that hides at most `max_hidden` of the unusual normal patches.

    Unusual = calibrated score above 1, the top of normal. Below the threshold a
    patch skips the network: it is confidently normal.
    """
    unusual = calibrated > 1.0
    candidates = np.arange(0.0, 64.01, 0.25)  # motion energy is on a 0-255 scale
    hidden = np.array([(unusual & (energy < t)).sum() for t in candidates]) / max(unusual.sum(), 1)
    threshold = float(candidates[hidden <= max_hidden].max())
    passed = float((energy >= threshold).mean())
    log.info("gate: motion threshold %.2f passes %.1f%% of the patches", threshold, 100 * passed)
    return {
        "motion_threshold": threshold,
        "max_hidden": max_hidden,
        "training_pass_rate": passed,
        "rule": f"highest motion level hiding <= {max_hidden:.0%} of the training patches "
        "scoring above the calibration quantile",
    }


def aggregated_frame_scores(
    calibrated: np.ndarray, energy: np.ndarray, gate: dict | None, settings: ScoringSettings
) -> tuple[np.ndarray, np.ndarray]:
    """Frame scores of (F, P) calibrated patch scores before count bands, and each frame's gate-passing count.

    Gated-out patches count 0, as live.
    """
    active = passes_gate(energy, gate)
    calibrated = np.where(active, calibrated, 0.0)
    return np.array([aggregate(z, settings) for z in calibrated]), active.sum(axis=1)


def smoothed_in_runs(
    sample: CalibrationSample,
    scores: np.ndarray,
    counts: np.ndarray,
    bands: CountBands | None,
    settings: ScoringSettings,
) -> np.ndarray:
    """Frame scores after count bands and causal smoothing, each run smoothed from its first frame, as live."""
    if bands is not None:
        scores = np.array([bands.apply(score, count) for score, count in zip(scores, counts)])
    return np.concatenate([smooth_series(scores[sample.run == r], settings) for r in np.unique(sample.run)])


@dataclass
class CalibrationResult:
    calibration: Calibration
    gate: dict | None
    count_bands: CountBands | None
    training_moving_max: int  # most gate-passing patches in any frame fitted on
    threshold: float
    percentiles: dict
    rule: str
    passing: float  # share of the frames fitted on whose smoothed score is above the threshold


def calibrate(
    sample: CalibrationSample,
    settings: ScoringSettings,
    mode: str = "position",
    quantile: float = 0.99,
    threshold_quantile: float = 0.99,
    gate_max_hidden: float | None = None,
    count_bands: int = 0,
) -> CalibrationResult:
    """Fit calibration, gate, count bands (if `count_bands` > 0) and threshold on a sample of normal frames."""
    counted = sample.counted
    raw = sample.raw[counted]
    calibration = Calibration.fit(raw, mode, quantile)
    calibrated = calibration.apply(sample.raw)
    gate = None
    if gate_max_hidden is not None:
        gate = fit_gate(sample.energy[counted].ravel(), calibrated[counted].ravel(), gate_max_hidden)
    scores, counts = aggregated_frame_scores(calibrated, sample.energy, gate, settings)
    bands = CountBands.fit(scores[counted], counts[counted], count_bands, quantile) if count_bands else None
    if bands is not None:
        log.info("count bands: edges %s (gate-passing patches per frame)", [f"{e:g}" for e in bands.edges])
    smoothed = smoothed_in_runs(sample, scores, counts, bands, settings)[counted]
    threshold = float(np.quantile(smoothed, threshold_quantile))
    percentiles = {f"p{q:g}": float(np.quantile(raw, q / 100)) for q in (50, 90, 99, 99.9)}
    rule = (
        f"{threshold_quantile:.1%} quantile of smoothed frame scores on {sample.frames} normal frames "
        f"({1 - threshold_quantile:.1%} of them pass it; normal video the model has not seen passes more often: "
        "the cross-validated proxy measures how much, docs/experiments.md)"
    )
    log.info("threshold %.3f: %s", threshold, rule)
    passing = float((smoothed > threshold).mean())
    return CalibrationResult(
        calibration, gate, bands, int(counts[counted].max()), threshold, percentiles, rule, passing
    )


def calibration_record(footage: list[str], sample: CalibrationSample, result: CalibrationResult) -> dict:
    """The card's `calibrated_on`: what the calibration and threshold were fitted on, and how much of it passes."""
    return {
        "footage": footage,
        "frames_read": sample.frames_read,
        "frames": sample.frames,
        "passing_threshold": result.passing,
    }


def passing_share(sample: CalibrationSample, card) -> float:
    """Share of the sample's counted frames whose smoothed score passes `card`'s threshold (its own calibration)."""
    scores, counts = aggregated_frame_scores(card.calibration.apply(sample.raw), sample.energy, card.gate, card.scoring)
    smoothed = smoothed_in_runs(sample, scores, counts, card.count_bands, card.scoring)[sample.counted]
    return float((smoothed > card.scoring.threshold).mean())


def recalibrate(
    model_path: str | os.PathLike,
    sources: list[str],
    out: str | os.PathLike,
    *,
    duration: float | None = None,
    threshold_quantile: float | None = None,
    max_frames: int = 20_000,
    device: str = "auto",
    threads: int = 0,
    seed: int = 0,
    progress: bool = True,
) -> ModelCard:
    """`vad calibrate`: the model with calibration, gate and threshold refitted on other normal footage.

    The network is copied unchanged to `out` (with its encoder graph); the new card
    keeps the old one's fitting rules (calibration mode and quantile, the gate's
    share, count bands, the threshold's quantile unless given) and records in
    `calibrated_on` the footage, how much of it passes the new threshold and how
    much passed the old one.
    """
    model_path, out = Path(model_path), Path(out).with_suffix(".onnx")
    if out.resolve() == model_path.resolve():
        raise ModelError("--out must name a new model: the calibrated card would replace the one it started from")
    model = PatchModel(model_path, device=device, threads=threads)
    card = model.card
    rules = card.training.get("config", {}).get("export", {})
    if threshold_quantile is None:
        threshold_quantile = rules.get("threshold_quantile")
        if threshold_quantile is None:
            raise ModelError(f"{model_path}'s card does not say its threshold quantile: pass --threshold-quantile")
    if not 0 < threshold_quantile < 1:
        raise ValueError(f"the threshold quantile must be in (0, 1), got {threshold_quantile}")
    bands = rules.get("count_bands", 0 if card.count_bands is None else len(card.count_bands.loc))
    clips = open_footage(sources, recordings_beside(out), duration, progress)
    sample = collect(clips, card.patch, model.raw_scores, card.scoring, max_frames, seed, progress=progress)
    result = calibrate(
        sample,
        card.scoring,
        card.calibration.mode,
        card.calibration.quantile,
        threshold_quantile,
        card.gate["max_hidden"] if card.gate else None,
        bands,
    )
    before = passing_share(sample, card)
    record = calibration_record([redact(s) for s in sources], sample, result)
    record.update(from_model=str(model_path), from_threshold=card.scoring.threshold, passing_from_threshold=before)
    log.info(
        "on this footage %.2f%% of frames passed the old threshold %.3f; %.2f%% pass the new one, %.3f",
        100 * before,
        card.scoring.threshold,
        100 * result.passing,
        result.threshold,
    )
    new = replace(
        card,
        calibration=result.calibration,
        gate=result.gate,
        count_bands=result.count_bands,
        training_moving_max=result.training_moving_max,
        scoring=replace(card.scoring, threshold=result.threshold),
        score_percentiles=result.percentiles,
        threshold_rule=result.rule,
        calibrated_on=record,
        commit=git_commit(),
        created=now(),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model_path, out)
    if card.encoder:
        encoder = dict(card.encoder, file=out.with_suffix(".encoder.onnx").name)
        shutil.copyfile(model_path.parent / card.encoder["file"], out.with_suffix(".encoder.onnx"))
        new = replace(new, encoder=encoder)
    new.save(card_path_for(out))
    log.info("wrote %s and its card", out)
    return new
