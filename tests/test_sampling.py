"""The bounded training sample (training/sampling.py): reservoirs, frame roles, one pass over footage."""

import json

import numpy as np
import pytest

from streamer.config import ConfigError
from streamer.footage import open_footage
from streamer.patches import PatchExtractor, PatchSpec, motion_energy
from training.config import DataConfig
from training.sampling import FIT, VALIDATE, FrameRoles, Reservoir, sample_patches

from .conftest import synthetic_frames, write_clip

SPEC = PatchSpec(motion="diff", frame_size=(60, 90))


def offer_in_chunks(reservoir: Reservoir, rows: np.ndarray, keys: np.ndarray, chunk: int = 37) -> None:
    for start in range(0, len(rows), chunk):
        reservoir.offer(rows[start : start + chunk], keys[start : start + chunk])


def test_a_reservoir_under_its_capacity_keeps_everything():
    rows = np.arange(500)[:, None]
    reservoir = Reservoir(1000)
    offer_in_chunks(reservoir, rows, np.random.default_rng(0).random(500))
    assert sorted(reservoir.rows()[:, 0]) == list(range(500))
    assert reservoir.kept == reservoir.offered == 500


def test_a_full_reservoir_keeps_the_rows_with_the_smallest_keys_in_bounded_room():
    rng = np.random.default_rng(1)
    rows, keys = np.arange(20_000)[:, None], rng.random(20_000)
    reservoir = Reservoir(3000)
    offer_in_chunks(reservoir, rows, keys, chunk=345)
    expected = np.sort(np.argsort(keys)[:3000])
    assert np.array_equal(np.sort(reservoir.rows()[:, 0]), expected)
    assert reservoir.kept == 3000 and reservoir.offered == 20_000
    assert len(reservoir._keys) < 2 * 3000  # the room it ever had: capacity plus spare, not the rows offered


def test_a_reservoir_of_capacity_zero_keeps_nothing():
    reservoir = Reservoir(0)
    offer_in_chunks(reservoir, np.ones((5000, 2)), np.random.default_rng(0).random(5000))
    assert reservoir.rows() is None and reservoir.kept == 0 and reservoir.offered == 5000


def test_validation_blocks_make_up_the_share_spread_over_the_footage():
    roles = FrameRoles(DataConfig(validation_share=0.1, validation_block=10), ["a"])
    held = [roles.validates("a", n) for n in range(1000)]
    assert sum(held) == 100
    blocks = [n // 10 for n in range(1000) if held[n]]
    assert sorted(set(blocks)) == [4, 14, 24, 34, 44, 54, 64, 74, 84, 94]  # whole blocks, one in ten
    assert not any(FrameRoles(DataConfig(validation_share=0.0), ["a"]).validates("a", n) for n in range(1000))


def test_frame_roles_by_clip_step_and_manifest(tmp_path):
    data = DataConfig(validation_clips=["c"], frame_step=2)
    roles = FrameRoles(data, ["a", "b", "c"])
    assert [roles.role("a", n + 1, n) for n in range(4)] == [FIT, None, FIT, None]
    assert [roles.role("c", n + 1, 100 + n) for n in range(2)] == [VALIDATE, None]
    with pytest.raises(ConfigError, match="not among the footage's clips"):
        FrameRoles(DataConfig(validation_clips=["x"]), ["a"])
    with pytest.raises(ConfigError, match="nothing left to fit on"):
        FrameRoles(DataConfig(validation_clips=["a"]), ["a"])
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"chosen": [{"clip": "a", "frame": 3}, {"clip": "b", "frame": 99}]}))
    roles = FrameRoles(DataConfig(frames_file=str(manifest), validation_share=0), ["a", "b"])
    assert [roles.role("a", n, n - 1) for n in range(1, 5)] == [None, None, FIT, None]
    with pytest.raises(ConfigError, match="lists 1 frames the footage has not: b frame 99"):
        roles.check_listed_found()
    with pytest.raises(ConfigError, match=r"lists frames of clips \['b'\]"):
        FrameRoles(DataConfig(frames_file=str(manifest)), ["a"])
    with pytest.raises(ValueError, match="set only one"):
        DataConfig(frames_file=str(manifest), frame_step=2)


@pytest.fixture(scope="module")
def footage(tmp_path_factory):
    """Three clips of 40 frames in a folder of frame folders."""
    root = tmp_path_factory.mktemp("footage")
    for n in range(3):
        write_clip(root / f"clip{n}", synthetic_frames(40, speed=2 + n, seed=n))
    return open_footage([root])


def moving_and_static(footage, data: DataConfig) -> tuple[int, int]:
    """Moving and static patches of the fitting frames, counted without the sampler."""
    roles = FrameRoles(data, [c.name for c in footage])
    moving = static = running = 0
    for clip in footage:
        extractor = PatchExtractor(SPEC)
        for frame in clip.source:
            energy = motion_energy(extractor.push(frame.image), SPEC)
            if roles.role(clip.name, frame.index, running) == FIT:
                moving += int((energy >= data.motion_threshold).sum())
                static += int((energy < data.motion_threshold).sum())
            running += 1
    return moving, static


def test_footage_under_the_caps_gives_every_moving_patch_and_a_share_of_static_ones(footage):
    data = DataConfig(validation_clips=["clip2"], motion_threshold=4.0, static_fraction=0.2, frame_step=2)
    sample = sample_patches(footage, SPEC, data, seed=0, progress=False)
    moving, static = moving_and_static(footage, data)
    fit = sample.facts["sample"][FIT]
    assert fit["moving"] == {"kept": moving, "offered": moving} and moving > 0
    assert fit["static"]["kept"] == fit["static"]["offered"]
    assert abs(fit["static"]["kept"] - 0.2 * static) < 4 * np.sqrt(0.2 * 0.8 * static)  # a binomial share
    assert len(sample.fitting) == moving + fit["static"]["kept"]
    assert sample.facts["fitting_frames"] == 40 and sample.facts["validation_frames"] == 20
    assert sample.fitting.shape[1:] == (SPEC.channels, 30, 30) and len(sample.validation) > 0


def test_longer_footage_is_sampled_at_the_caps_reproducibly(footage):
    data = DataConfig(motion_threshold=4.0, validation_share=0, max_moving_patches=50, max_static_patches=30)
    first = sample_patches(footage, SPEC, data, seed=0, progress=False)
    assert len(first.fitting) == 80 and len(first.validation) == 0
    assert first.facts["sample"][FIT]["moving"]["offered"] > 50
    again = sample_patches(footage, SPEC, data, seed=0, progress=False)
    other = sample_patches(footage, SPEC, data, seed=1, progress=False)
    assert np.array_equal(first.fitting, again.fitting)
    assert not np.array_equal(first.fitting, other.fitting)


def test_a_sample_with_nothing_to_fit_on_is_refused(footage):
    data = DataConfig(validation_share=0, static_fraction=0, max_frames=1)  # one still frame, no static patch kept
    with pytest.raises(ConfigError, match="no fitting patches"):
        sample_patches(footage[:1], SPEC, data, 0, False)


def test_training_on_videos_and_a_live_stream_holds_out_a_share_and_records_the_footage(tiny_config, tmp_path):
    from streamer import config
    from training.config import TrainConfig
    from training.train import train_model

    from .test_footage import write_video

    for n in (1, 2):
        write_video(tmp_path / "cams" / f"cam{n}.avi", synthetic_frames(40, 2, seed=n), "FFV1")
    stream = write_video(tmp_path / "stream.avi", synthetic_frames(30, 2, seed=3), "FFV1").resolve().as_uri()
    data = {"sources": [str(tmp_path / "cams"), stream], "duration": 60, "validation_clips": []}
    data.update(validation_share=0.25, validation_block=10)
    out = tmp_path / "model"
    card = train_model(config.load(tiny_config, TrainConfig, {"data": data, "out": str(out)}), progress=False)
    assert card.training["clips"] == ["cam1", "cam2", "live1"] and card.training["frames"] == 110
    assert card.training["footage"] == [str(tmp_path / "cams"), stream]
    assert (tmp_path / "model.recordings" / "live1.mkv").is_file()
    assert card.training["validation_frames"] == 30  # blocks 1, 5 and 9 of 11: a quarter, spread over the footage
    assert card.training["validation"]["auc"] is not None  # the speed proxy ran on the held-out blocks
    assert card.calibrated_on["frames"] == 110 and card.calibrated_on["footage"] == card.training["footage"]
