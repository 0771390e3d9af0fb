import numpy as np
import pytest

from streamer.patches import PatchSpec
from streamer.scoring import (
    Calibration,
    CausalSmoother,
    ScoringSettings,
    aggregate,
    calibrated_frame,
    gate_mask,
    passes_gate,
    smooth_series,
)


def test_position_calibration_fit_and_floor():
    rng = np.random.default_rng(0)
    raw = np.stack([rng.normal(0, 1, 1000), rng.normal(5, 2, 1000), np.full(1000, 3.0)], axis=1)
    cal = Calibration.fit(raw, "position", quantile=0.99, min_scale_fraction=0.25)
    assert cal.loc == pytest.approx([0, 5, 3], abs=0.15)
    assert cal.scale[:2] == pytest.approx([2.33, 4.65], rel=0.1)  # q99 - median of N(0,1) and N(5,2)
    global_scale = np.quantile(raw, 0.99) - np.median(raw)
    assert cal.scale[2] == pytest.approx(0.25 * global_scale)  # constant position: floored, not 0
    z = cal.apply(raw)
    assert np.mean(z[:, 0] > 1) == pytest.approx(0.01, abs=0.005)


def test_global_calibration_and_round_trip():
    raw = np.arange(100, dtype=float).reshape(50, 2)
    cal = Calibration.fit(raw, "global", quantile=0.9)
    assert cal.loc.shape == (1,)
    assert Calibration.from_dict(cal.to_dict()).to_dict() == cal.to_dict()
    with pytest.raises(ValueError):
        Calibration("position", [0.0], [0.0])


def test_calibrated_frame_leaves_gated_positions_at_zero():
    cal = Calibration("position", [1.0, 2.0, 3.0], [1.0, 2.0, 4.0])
    active = np.array([True, False, True])
    out = calibrated_frame(np.array([3.0, 7.0], np.float32), active, cal)
    assert out.tolist() == [2.0, 0.0, 1.0]


def test_aggregate():
    z = np.array([0.0, 5.0, 1.0, 3.0])
    assert aggregate(z, ScoringSettings(aggregation="max")) == 5.0
    assert aggregate(z, ScoringSettings(aggregation="topk", top_k=2)) == 4.0
    assert aggregate(np.array([]), ScoringSettings()) == 0.0


def test_smoothing_is_causal():
    settings = ScoringSettings(smoothing="mean", window=3)
    series = np.array([0, 0, 9, 0, 0, 0, 3.0])
    smoothed = smooth_series(series, settings)
    assert smoothed.tolist() == [0, 0, 3, 3, 3, 0, 1]
    # Changing a future frame never changes the past.
    changed = series.copy()
    changed[5] = 100
    assert smooth_series(changed, settings)[:5].tolist() == smoothed[:5].tolist()
    ema = CausalSmoother(ScoringSettings(smoothing="ema", alpha=0.5))
    assert [ema.update(x) for x in (2.0, 0.0, 0.0)] == [2.0, 1.0, 0.5]
    assert smooth_series(series, ScoringSettings(smoothing="none")).tolist() == series.tolist()


def test_gate_mask():
    spec = PatchSpec(motion="diff")
    patches = np.zeros((3, 2, 30, 30), np.uint8)
    patches[1, 1] = 10
    assert gate_mask(patches, spec, None).all()
    assert gate_mask(patches, spec, {"motion_threshold": 5.0}).tolist() == [False, True, False]
    energy = np.array([0.0, 10.0, 4.99])  # the same rule on energies already computed
    assert passes_gate(energy, None).all()
    assert passes_gate(energy, {"motion_threshold": 5.0}).tolist() == [False, True, False]


@pytest.mark.parametrize("bad", [dict(aggregation="mean"), dict(smoothing="median"), dict(window=0), dict(alpha=0)])
def test_invalid_settings(bad):
    with pytest.raises(ValueError):
        ScoringSettings(**bad)
