"""Event media: start and peak snapshots, the score trace and a clip of each event, off the event path.

Files, under RUN_DIR/snapshots/<event_id>/:
  start.jpg    the frame that started the event            (written at the start)
  peak.jpg     the frame of the highest smoothed score     (rewritten at each update and at the end)
  scores.json  smoothed and raw score of every frame, from the pre-roll to the end
  clip.mp4     pre-roll (`preroll_seconds`) to the end, at most `max_clip_seconds`, the flagged patches boxed:
  clip.webm    H.264 in MP4 where this OpenCV build writes it, else VP8 in WebM (opencv-python-headless has
               no H.264 encoder; its VP9, in MP4 with clip_codec: vp9, costs about five times VP8's CPU);
               complete once the event has ended

The alerter's event path only queues: `frame` (every scored frame) and `event`
(every event, which gets its `snapshot` path here, and at the end its `video`:
the clip's path; `clip` already names the recording a frame came from).
A worker thread keeps each camera's recent frames, follows open events, and
renders snapshots from the scored frame's preview (`preview.PreviewRing`); a
second thread encodes clips. Both run at a lower CPU priority than the event
path, and both queues are bounded (MAX_BACKLOG_FRAMES, MAX_CLIP_BACKLOG): when
a writer falls that far behind, new frames are dropped and counted
(vad_media_dropped_total{reason="backlog"}); events never are.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ..patches import PatchExtractor, PatchSpec
from . import telemetry
from .events import top_boxes
from .preview import Preview, PreviewRing, decode_preview
from .review_config import MediaConfig
from .snapshots import (
    caption_height,
    draw_boxes,
    local_time,
    render_snapshot,
    to_bgr,
    with_caption,
    write_atomic,
    write_jpeg,
)

log = logging.getLogger(__name__)

SNAPSHOT_DIR = "snapshots"
# (fourcc, file suffix), in `auto` order: cheapest to encode first, each plays in current browsers.
CLIP_CODECS = {"h264": ("avc1", ".mp4"), "vp8": ("VP80", ".webm"), "vp9": ("vp09", ".mp4")}
MAX_FPS = 60  # bounds the pre-roll frames held per camera
PREVIEW_WAIT_SECONDS = 1.0  # for a preview that may still come (its scores overtook it)
MAX_BACKLOG_FRAMES = 2000  # frames waiting for the media worker (a few kB each) before new ones drop
MAX_CLIP_BACKLOG = 600  # previews waiting for the clip encoder (12-40 kB each) before new ones drop
MAX_TRACE_FRAMES = 36000  # score trace points per event (an hour at 10 fps)
STOP_SECONDS = 5.0  # at a stop request: time left to finish media before what remains is dropped
FINISH_SECONDS = 120.0  # at the end of every stream (exit_at_end): time to write everything


def without_media(event: dict) -> dict:
    """The media fields of an event when media are off: there are none."""
    return {**event, "snapshot": None, **({"video": None} if event["type"] == "end" else {})}


@contextlib.contextmanager
def _quiet_opencv():
    """OpenCV and FFmpeg report every codec they cannot open; a probe expects some to fail."""
    previous_env, previous_level = os.environ.get("OPENCV_FFMPEG_LOGLEVEL"), cv2.utils.logging.getLogLevel()
    os.environ["OPENCV_FFMPEG_LOGLEVEL"] = "-8"  # AV_LOG_QUIET, read when FFmpeg is first used
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(previous_level)
        if previous_env is None:
            del os.environ["OPENCV_FFMPEG_LOGLEVEL"]  # child processes (capture) keep FFmpeg's own errors
        else:
            os.environ["OPENCV_FFMPEG_LOGLEVEL"] = previous_env


@contextlib.contextmanager
def _stderr_muted():
    """OpenCV prints "tag ... is not supported" straight to stderr (fd 2) each time it opens a WebM writer
    (WebM has no codec tags; the writer works). Muted for the call, with the logging handlers held so that
    no other thread's log line goes missing meanwhile."""
    handlers = logging.getLogger().handlers
    for handler in handlers:
        handler.acquire()
    try:
        sys.stderr.flush()
        saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        os.close(null)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    finally:
        for handler in reversed(handlers):
            handler.release()


def open_writer(path: Path, codec: str, fps: float, size: tuple[int, int]) -> cv2.VideoWriter:
    fourcc, suffix = CLIP_CODECS[codec]
    with _stderr_muted() if suffix == ".webm" else contextlib.nullcontext():
        return cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, size)


@functools.lru_cache(maxsize=None)
def can_write(codec: str) -> bool:
    """Whether this OpenCV build writes clips in `codec` (a CLIP_CODECS key)."""
    with tempfile.TemporaryDirectory(prefix="vad-codec-") as folder, _quiet_opencv():
        writer = open_writer(Path(folder) / f"probe{CLIP_CODECS[codec][1]}", codec, 10, (64, 64))
        opened = writer.isOpened()
        writer.release()
    return opened


def writable_codecs() -> tuple[str, ...]:
    """Every clip codec this OpenCV build writes, in preference order."""
    return tuple(codec for codec in CLIP_CODECS if can_write(codec))


def choose_codec(choice: str) -> str | None:
    """The codec for `alerter.media.clip_codec`, None when this OpenCV build writes none that fits."""
    if choice == "auto":
        return next((codec for codec in CLIP_CODECS if can_write(codec)), None)
    return choice if choice in CLIP_CODECS and can_write(choice) else None


def lower_priority() -> None:
    """Nice this thread (Linux: per thread), so media never take CPU from the event path."""
    if sys.platform.startswith("linux"):
        tid = threading.get_native_id()
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + 10)


@dataclass
class FrameRecord:
    """What the media worker needs of one scored frame."""

    stream: str
    seq: int
    index: int | None
    reset: bool
    t_capture: float
    score: float
    smoothed: float
    patch_scores: np.ndarray
    level: float  # patch score that flags a patch in this frame
    frame_shape: tuple[int, int]


@dataclass
class ClipJob:
    path: Path
    fps: float
    max_frames: int
    queued: int = 0
    written: int = 0
    finished: bool = False
    writer: cv2.VideoWriter | None = None
    size: tuple[int, int] | None = None  # (width, height), even


@dataclass
class OpenEvent:
    event_id: str
    camera: str
    folder: Path
    threshold: float
    fps: float
    start_seq: int
    peak: FrameRecord
    peak_preview: Preview | None
    trace: list[FrameRecord] = field(default_factory=list)
    peak_written: int | None = None
    clip: ClipJob | None = None


class _Track:
    """One camera, as the media worker follows it."""

    def __init__(self, keep: int):
        self.stream: str | None = None
        self.recent: deque[FrameRecord] = deque(maxlen=keep + 1)
        self.open: OpenEvent | None = None


class _Queue:
    """A FIFO whose droppable items (frames) are bounded and whose others (events, finishes) never drop."""

    def __init__(self, max_droppable: int):
        self.items: deque = deque()
        self.max_droppable = max_droppable
        self.droppable = 0
        self.closed = False
        self.ready = threading.Condition()

    def put(self, item, droppable: bool) -> bool:
        with self.ready:
            if droppable:
                if self.droppable >= self.max_droppable:
                    return False
                self.droppable += 1
            self.items.append((droppable, item))
            self.ready.notify()
            return True

    def get(self):
        """The next item, or None once closed and empty."""
        with self.ready:
            while not self.items and not self.closed:
                self.ready.wait()
            if not self.items:
                return None
            droppable, item = self.items.popleft()
            self.droppable -= droppable
            return item

    def close(self) -> None:
        with self.ready:
            self.closed = True
            self.ready.notify_all()


def _report(what: str, count: int, error: Exception | str) -> None:
    if count in (1, 10, 100) or count % 1000 == 0:
        log.warning("media: %s (%d so far): %s", what, count, error)


class ClipEncoder:
    """Encodes clip frames in its own thread; one VideoWriter per open clip."""

    def __init__(self, codec: str, quality: int):
        self.codec = codec
        self.suffix = CLIP_CODECS[codec][1]
        self.quality = quality
        self.queue = _Queue(MAX_CLIP_BACKLOG)
        self.abandon = False  # past the stop deadline: skip frames, still close files
        self.errors = 0
        self.thread = threading.Thread(target=self._run, name="clips", daemon=True)
        self.thread.start()

    def open(self, folder: Path, fps: float, max_frames: int) -> ClipJob:
        return ClipJob(folder / f"clip{self.suffix}", fps, max_frames)

    def add(self, job: ClipJob, jpeg: bytes, flagged: list[dict], frame_shape, text: str) -> None:
        if job.finished or job.queued >= job.max_frames:
            return
        if self.queue.put(("frame", job, jpeg, flagged, frame_shape, text), droppable=True):
            job.queued += 1
        else:
            telemetry.MEDIA_DROPPED.labels("backlog").inc()
        if job.queued >= job.max_frames:
            self.finish(job)  # the clip is as long as it may be; the event goes on

    def finish(self, job: ClipJob) -> None:
        if not job.finished:
            job.finished = True
            self.queue.put(("finish", job), droppable=False)

    def waiting(self) -> int:
        return self.queue.droppable

    def _run(self) -> None:
        lower_priority()
        while (item := self.queue.get()) is not None:
            try:
                if item[0] == "frame":
                    if not self.abandon:
                        self._write(*item[1:])
                else:
                    self._close(item[1])
            except Exception as e:  # a full disk, an encoder error: this clip suffers, the next one is tried
                self.errors += 1
                telemetry.MEDIA_DROPPED.labels("error").inc()
                _report("clip frame not written", self.errors, e)

    def _write(self, job: ClipJob, jpeg: bytes, flagged: list[dict], frame_shape, text: str) -> None:
        image = decode_preview(jpeg)
        if image is None:
            telemetry.MEDIA_DROPPED.labels("bad_preview").inc()
            return
        image = to_bgr(image)
        if job.writer is None:
            job.size = (image.shape[1] // 2 * 2, image.shape[0] // 2 * 2)  # 4:2:0 video needs even sides
            size = (job.size[0], job.size[1] + caption_height(job.size[0]))
            job.writer = open_writer(self._partial(job), self.codec, job.fps, size)
            if not job.writer.isOpened():
                raise OSError(f"cannot open a {self.codec} writer for {job.path}")
        if (image.shape[1], image.shape[0]) != job.size:
            image = cv2.resize(image, job.size, interpolation=cv2.INTER_AREA)
        else:
            image = image.copy()
        draw_boxes(image, flagged, frame_shape, label=False)
        job.writer.write(with_caption(image, text, at_top=False))
        job.written += 1

    def _close(self, job: ClipJob) -> None:
        if job.writer is None:
            return
        job.writer.release()
        if job.written:
            os.replace(self._partial(job), job.path)
            telemetry.MEDIA_WRITTEN.labels("clip").inc()
        else:
            self._partial(job).unlink(missing_ok=True)

    @staticmethod
    def _partial(job: ClipJob) -> Path:
        return job.path.with_name(f".partial.{job.path.name}")  # keeps the suffix FFmpeg picks the container by

    def close(self, timeout: float) -> None:
        self.queue.close()
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.abandon = True
            log.warning("media: clips still encoding after %.0f s: their remaining frames are dropped", timeout)
            self.thread.join(STOP_SECONDS)


class EventMedia:
    """Queues what the event path hands over; a worker thread turns it into files."""

    def __init__(self, run_dir: str | os.PathLike, cfg: MediaConfig, spec: PatchSpec, max_boxes: int):
        self.root = Path(run_dir) / SNAPSHOT_DIR
        self.cfg = cfg
        self.extractor = PatchExtractor(spec)  # the worker's own: patch boxes in frame pixels
        self.max_boxes = max_boxes
        self.keep = math.ceil(cfg.preroll_seconds * MAX_FPS)  # pre-roll frames held, at the highest frame rate
        self.ring = PreviewRing(self.keep)  # filled by a preview.PreviewReader
        codec = choose_codec(cfg.clip_codec) if cfg.clips else None
        if cfg.clips and codec is None:
            log.warning("media: no clips: this OpenCV build writes none of %s", cfg.clip_codec)
        self.clips = ClipEncoder(codec, cfg.jpeg_quality) if codec else None
        if codec:
            log.info("media: clips in %s (%s)", codec, CLIP_CODECS[codec][1])
        self.tracks: dict[str, _Track] = {}
        self.queue = _Queue(MAX_BACKLOG_FRAMES)
        self.errors = 0
        self.thread = threading.Thread(target=self._run, name="media", daemon=True)
        self.thread.start()

    # The event path: queue and return.

    def frame(self, camera: str, header: dict, smoothed: float, patch_scores: np.ndarray, level: float) -> None:
        record = FrameRecord(
            header["stream"],
            header["seq"],
            header.get("index"),
            header["reset"],
            header["t_capture"],
            header["score"],
            smoothed,
            patch_scores,
            level,
            tuple(header["frame_shape"]),
        )
        if not self.queue.put(("frame", camera, record), droppable=True):
            telemetry.MEDIA_DROPPED.labels("backlog").inc()
        telemetry.MEDIA_BACKLOG.set(self.queue.droppable + (self.clips.waiting() if self.clips else 0))

    def event(self, event: dict) -> dict:
        """The event with its media paths (relative to the run dir); its files follow in the background."""
        folder = f"{SNAPSHOT_DIR}/{event['event_id']}"
        event = {**event, "snapshot": f"{folder}/{'start' if event['type'] == 'start' else 'peak'}.jpg"}
        if event["type"] == "end":
            event["video"] = f"{folder}/clip{self.clips.suffix}" if self.clips else None
        self.queue.put(("event", event["camera"], event), droppable=False)
        return event

    def close(self, timeout: float) -> None:
        """Write what is queued, within `timeout` seconds; then clips get what time is left."""
        end = time.monotonic() + timeout
        self.queue.close()
        self.thread.join(timeout)
        if self.thread.is_alive():
            log.warning("media: writer still busy after %.0f s: the rest is dropped", timeout)
        if self.clips:
            self.clips.close(max(0.5, end - time.monotonic()))

    # The worker.

    def _run(self) -> None:
        lower_priority()
        while (item := self.queue.get()) is not None:
            kind, camera, payload = item
            try:
                if kind == "frame":
                    self._on_frame(camera, payload)
                else:
                    self._on_event(camera, payload)
            except Exception as e:  # disk full, a bad preview...: this item's media suffer, never the alerter
                self.errors += 1
                telemetry.MEDIA_DROPPED.labels("error").inc()
                _report(f"{kind} of {camera} not handled", self.errors, e)
        for track in self.tracks.values():  # the alerter ended every open event before closing; belt and braces
            if track.open is not None and track.open.clip is not None and self.clips:
                self.clips.finish(track.open.clip)

    def _preview(self, camera: str, record: FrameRecord) -> Preview | None:
        preview = self.ring.get(camera, record.stream, record.seq, PREVIEW_WAIT_SECONDS)
        if preview is None:
            telemetry.MEDIA_DROPPED.labels("no_preview").inc()
        return preview

    def _on_frame(self, camera: str, record: FrameRecord) -> None:
        track = self.tracks.setdefault(camera, _Track(self.keep))
        if record.reset or record.stream != track.stream:
            track.recent.clear()  # a new recording: no pre-roll from the last one
            track.stream = record.stream
        self.ring.passed(camera, record.stream, record.seq)
        track.recent.append(record)
        event = track.open
        if event is None:
            return
        if len(event.trace) < MAX_TRACE_FRAMES:
            event.trace.append(record)
        preview = None
        if record.smoothed > event.peak.smoothed:
            preview = self._preview(camera, record)
            if preview is not None:
                event.peak, event.peak_preview = record, preview
        if event.clip is not None and not event.clip.finished:
            self._clip_frame(event, record, preview or self._preview(camera, record))

    def _on_event(self, camera: str, event: dict) -> None:
        track = self.tracks.get(camera)
        if event["type"] == "start":
            if track is not None and track.recent and track.recent[-1].seq == event["seq"]:
                track.open = self._start(camera, track, event)
            return
        opened = track.open if track is not None else None
        if opened is None or opened.event_id != event["event_id"]:
            return  # its start frame never reached the worker (dropped in a backlog)
        if opened.peak_written != opened.peak.seq:
            self._snapshot(opened, "peak", opened.peak, opened.peak_preview)
            opened.peak_written = opened.peak.seq
        ended = event["type"] == "end"
        self._write_trace(opened, complete=ended)
        if ended:
            if opened.clip is not None:
                self.clips.finish(opened.clip)
            track.open = None

    def _start(self, camera: str, track: _Track, event: dict) -> OpenEvent:
        current = track.recent[-1]
        preview = self._preview(camera, current)
        fps = self._fps(track, preview)
        pre_roll = list(track.recent)[-(round(self.cfg.preroll_seconds * fps) + 1) :]
        folder = self.root / event["event_id"]
        folder.mkdir(parents=True, exist_ok=True)
        opened = OpenEvent(
            event["event_id"], camera, folder, event["threshold"], fps, current.seq, current, preview, list(pre_roll)
        )
        self._snapshot(opened, "start", current, preview)
        if self.clips is not None:
            opened.clip = self.clips.open(folder, fps, max(1, round(self.cfg.max_clip_seconds * fps)))
            for record in pre_roll:
                self._clip_frame(opened, record, preview if record is current else self._preview(camera, record))
        self._write_trace(opened, complete=False)
        return opened

    def _fps(self, track: _Track, preview: Preview | None) -> float:
        """The source's frame rate: as capture says, else from capture times, else 10."""
        if preview is not None and preview.fps > 0:
            return min(float(preview.fps), MAX_FPS)
        times = [r.t_capture for r in track.recent]
        if len(times) >= 5:
            interval = float(np.median(np.diff(times)))
            if interval > 0:
                return float(np.clip(1.0 / interval, 1.0, MAX_FPS))
        return 10.0

    def _flagged(self, record: FrameRecord) -> list[dict]:
        boxes = self.extractor.boxes(record.frame_shape)
        return top_boxes(record.patch_scores, boxes, record.level, self.max_boxes)

    def _snapshot(self, opened: OpenEvent, name: str, record: FrameRecord, preview: Preview | None) -> None:
        image = decode_preview(preview.jpeg) if preview is not None else None
        if image is None:
            return
        text = (
            f"{opened.camera}  {local_time(record.t_capture)}  {name}: score {record.smoothed:.2f}, "
            f"threshold {opened.threshold:.2f}"
        )
        boxes = self.extractor.boxes(record.frame_shape)
        picture = render_snapshot(
            image, record.patch_scores, boxes, record.frame_shape, record.level, self._flagged(record), text
        )
        write_jpeg(opened.folder / f"{name}.jpg", picture, self.cfg.jpeg_quality)
        telemetry.MEDIA_WRITTEN.labels("snapshot").inc()

    def _clip_frame(self, opened: OpenEvent, record: FrameRecord, preview: Preview | None) -> None:
        if preview is None:
            return
        text = f"{opened.camera}  {local_time(record.t_capture)}  score {record.smoothed:.2f}"
        self.clips.add(opened.clip, preview.jpeg, self._flagged(record), record.frame_shape, text)

    def _write_trace(self, opened: OpenEvent, complete: bool) -> None:
        trace = {
            "event_id": opened.event_id,
            "camera": opened.camera,
            "threshold": opened.threshold,
            "fps": opened.fps,
            "start_seq": opened.start_seq,
            "peak_seq": opened.peak.seq,
            "complete": complete,
            "columns": ["seq", "frame_index", "capture_time", "smoothed", "score"],
            "frames": [
                [r.seq, r.index, round(r.t_capture, 3), round(float(r.smoothed), 4), round(float(r.score), 4)]
                for r in opened.trace
            ],
        }
        write_atomic(opened.folder / "scores.json", json.dumps(trace, separators=(",", ":")).encode())
