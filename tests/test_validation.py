"""The training-data speed proxy that chooses hyperparameters (training/validation.py)."""

from dataclasses import replace

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from streamer.model import PatchModel
from streamer.scoring import ScoringSettings
from training.validation import (
    block_pairs,
    enlarge_into,
    interleaved_folds,
    proxy_frame_scores,
    proxy_samples,
    proxy_scores_with,
    speed_proxy,
)


def clips(synthetic_ped2):
    return [synthetic_ped2 / "Train" / name for name in ("Train001", "Train002")]


def test_each_frame_is_scored_as_it_is_and_with_a_mover_sped_up(tiny_model, synthetic_ped2):
    scores = proxy_frame_scores(PatchModel(tiny_model, threads=1), clips(synthetic_ped2))
    assert len(scores) == 2
    for clip in scores:
        history = 2  # flow needs one earlier frame, x2 speed-up needs two
        assert sorted(clip) == list(range(history, 20))
        assert all(0 in variants for variants in clip.values())
        sped_up = [t for t, variants in clip.items() if 1 in variants]
        assert len(sped_up) == len(clip)  # the squares move in every frame
        assert any(clip[t][1] != clip[t][0] for t in sped_up)


def test_speed_proxy_is_the_roc_of_plain_against_sped_up_frames(tiny_model, synthetic_ped2):
    model = PatchModel(tiny_model, threads=1)
    pairs = [
        (s, label)
        for clip in proxy_frame_scores(model, clips(synthetic_ped2))
        for v in clip.values()
        for label, s in v.items()
    ]
    result = speed_proxy(model, clips(synthetic_ped2))
    assert result["frames"] == len(pairs) and result["anomalous"] == sum(label for _, label in pairs)
    expected_auc = roc_auc_score([label for _, label in pairs], [s for s, _ in pairs])
    assert abs(result["auc"] - expected_auc) < 1e-9


def test_more_draws_add_sped_up_frames_and_count_each_plain_frame_once(tiny_model, synthetic_ped2):
    model = PatchModel(tiny_model, threads=1)
    draws = [proxy_frame_scores(model, clips(synthetic_ped2), seed=seed) for seed in (0, 1)]
    plain = [v[0] for clip in draws[0] for v in clip.values()]
    assert plain == [v[0] for clip in draws[1] for v in clip.values()]  # the draws differ only in who is sped up
    sped_up = [v[1] for draw in draws for clip in draw for v in clip.values() if 1 in v]
    result = speed_proxy(model, clips(synthetic_ped2), seed=0, draws=2)
    assert result["draws"] == 2
    assert result["frames"] == len(plain) + len(sped_up) and result["anomalous"] == len(sped_up)
    labels = [0] * len(plain) + [1] * len(sped_up)
    assert abs(result["auc"] - roc_auc_score(labels, plain + sped_up)) < 1e-9


def test_block_pairs_alternate_blocks_and_smooth_each_clip_causally(tiny_model, synthetic_ped2):
    block = 4
    per_clip = proxy_frame_scores(PatchModel(tiny_model, threads=1), clips(synthetic_ped2))
    result, result_labels = block_pairs([per_clip], block, ScoringSettings(smoothing="mean", window=3))
    scores, labels = [], []
    for clip in per_clip:
        series = [(clip[t][int((t // block) % 2 == 1)], int((t // block) % 2 == 1)) for t in sorted(clip)]
        values = np.array([s for s, _ in series])
        # moving mean over the last 3 frames, fewer at the start of the clip
        scores.extend(values[max(0, i - 2) : i + 1].mean() for i in range(len(values)))
        labels.extend(label for _, label in series)
    assert result_labels == labels and 0 < sum(labels) < len(labels)
    assert np.allclose(result, scores)


def test_block_pairs_keep_frames_without_a_mover_normal_and_pool_the_draws():
    # frames 0-1 as they are, 2-3 sped up where someone moves (frame 3: nobody), 4 as it is
    clip = {0: {0: 1.0, 1: 9.0}, 1: {0: 1.0, 1: 9.0}, 2: {0: 1.0, 1: 5.0}, 3: {0: 2.0}, 4: {0: 3.0, 1: 9.0}}
    other_draw = {t: {0: v[0], **({1: 7.0} if 1 in v else {})} for t, v in clip.items()}
    scores, labels = block_pairs([[clip], [other_draw]], block=2, settings=ScoringSettings(window=2))
    assert labels == [0, 0, 1, 0, 0] * 2
    assert scores == [1.0, 1.0, 3.0, 3.5, 2.5] + [1.0, 1.0, 4.0, 4.5, 2.5]


def test_ungated_samples_rescored_under_the_cards_gate_match_the_gated_proxy(tiny_model, synthetic_ped2):
    """Other calibrations are tried on raw scores sampled without the gate; the card's own must come out the same."""
    model = PatchModel(tiny_model, threads=1)
    model.card = replace(model.card, gate={"motion_threshold": 20.0})  # a gate that hides some patches
    ungated = [list(s) for s in proxy_samples(model, clips(synthetic_ped2), speedup=2, box=48, seeds=[0], gate=False)]
    assert not any(np.isnan(raw).any() for clip in ungated for *_, raw in clip)
    assert proxy_scores_with(model.card, ungated, draws=1)[0] == proxy_frame_scores(model, clips(synthetic_ped2))
    gated = [list(s) for s in proxy_samples(model, clips(synthetic_ped2), speedup=2, box=48, seeds=[0])]
    assert any(np.isnan(raw).any() for clip in gated for *_, raw in clip)
    looser = replace(model.card, gate={"motion_threshold": 0.0})
    with pytest.raises(ValueError, match="gate=False"):
        proxy_scores_with(looser, gated, draws=1)


def test_the_untrained_flow_statistic_baseline_runs_through_the_proxy(synthetic_ped2):
    """benchmarks/research/speed_proxy.py's stand-in card must carry every field the proxy's scoring reads."""
    import importlib.util

    from .conftest import REPO

    spec = importlib.util.spec_from_file_location(
        "speed_proxy_benchmark", REPO / "benchmarks" / "research" / "speed_proxy.py"
    )
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    result = speed_proxy(benchmark.FlowSpeedStatistic(), clips(synthetic_ped2), speedup=2)
    assert result["auc"] > 0.5  # twice the speed reads as faster flow


def test_enlarge_into_pastes_the_scaled_region_centred_and_clipped_at_the_edges():
    frame = np.zeros((10, 10), np.uint8)
    enlarge_into(frame, np.full((2, 2), 7, np.uint8), 5, 5, 2)
    expected = np.zeros((10, 10), np.uint8)
    expected[3:7, 3:7] = 7  # 4x4, centred on (5, 5)
    np.testing.assert_array_equal(frame, expected)
    corner = np.zeros((10, 10), np.uint8)
    enlarge_into(corner, np.full((2, 2), 7, np.uint8), 0, 0, 2)
    assert corner[:2, :2].tolist() == [[7, 7], [7, 7]] and corner.sum() == 4 * 7  # the rest fell off the frame


def test_an_enlarged_stand_in_moves_more_patches_than_a_sped_up_one(tiny_model, synthetic_ped2):
    model = PatchModel(tiny_model, threads=1)

    def patches_added(**kwargs):
        """Mean patches with motion energy >= 64 per stand-in frame, less the mean per frame as it is."""
        samples = proxy_samples(model, clips(synthetic_ped2), box=48, seeds=[0], gate=False, **kwargs)
        energy = [(draw is None, e) for clip in samples for _, draw, e, _ in clip]
        stand_in = np.mean([(e >= 64).sum() for plain, e in energy if not plain])
        return stand_in - np.mean([(e >= 64).sum() for plain, e in energy if plain])

    assert patches_added(speedup=1, zoom=1) == 0  # no speed-up, no zoom: the frames as they are
    assert patches_added(speedup=1, zoom=2) > patches_added(speedup=2, zoom=1) + 1


def test_interleaved_folds_hold_every_clip_out_exactly_once():
    names = [f"Train{i:03d}" for i in range(1, 11)]
    folds = interleaved_folds(names, 4)
    assert folds[0] == ["Train001", "Train005", "Train009"]
    assert folds[3] == ["Train004", "Train008"]
    assert sorted(n for fold in folds for n in fold) == names
