"""Event media: the preview ring, snapshots of the scored frame, score traces and clips, written off the event path."""

from __future__ import annotations

import json
import struct
import threading
import time

import cv2
import numpy as np
import pytest
import zmq
from prometheus_client import REGISTRY

from streamer.patches import PatchExtractor, PatchSpec
from streamer.pipeline import config as pipeline_config
from streamer.pipeline import messages
from streamer.pipeline.config import free_port_base
from streamer.pipeline.events import EventTracker, top_boxes
from streamer.pipeline.media import CLIP_CODECS, EventMedia, _Queue, choose_codec, writable_codecs
from streamer.pipeline.preview import Preview, PreviewReader, PreviewRing, decode_preview, encode_jpeg, jpeg_size
from streamer.pipeline.review_config import MediaConfig
from streamer.pipeline.snapshots import caption_height

from .pipeline_helpers import wait_for

SHAPE = (120, 180)
SPEC = PatchSpec()  # 30 px patches every 15 px
FPS = 10.0


def frame(seq: int) -> np.ndarray:
    """A textured frame, a bright square moving right, and a bar along the bottom whose length is 4 * seq."""
    rng = np.random.default_rng(7)
    image = cv2.GaussianBlur(rng.integers(30, 70, SHAPE, dtype=np.uint8), (5, 5), 0)
    x = 10 + 4 * seq
    image[20:44, x : x + 24] = 230
    image[100:112, 8 : 8 + 4 * seq] = 250
    return image


def bar_length(image: np.ndarray, scale: float = 1.0) -> float:
    """The bottom bar's length in frame pixels, read back from a (possibly enlarged, annotated) picture."""
    gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    row = gray[round(106 * scale)]
    bright = np.flatnonzero(row > 150)
    return 0.0 if not len(bright) else (bright[-1] + 1) / scale - 8


def square_scores(seq: int, level: float) -> np.ndarray:
    """Patch scores: 2x the level on the patches the square covers while seq is in [10, 25), else low."""
    boxes = PatchExtractor(SPEC).boxes(SHAPE)
    scores = np.full(len(boxes), 0.1, np.float32)
    if 10 <= seq < 25:
        x = 10 + 4 * seq
        covers = (boxes[:, 0] < x + 24) & (boxes[:, 0] + boxes[:, 2] > x) & (boxes[:, 1] < 44) & (boxes[:, 1] + 30 > 20)
        scores[covers] = level * (1.5 + 0.05 * (8 - abs(seq - 18)))  # peaks at seq 18
    return scores


def play(media: EventMedia, frames: int = 40, level: float = 1.0, camera: str = "cam1", previews: bool = True):
    """Frames through the media writer as the alerter hands them over; returns the events it annotated."""
    tracker = EventTracker(camera, level, end_after=3, update_every=5, model={})
    t0, events = time.time(), []
    for seq in range(frames):
        t = t0 + seq / FPS
        if previews:
            media.ring.put(camera, "s1", Preview(seq, t, FPS, encode_jpeg(frame(seq), 95).tobytes()))
        scores = square_scores(seq, level)
        score = float(scores.max())
        header = {"stream": "s1", "seq": seq, "index": seq + 1, "reset": seq == 0, "t_capture": t, "score": score}
        media.frame(camera, {**header, "frame_shape": list(SHAPE)}, score, scores, level)
        position = {"seq": seq, "frame_index": seq + 1, "clip": "", "capture_time": t}
        boxes = PatchExtractor(SPEC).boxes(SHAPE)
        event = tracker.frame(position, score, lambda: top_boxes(scores, boxes, level, 10))
        if event is not None:
            events.append(media.event(event))
    return events


def read_clip(path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, image = capture.read()
        if not ok:
            break
        frames.append(image)
    capture.release()
    return frames


@pytest.fixture
def media(tmp_path):
    media = EventMedia(tmp_path, MediaConfig(preroll_seconds=1.0), SPEC, max_boxes=10)
    yield media
    media.close(30)


def test_jpeg_size_reads_the_header_and_refuses_what_is_not_a_jpeg():
    jpeg = encode_jpeg(frame(3), 90).tobytes()
    assert jpeg_size(jpeg) == SHAPE
    assert decode_preview(jpeg).shape == SHAPE
    assert jpeg_size(b"not a jpeg") is None and decode_preview(b"\xff\xd8\xff") is None
    # A well-formed header that claims 60000 x 60000 pixels is refused before anything is allocated.
    bomb = b"\xff\xd8" + b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, 60000, 60000, 1) + b"\x01\x11\x00" + b"\xff\xd9"
    assert jpeg_size(bomb) == (60000, 60000)
    assert decode_preview(bomb) is None


def test_the_ring_keeps_the_pre_roll_behind_the_writer_and_is_bounded():
    ring = PreviewRing(keep_frames=3, max_frames=10, max_bytes=10_000)
    for seq in range(8):
        ring.put("cam1", "s1", Preview(seq, 0.0, 10.0, b"x" * 100))
    ring.passed("cam1", "s1", 6)  # the writer is at frame 6: frames 3.. are still wanted
    assert [ring.get("cam1", "s1", seq) is not None for seq in range(8)] == [False] * 3 + [True] * 5
    for seq in range(8, 30):  # the writer stalls: the frame cap holds
        ring.put("cam1", "s1", Preview(seq, 0.0, 10.0, b"x" * 100))
    assert ring.held() == (10, 1000)
    for seq in range(30, 35):  # and so does the byte cap
        ring.put("cam1", "s1", Preview(seq, 0.0, 10.0, b"x" * 4000))
    assert ring.held()[1] <= 10_000
    ring.put("cam1", "s2", Preview(0, 0.0, 10.0, b"y"))  # a new stream: the old one's frames go
    assert ring.held() == (1, 1) and ring.get("cam1", "s1", 34) is None


def test_the_ring_waits_for_a_late_preview_only_while_it_may_still_come():
    ring = PreviewRing(keep_frames=5)
    ring.put("cam1", "s1", Preview(0, 0.0, 10.0, b"a"))
    threading.Timer(0.2, ring.put, ("cam1", "s1", Preview(1, 0.0, 10.0, b"b"))).start()
    started = time.monotonic()
    assert ring.get("cam1", "s1", 1, timeout=5).jpeg == b"b"  # scores overtook the preview: it arrives
    assert time.monotonic() - started < 2
    ring.put("cam1", "s1", Preview(3, 0.0, 10.0, b"d"))
    started = time.monotonic()
    assert ring.get("cam1", "s1", 2, timeout=5) is None  # a newer one came, frame 2's never will: no wait
    assert time.monotonic() - started < 0.5


def test_the_queue_drops_frames_past_its_bound_but_never_events():
    queue = _Queue(max_droppable=2)
    assert queue.put("f1", True) and queue.put("f2", True)
    assert not queue.put("f3", True)
    assert queue.put("event", False)
    queue.close()
    assert [queue.get() for _ in range(4)] == ["f1", "f2", "event", None]


def test_an_event_gets_snapshots_of_its_scored_frames_a_trace_and_a_clip(media, tmp_path):
    events = play(media)
    media.close(60)
    assert [e["type"] for e in events] == ["start", "update", "update", "update", "end"]
    start, end = events[0], events[-1]
    folder = tmp_path / "snapshots" / start["event_id"]
    assert start["snapshot"] == f"snapshots/{start['event_id']}/start.jpg"
    assert end["snapshot"].endswith("/peak.jpg") and end["video"].startswith(f"snapshots/{start['event_id']}/clip.")
    # The pictures are of the frames that were scored: the start's (seq 10) and the peak's (seq 18).
    start_jpg, peak_jpg = (cv2.imread(str(folder / name)) for name in ("start.jpg", "peak.jpg"))
    scale = start_jpg.shape[1] / SHAPE[1]
    assert scale == 4  # enlarged to stay legible
    bar = caption_height(start_jpg.shape[1])  # the caption sits above the frame, hiding none of it
    assert start_jpg.shape[0] == bar + SHAPE[0] * scale
    start_jpg, peak_jpg = start_jpg[bar:], peak_jpg[bar:]
    assert bar_length(start_jpg, scale) == pytest.approx(4 * 10, abs=2)
    assert bar_length(peak_jpg, scale) == pytest.approx(4 * 18, abs=2)
    # The flagged boxes are drawn where the event says they are: red along the first box's top edge.
    box = start["boxes"][0]
    edge = start_jpg[
        round(box["y"] * scale) + 1, round(box["x"] * scale) + 4 : round((box["x"] + box["w"]) * scale) - 4
    ]
    blue, green, red = edge.astype(int).mean(axis=0)
    assert red > 180 and red > 2 * green and red > 2 * blue
    # And nothing is tinted where every patch scored low (the bar's row, left of the square's path).
    plain = cv2.resize(frame(10), None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
    below = slice(round(70 * scale), round(95 * scale))
    assert np.abs(cv2.cvtColor(start_jpg, cv2.COLOR_BGR2GRAY)[below].astype(int) - plain[below]).mean() < 4
    trace = json.loads((folder / "scores.json").read_text())
    assert trace["complete"] and trace["start_seq"] == 10 and trace["peak_seq"] == 18
    # From the pre-roll (1 s at 10 fps: frames 0..9) to the end (three frames below the level: seq 27).
    assert [f[0] for f in trace["frames"]] == list(range(0, 28))
    clip = read_clip(folder / end["video"].rsplit("/", 1)[1])
    assert len(clip) == 28 and clip[0].shape == (SHAPE[0] + caption_height(SHAPE[1]), SHAPE[1], 3)
    assert bar_length(clip[0]) == pytest.approx(0, abs=3) and bar_length(clip[-1]) == pytest.approx(4 * 27, abs=3)


def test_a_clip_stops_at_its_longest_and_the_event_goes_on(tmp_path):
    media = EventMedia(tmp_path, MediaConfig(preroll_seconds=0.5, max_clip_seconds=1.0), SPEC, max_boxes=10)
    events = play(media)
    media.close(60)
    folder = tmp_path / "snapshots" / events[0]["event_id"]
    assert events[-1]["type"] == "end" and events[-1]["frames"] == 18
    assert len(read_clip(next(folder.glob("clip.*")))) == 10  # 1 s at 10 fps, pre-roll included


def test_without_previews_an_event_still_has_its_trace_and_the_alerter_is_not_held_up(tmp_path, monkeypatch):
    monkeypatch.setattr("streamer.pipeline.media.PREVIEW_WAIT_SECONDS", 0.05)
    media = EventMedia(tmp_path, MediaConfig(), SPEC, max_boxes=10)
    started = time.monotonic()
    events = play(media, previews=False)
    assert time.monotonic() - started < 1.0  # the event path only queues
    media.close(60)
    folder = tmp_path / "snapshots" / events[0]["event_id"]
    assert sorted(p.name for p in folder.iterdir()) == ["scores.json"]


def test_a_corrupt_preview_costs_its_pictures_only(tmp_path):
    media = EventMedia(tmp_path, MediaConfig(preroll_seconds=0.0), SPEC, max_boxes=10)
    for seq in range(40):
        media.ring.put("cam1", "s1", Preview(seq, time.time(), FPS, b"\xff\xd8 garbage"))
    events = play(media, previews=False)
    media.close(60)
    folder = tmp_path / "snapshots" / events[0]["event_id"]
    assert (folder / "scores.json").exists() and not (folder / "start.jpg").exists()
    assert not list(folder.glob("clip.*"))


def test_codecs_are_probed_and_one_that_browsers_play_is_chosen():
    available = writable_codecs()
    assert available, "this OpenCV build writes no browser-playable video"
    assert set(available) <= set(CLIP_CODECS)
    assert choose_codec("auto") == available[0]
    assert choose_codec("no-such-codec") is None


def test_the_preview_reader_drops_what_is_not_a_preview_of_a_configured_camera(tmp_path):
    endpoint = f"tcp://127.0.0.1:{free_port_base(1)}"
    cfg = pipeline_config.PipelineConfig(
        cameras=[pipeline_config.CameraConfig(id="cam1", source=0, preview_endpoint=endpoint)], run_dir=str(tmp_path)
    )

    def rejected(reason: str) -> float:
        return REGISTRY.get_sample_value("vad_messages_rejected_total", {"stage": "previews", "reason": reason}) or 0

    before = {reason: rejected(reason) for reason in ("malformed", "unexpected_kind", "unknown_camera")}
    ring = PreviewRing(keep_frames=10)
    with zmq.Context() as ctx, ctx.socket(zmq.PUB) as hostile:
        hostile.setsockopt(zmq.LINGER, 0)
        hostile.bind(endpoint)
        reader = PreviewReader(cfg, ring, None)
        try:
            header = {"camera": "cam1", "stream": "s1", "t_capture": time.time(), "index": 1, "clip": "", "reset": True}
            jpeg = {"jpeg": encode_jpeg(frame(1), 90)}
            good = messages.encode({**header, "kind": "preview", "seq": 0, "fps": 10.0}, jpeg)

            def delivered() -> bool:  # PUB drops until the reader's subscription arrives: resend until it lands
                hostile.send_multipart(good)
                return ring.get("cam1", "s1", 0) is not None

            wait_for(delivered, 10, "a first preview through")
            hostile.send_multipart([b"\x00 not json"])
            hostile.send_multipart([b"part"] * 50)
            hostile.send_multipart(messages.encode({**header, "kind": "frame", "seq": 1}, {"image": frame(1)}))
            hostile.send_multipart(
                messages.encode({**header, "camera": "cam9", "kind": "preview", "seq": 2, "fps": 1.0}, jpeg)
            )
            hostile.send_multipart(messages.encode({**header, "kind": "preview", "seq": 3, "fps": 10.0}, jpeg))
            wait_for(lambda: ring.get("cam1", "s1", 3) is not None, 10, "the good preview after the bad ones")
        finally:
            reader.close()
    assert rejected("malformed") - before["malformed"] >= 2
    assert rejected("unexpected_kind") - before["unexpected_kind"] == 1
    assert rejected("unknown_camera") - before["unknown_camera"] == 1
    assert ring.get("cam1", "s1", 2) is None and ring.held()[0] == 2
