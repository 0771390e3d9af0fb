"""Footage of every kind as named clips (streamer/footage.py), live streams recorded first."""

import cv2
import numpy as np
import pytest

from streamer.footage import open_footage, record_live, redact
from streamer.sources import SourceError

from .conftest import synthetic_frames, write_clip


def write_video(path, frames, fourcc="MJPG"):
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10, frames[0].shape[::-1], False)
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def names_and_counts(clips):
    return [(clip.name, sum(1 for _ in clip.frames())) for clip in clips]


def test_every_kind_of_footage_becomes_named_clips(tmp_path, synthetic_ped2):
    frames = synthetic_frames(12, speed=2, seed=0)
    video = write_video(tmp_path / "videos" / "gate.avi", frames)
    write_video(tmp_path / "videos" / "yard.avi", frames[:5])
    write_clip(tmp_path / "mixed" / "night", frames[:7])
    write_video(tmp_path / "mixed" / "day.avi", frames[:3])
    (tmp_path / "mixed" / "notes").mkdir()  # a folder without frames is not a clip
    write_clip(tmp_path / "frames", frames[:4])
    assert names_and_counts(open_footage([video])) == [("gate", 12)]
    assert names_and_counts(open_footage([tmp_path / "videos"])) == [("gate", 12), ("yard", 5)]
    assert names_and_counts(open_footage([tmp_path / "mixed"])) == [("day", 3), ("night", 7)]
    assert names_and_counts(open_footage([tmp_path / "frames"])) == [("frames", 4)]
    ped2 = open_footage([synthetic_ped2])  # the Ped2 layout: its training clips
    assert [c.name for c in ped2] == ["Train001", "Train002", "Train003"] and ped2[0].frame_count == 20
    clip = open_footage([video])[0]
    assert [f.index for f in clip.frames(limit=3)] == [1, 2, 3]
    assert len(list(clip.frames())) == 12  # read again from the start


def test_footage_problems_are_clear(tmp_path):
    frames = synthetic_frames(3, speed=2, seed=0)
    write_clip(tmp_path / "a" / "cam", frames)
    write_clip(tmp_path / "b" / "cam", frames)
    with pytest.raises(SourceError, match=r"clips share the names \['cam'\]"):
        open_footage([tmp_path / "a" / "cam", tmp_path / "b" / "cam"])
    with pytest.raises(SourceError, match="footage not found"):
        open_footage([tmp_path / "missing.mp4"])
    with pytest.raises(SourceError, match="a single image"):
        open_footage([tmp_path / "a" / "cam" / "001.png"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="holds no frames, videos or folders of frames"):
        open_footage([tmp_path / "empty"])
    with pytest.raises(SourceError, match="give a recording --duration"):
        open_footage(["rtsp://user:secret@192.0.2.1/stream"], tmp_path)
    with pytest.raises(SourceError, match="no footage given"):
        open_footage([])


def test_credentials_never_reach_logs_or_cards():
    assert redact("rtsp://admin:hunter2@10.0.0.5:554/live") == "rtsp://***@10.0.0.5:554/live"
    assert redact("http://10.0.0.5/mjpeg") == "http://10.0.0.5/mjpeg"
    assert redact("clips/day1.mp4") == "clips/day1.mp4"


def test_a_live_stream_is_recorded_losslessly_then_read_as_a_clip(tmp_path):
    frames = synthetic_frames(15, speed=2, seed=3)
    video = write_video(tmp_path / "camera.avi", frames, fourcc="FFV1")
    url = video.resolve().as_uri()  # file:// through OpenCV's FFmpeg, as a stream URL would be read
    clips = open_footage([url], tmp_path / "rec", duration=60, progress=False)
    assert [c.name for c in clips] == ["live1"] and (tmp_path / "rec" / "live1.mkv").is_file()
    recorded = [f.image for f in clips[0].frames()]
    assert len(recorded) == 15 and all(np.array_equal(a, b) for a, b in zip(recorded, frames))  # ends early, keeps all
    short = record_live(url, tmp_path / "short.mkv", duration=1e-9, progress=False)  # the duration is up at once
    assert sum(1 for _ in open_footage([short])[0].frames()) == 1
    assert not list(tmp_path.glob("**/*.partial.mkv"))
