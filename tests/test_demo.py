"""`vad demo`: the README's first command."""

import json
import os
import subprocess
import sys
import tempfile

import cv2
import numpy as np
import pytest

from streamer.demo import SAMPLE_CLIP, run_demo
from streamer.model import BUNDLED_MODEL
from streamer.pipeline.config import free_port_base
from streamer.pipeline.events import read_events
from streamer.pipeline.snapshots import caption_height

from .conftest import synthetic_frames


def test_the_sample_clip_is_bundled_with_attribution():
    capture = cv2.VideoCapture(str(SAMPLE_CLIP))
    assert capture.isOpened() and SAMPLE_CLIP.stat().st_size < 2_000_000
    assert capture.get(cv2.CAP_PROP_FRAME_COUNT) == 180 and capture.get(cv2.CAP_PROP_FPS) == 10
    ok, frame = capture.read()
    assert ok and frame.shape[:2] == (240, 360)
    capture.release()
    attribution = (SAMPLE_CLIP.parent / "ATTRIBUTION.txt").read_text()
    assert "Mahadevan" in attribution and "CVPR 2010" in attribution and "research use" in attribution


def test_demo_prints_events_and_a_summary(tiny_model, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the demo's run folder, kept for the user to look at
    clip = tmp_path / "clip.mp4"
    frames = synthetic_frames(10, speed=2, seed=11) + synthetic_frames(10, speed=5, seed=11)
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (90, 60), isColor=False)
    for frame in frames:
        writer.write(frame)
    writer.release()
    assert run_demo(str(tiny_model), str(clip), pace=False, metrics_port=free_port_base(4)) == 0
    out = capsys.readouterr().out
    assert "start  event" in out and "end    event" in out and "summary: 20 frames scored" in out


@pytest.mark.skipif(not BUNDLED_MODEL.exists(), reason=f"no bundled model yet at {BUNDLED_MODEL}")
def test_the_readme_demo_fires_on_the_bundled_clip(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "streamer.cli", "demo", "--fast", "--metrics-port", str(free_port_base(4))],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "start  event" in result.stdout and "summary: 180 frames scored" in result.stdout
    # The review page was served while the clip played; with the output not a terminal, the demo ended.
    assert "review   http://" in result.stdout
    (run_dir,) = tmp_path.glob("vad-demo-*")
    events = read_events(run_dir / "events.sqlite")
    start = next(e for e in events if e["type"] == "start")
    end = next(e for e in events if e["type"] == "end" and e["event_id"] == start["event_id"])
    folder = run_dir / "snapshots" / start["event_id"]
    assert start["snapshot"] == f"snapshots/{start['event_id']}/start.jpg" and end["video"].startswith("snapshots/")
    frames = read_frames(SAMPLE_CLIP)
    trace = json.loads((folder / "scores.json").read_text())
    peak_index = next(index for seq, index, *_ in trace["frames"] if seq == trace["peak_seq"])
    for name, index, event in (("start", start["frame_index"], start), ("peak", peak_index, None)):
        picture = cv2.imread(str(folder / f"{name}.jpg"))
        picture = picture[caption_height(picture.shape[1]) :]
        scale = picture.shape[1] / 360
        if event is not None:  # the event's boxes are drawn: red along each box's top edge
            for box in event["boxes"]:
                y, x0, x1 = (
                    round(box["y"] * scale) + 1,
                    round(box["x"] * scale) + 3,
                    round((box["x"] + box["w"]) * scale) - 3,
                )
                blue, green, red = picture[y, x0:x1].astype(int).mean(axis=0)
                assert red > 150 and red > 1.8 * max(blue, green), (name, box)
        # It shows the frame that was scored: nearest the clip's frame at that index, of all frames.
        gray = cv2.resize(cv2.cvtColor(picture, cv2.COLOR_BGR2GRAY), (360, 240), interpolation=cv2.INTER_AREA)
        differences = [np.abs(gray.astype(int) - f.astype(int)).mean() for f in frames]
        assert int(np.argmin(differences)) + 1 == index, name
    # The clip: 2 s of pre-roll at the clip's 10 fps, then every frame to the end, read back by OpenCV.
    clip = cv2.VideoCapture(str(run_dir / end["video"]))
    count = 0
    while clip.read()[0]:
        count += 1
    clip.release()
    assert count == end["frame_index"] - max(1, start["frame_index"] - 20) + 1


def read_frames(path) -> list:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            return frames
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY))
