"""Calibration on footage read frame by frame (training/calibration.py), and `vad calibrate`."""

import numpy as np
import pytest

from streamer.cli import main
from streamer.footage import open_footage
from streamer.model import ModelCard, ModelError, PatchModel, card_path_for
from streamer.patches import PatchSpec
from streamer.scoring import ScoringSettings, smooth_series
from training.calibration import calibrate, collect, recalibrate, smoother_memory

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


def test_calibrate_refits_the_card_on_new_footage_and_says_how_much_passed(tiny_model, tmp_path):
    busier = tmp_path / "busier"
    for n in range(2):  # faster squares than the model was trained on: the old threshold fires often
        write_clip(busier / f"day{n}", synthetic_frames(60, speed=6, seed=20 + n))
    out = tmp_path / "moved.onnx"
    card = recalibrate(tiny_model, [str(busier)], out, threshold_quantile=0.95, max_frames=1000, progress=False)
    old = ModelCard.load(card_path_for(tiny_model))
    model = PatchModel(out)  # the copied network matches the new card
    assert model.card.scoring.threshold == card.scoring.threshold != old.scoring.threshold
    record = card.calibrated_on
    assert record["footage"] == [str(busier)] and record["frames"] == record["frames_read"] == 120
    assert record["passing_threshold"] <= 0.05 + 1e-9 < record["passing_from_threshold"]
    assert record["from_model"] == str(tiny_model) and card.training == old.training
    with pytest.raises(ModelError, match="must name a new model"):
        recalibrate(out, [str(busier)], out)


def test_calibrate_cli(tiny_model, synthetic_ped2, tmp_path, capsys):
    out = tmp_path / "again.onnx"
    source = str(synthetic_ped2 / "Train")
    assert main(["calibrate", "--model", str(tiny_model), "--source", source, "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "calibrated" in printed and "of this footage's frames above it" in printed
    assert PatchModel(out).card.calibrated_on["frames"] == 60
    bad = ["calibrate", "--model", str(tiny_model), "--source", source, "--out", str(out), "--threshold-quantile", "2"]
    assert main(bad) == 2
    assert "--threshold-quantile must be in (0, 1)" in capsys.readouterr().err
