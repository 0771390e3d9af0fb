import numpy as np
import pytest

from streamer import ped2
from streamer.sources import SourceError

from .conftest import needs_ped2, ped2_root

REAL_GT = {
    "Test001": (61, 180),
    "Test002": (95, 180),
    "Test003": (1, 146),
    "Test004": (31, 180),
    "Test005": (1, 129),
    "Test006": (1, 159),
    "Test007": (46, 180),
    "Test008": (1, 180),
    "Test009": (1, 120),
    "Test010": (1, 150),
    "Test011": (1, 180),
    "Test012": (88, 180),
}


def test_parse_ranges_forms():
    assert ped2.parse_ranges("61:180") == [(61, 180)]
    assert ped2.parse_ranges(" 5:90, 140:200 ") == [(5, 90), (140, 200)]
    assert ped2.parse_ranges("7") == [(7, 7)]
    assert ped2.parse_ranges("") == []


@pytest.mark.parametrize("bad", ["0:5", "9:3", "a:b", "1:2:3"])
def test_parse_ranges_rejects(bad):
    with pytest.raises(ValueError):
        ped2.parse_ranges(bad)


def test_labels_are_one_based_and_inclusive():
    labels = ped2.labels_from_ranges([(2, 3), (5, 5)], 6)
    assert labels.tolist() == [0, 1, 1, 0, 1, 0]
    with pytest.raises(ValueError, match="runs past"):
        ped2.labels_from_ranges([(4, 7)], 6)


def test_parse_ground_truth_file(tmp_path):
    m = tmp_path / "UCSDped2.m"
    m.write_text(
        "TestVideoFile = {};\nTestVideoFile{end+1}.gt_frame = [61:180];\n% comment\n"
        "TestVideoFile{end+1}.gt_frame = [5:90, 140:200];\n"
    )
    assert ped2.parse_ground_truth(m) == [[(61, 180)], [(5, 90), (140, 200)]]
    m.write_text("nothing here")
    with pytest.raises(SourceError, match="no 'gt_frame"):
        ped2.parse_ground_truth(m)


def test_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(SourceError, match="UCSD Ped2 not found"):
        ped2.resolve_root(tmp_path / "nowhere")


def test_clip_count_must_match_ground_truth(synthetic_ped2, tmp_path):
    import shutil

    root = tmp_path / "UCSDped2"
    shutil.copytree(synthetic_ped2, root)
    shutil.rmtree(root / "Test" / "Test002")
    with pytest.raises(SourceError, match="2 entries but there are 1 test clips"):
        ped2.test_clips(root)


def test_synthetic_layout(synthetic_ped2):
    clips = ped2.test_clips(synthetic_ped2)
    assert [c.name for c in clips] == ["Test001", "Test002"]
    assert clips[0].labels.tolist() == [0] * 10 + [1] * 10
    assert len(ped2.training_clips(synthetic_ped2)) == 3


@needs_ped2
def test_real_ped2_labels():
    clips = ped2.test_clips(ped2_root())
    assert len(clips) == 12 and sum(c.frame_count for c in clips) == 2010
    for clip in clips:
        lo, hi = REAL_GT[clip.name]
        assert np.flatnonzero(clip.labels).tolist() == list(range(lo - 1, hi))
    train = ped2.training_clips(ped2_root())
    assert len(train) == 16 and sum(c.frame_count for c in train) == 2550
