"""Calibration on footage read frame by frame (training/calibration.py)."""

import numpy as np
import pytest

from streamer.footage import open_footage
from streamer.patches import PatchSpec
from streamer.scoring import ScoringSettings, smooth_series
from training.calibration import calibrate, collect, smoother_memory

from .conftest import synthetic_frames, write_clip

SPEC = PatchSpec(motion="diff", frame_size=(60, 90))
SETTINGS = ScoringSettings(aggregation="max", smoothing="mean", window=4)


def brightness(patches: np.ndarray) -> np.ndarray:
    """A stand-in network: a patch's mean pixel."""
    return patches.reshape(len(patches), -1).mean(axis=1).astype(np.float32)


@pytest.fixture(scope="module")
def footage(tmp_path_factory):
    root = tmp_path_factory.mktemp("calibration")
    write_clip(root / "long", synthetic_frames(250, speed=3, seed=1))
    write_clip(root / "short", synthetic_frames(30, speed=2, seed=2))
    return open_footage([root])


def test_footage_within_the_bound_is_kept_whole_and_smoothed_as_one_recording(footage):
    sample = collect(footage, SPEC, brightness, SETTINGS, max_frames=10_000, progress=False)
    assert sample.frames == sample.frames_read == 280
    everything = collect(footage, SPEC, brightness, SETTINGS, max_frames=None, progress=False)
    assert np.array_equal(sample.raw[sample.counted], everything.raw) and everything.counted.all()
    # Runs of 100 frames carry the 3 frames before them, so their smoothed scores are the whole clip's.
    assert (~sample.counted).sum() == 2 * smoother_memory(SETTINGS)
    result, whole = calibrate(sample, SETTINGS), calibrate(everything, SETTINGS)
    assert result.threshold == pytest.approx(whole.threshold, rel=1e-6)
    assert result.training_moving_max == whole.training_moving_max
    scores = whole.calibration.apply(everything.raw).max(axis=1)
    smoothed = np.concatenate([smooth_series(scores[:250], SETTINGS), smooth_series(scores[250:], SETTINGS)])
    assert whole.threshold == pytest.approx(np.quantile(smoothed, 0.99))
    assert result.passing == pytest.approx((smoothed > result.threshold).mean())


def test_longer_footage_is_sampled_in_whole_runs_within_the_bound(footage):
    sample = collect(footage, SPEC, brightness, SETTINGS, max_frames=120, seed=3, run_frames=20, progress=False)
    assert len(sample.raw) <= 120 and sample.frames_read == 280
    for run in np.unique(sample.run):  # a run: its lead-in (not counted), then up to 20 counted frames
        counted = sample.counted[sample.run == run]
        assert counted.sum() <= 20 and counted.tolist() == sorted(counted.tolist())
    again = collect(footage, SPEC, brightness, SETTINGS, max_frames=120, seed=3, run_frames=20, progress=False)
    other = collect(footage, SPEC, brightness, SETTINGS, max_frames=120, seed=4, run_frames=20, progress=False)
    assert np.array_equal(sample.raw, again.raw) and not np.array_equal(sample.raw, other.raw)
    with pytest.raises(ValueError, match="cannot hold a run"):
        collect(footage, SPEC, brightness, SETTINGS, max_frames=50, progress=False)
