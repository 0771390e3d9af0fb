import cv2
import numpy as np
import pytest

from streamer.sources import FolderSource, SourceError, VideoSource, natural_key, open_source

from .conftest import synthetic_frames, write_clip


def test_natural_sort():
    names = ["10.png", "2.png", "1.png", "frame_100.png", "frame_20.png"]
    assert sorted(names, key=natural_key) == ["1.png", "2.png", "10.png", "frame_20.png", "frame_100.png"]


def test_folder_reads_in_numeric_order_as_gray(tmp_path):
    frames = synthetic_frames(12, speed=2, seed=0)
    write_clip(tmp_path, frames, ".tif")  # the official release's format
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / "._001.tif").write_bytes(b"AppleDouble")  # macOS resource fork: ignored
    read = list(FolderSource(tmp_path))
    assert [f.index for f in read] == list(range(1, 13))
    assert all(f.image.dtype == np.uint8 and f.image.ndim == 2 for f in read)
    assert np.array_equal(read[10].image, frames[10])


def test_color_frames_become_gray(tmp_path):
    color = np.zeros((20, 30, 3), np.uint8)
    color[..., 2] = 200
    cv2.imwrite(str(tmp_path / "1.png"), color)
    (frame,) = FolderSource(tmp_path)
    assert frame.image.shape == (20, 30) and frame.image.dtype == np.uint8


def test_missing_and_empty_folders_are_clear_errors(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        FolderSource(tmp_path / "missing")
    with pytest.raises(SourceError, match="no image files"):
        FolderSource(tmp_path)


def test_corrupt_frames_are_skipped_and_counted_and_frames_of_another_size_kept(tmp_path, caplog):
    write_clip(tmp_path, synthetic_frames(5, speed=1, seed=1))
    (tmp_path / "002.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    cv2.imwrite(str(tmp_path / "001.png"), np.zeros((10, 10), np.uint8))  # the consumer resizes it
    source = FolderSource(tmp_path)
    read = list(source)
    assert [f.index for f in read] == [1, 3, 4, 5] and read[0].image.shape == (10, 10)
    assert read[1].image.shape == (60, 90)
    assert source.skipped == 1
    assert "002.png" in caplog.text and "001.png" not in caplog.text


def test_video_file(tmp_path):
    path = tmp_path / "clip.avi"
    frames = synthetic_frames(8, speed=2, seed=2)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (90, 60), isColor=False)
    for f in frames:
        writer.write(f)
    writer.release()
    source = open_source(path)
    assert isinstance(source, VideoSource) and source.fps == pytest.approx(10)
    read = list(source)
    assert len(read) == 8 and read[0].image.shape == (60, 90)
    assert np.abs(read[3].image.astype(int) - frames[3]).mean() < 6  # lossy codec


def test_missing_video_is_a_clear_error(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        VideoSource(str(tmp_path / "none.mp4"))
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    with pytest.raises(SourceError, match="cannot open"):
        VideoSource(str(tmp_path / "bad.mp4"))
