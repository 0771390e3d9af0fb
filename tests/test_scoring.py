import numpy as np
import pytest

from streamer.patches import PatchSpec
from streamer.scoring import (
    Calibration,
    CausalSmoother,
    CountBands,
    ScoringSettings,
    aggregate,
    calibrated_frame,
    frame_score,
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


def test_count_bands_calibrate_frame_scores_among_frames_with_as_many_moving_patches():
    # 400 frames, 100 each with 10, 20, 30, 40 moving patches; crowded frames score higher.
    counts = np.repeat([10, 20, 30, 40], 100)
    scores = counts / 10 + np.tile(np.linspace(0, 1, 100), 4)
    bands = CountBands.fit(scores, counts, bands=4, quantile=0.99)
    assert bands.edges.tolist() == [20, 30, 40]  # quartiles of the counts; band b: edges[b-1] <= count < edges[b]
    assert bands.loc == pytest.approx([1.5, 2.5, 3.5, 4.5])  # each band's median score
    assert bands.scale == pytest.approx([0.49] * 4)  # its 99th percentile less the median
    assert bands.apply(2.0, 10) == pytest.approx(0.5 / 0.49)
    assert bands.apply(2.0, 35) == pytest.approx(-1.5 / 0.49)  # the same score is unremarkable in a crowd
    assert bands.apply(9.0, 400) == pytest.approx(4.5 / 0.49)  # more than ever seen: the top band
    assert bands.apply(0.0, 0) == pytest.approx(-1.5 / 0.49)
    assert bands.level(bands.apply(2.0, 35), 35) == pytest.approx(2.0)  # patch-scale level of a band value
    assert CountBands.from_dict(bands.to_dict()).to_dict() == bands.to_dict()
    calibrated = np.array([0.0, 3.0, 1.0, 2.0])
    settings = ScoringSettings(aggregation="topk", top_k=2)
    assert frame_score(calibrated, 10, settings, None) == 2.5
    assert frame_score(calibrated, 10, settings, bands) == pytest.approx(1.0 / 0.49)


def test_count_bands_keep_every_band_populated_and_floor_the_scale():
    # Ties and few frames: an edge leaving fewer than MIN_FRAMES frames on either side is dropped.
    counts = np.array([0] * 300 + [5] * 150 + [9] * 50)
    scores = np.where(counts == 0, 0.0, counts / 5 + np.linspace(0, 1, 500))
    bands = CountBands.fit(scores, counts, bands=5)
    assert bands.edges.tolist() == [5]  # 9 would leave 50 frames in the top band
    band_sizes = np.bincount(np.digitize(counts, bands.edges))
    assert band_sizes.min() >= CountBands.MIN_FRAMES
    floor = 0.25 * (np.quantile(scores, 0.99) - np.median(scores))
    assert bands.scale[0] == pytest.approx(floor)  # empty scenes all score 0: floored, not 0
    assert len(CountBands.fit(scores[:150], counts[:150], bands=5).loc) == 1  # too few frames: one band
    for bad in (dict(edges=[3, 1], loc=[0, 0, 0], scale=[1, 1, 1]), dict(edges=[], loc=[0], scale=[0])):
        with pytest.raises(ValueError):
            CountBands(**bad)
    with pytest.raises(ValueError):
        CountBands.fit(scores, counts[:-1])


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


def test_detector_calibrates_frame_scores_within_the_cards_count_bands(banded_model, synthetic_ped2):
    from streamer.detector import Detector
    from streamer.model import PatchModel
    from streamer.sources import FolderSource

    model = PatchModel(banded_model, threads=1)
    results = list(Detector(model).run(FolderSource(synthetic_ped2 / "Test" / "Test001")))
    counts = {r.active for r in results}
    assert min(counts) < 10 <= max(counts)  # frames fall in both bands (edge 10)
    for r in results:
        aggregated = aggregate(r.patch_scores, model.card.scoring)
        loc, scale = (0.2, 0.5) if r.active < 10 else (0.6, 1.5)
        assert r.score == pytest.approx((aggregated - loc) / scale, abs=1e-6)
