"""`vad demo`: the README's first command."""

import os
import subprocess
import sys
import tempfile

import cv2
import pytest

from streamer.demo import SAMPLE_CLIP, run_demo
from streamer.model import BUNDLED_MODEL
from streamer.pipeline.config import free_port_base

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
