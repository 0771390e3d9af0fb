"""Capture stage: read one camera's source, send grayscale frames to its patch stage.

Two ways of handing frames on:
  live (cameras, URLs; `live: true`): a reader thread fills a small buffer and the
      oldest frame is dropped (and counted) when downstream falls behind, so memory
      and latency stay bounded;
  lossless (files, folders, Ped2): frames are read only as fast as downstream takes
      them, so every frame is scored.

Cameras and URLs reconnect with capped exponential backoff when lost or not yet
there; the stage never exits for that. Recorded sources end with an `end` message,
after which the stage idles until it is stopped.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from typing import Callable, Iterator

import zmq

from .. import ped2
from ..sources import FolderSource, Frame, SourceError, VideoSource, open_capture, to_gray
from . import messages, telemetry
from .checkpoint import Checkpoint, state_path
from .config import CameraConfig, PipelineConfig
from .links import Links
from .preview import READER_WAIT_SECONDS, PreviewPublisher, publisher_socket
from .runtime import make_socket, send_blocking
from .security import curve_for

log = logging.getLogger(__name__)

PED2_FPS = 10.0

# (frame, clip name, starts a new recording)
Captured = tuple[Frame, str, bool]


class FrameSender:
    """Numbers frames 0, 1, 2, ... under a stream id and sends them downstream.

    A stream outlives its process: each number is written to a checkpoint before its
    frame goes out, so a capture restarted after a crash continues the same stream
    after the last number the dead process may have used. Frames that process had
    numbered but not delivered leave a gap the alerter counts as lost, rather than
    vanishing with an abandoned stream. A stream that ended (`end` sent) is over; the
    next run starts a new one.
    """

    def __init__(
        self,
        socket: zmq.Socket,
        camera: str,
        stop: threading.Event,
        cfg: PipelineConfig,
        preview: PreviewPublisher | None = None,
    ):
        self.socket = socket
        self.links = Links(socket, "capture")
        self.preview = preview  # also publishes each frame sent, small, for event media
        self.camera = camera
        self.stop = stop
        self.linger_seconds = cfg.messaging.linger_seconds
        self.max_bytes = cfg.messaging.max_message_bytes
        self.checkpoint = Checkpoint(state_path(cfg.run_dir, f"capture-{camera}"))
        resumed = self.checkpoint.read() or {}
        if isinstance(resumed.get("stream"), str) and isinstance(resumed.get("next_seq"), int):
            self.stream, self.seq = resumed["stream"], resumed["next_seq"]
            log.warning("%s: the last run did not end its stream: %s resumes at seq %d", camera, self.stream, self.seq)
        else:
            self.stream, self.seq = uuid.uuid4().hex[:12], 0
        self.frames = 0
        self._oversized = telemetry.FRAMES_DROPPED.labels(camera, "oversized")

    def _send(self, header: dict, arrays: dict | None = None) -> bool:
        parts = messages.encode({"camera": self.camera, "stream": self.stream, "seq": self.seq, **header}, arrays)
        self.checkpoint.write({"stream": self.stream, "next_seq": self.seq + 1})  # ahead of the send
        self.links.poll()
        if not send_blocking(self.socket, parts, self.stop, self.linger_seconds, self.links):
            return False
        self.seq += 1
        return True

    def frame(self, item: Captured) -> bool:
        frame, clip, reset = item
        if frame.image.nbytes + messages.MAX_HEADER_BYTES > self.max_bytes:
            self._oversized.inc()
            log.error(
                "%s: a %dx%d frame does not fit messaging.max_message_bytes (%d): dropped",
                self.camera,
                frame.image.shape[1],
                frame.image.shape[0],
                self.max_bytes,
            )
            return True
        header = {"kind": "frame", "t_capture": frame.timestamp, "index": frame.index, "clip": clip, "reset": reset}
        seq = self.seq
        if not self._send(header, {"image": frame.image}):
            return False
        if self.preview is not None:
            self.preview.publish({"camera": self.camera, "stream": self.stream, "seq": seq, **header}, frame.image)
        telemetry.FRAMES_CAPTURED.labels(self.camera).inc()
        self.frames += 1
        return True

    def end(self, reason: str) -> None:
        if self.preview is not None:
            self.preview.end({"camera": self.camera, "stream": self.stream, "seq": self.seq, "reason": reason})
        if self._send({"kind": "end", "t_capture": time.time(), "reason": reason}):
            self.checkpoint.clear()  # the stream is over: the next run starts a new one
        else:
            log.warning("%s: could not send the end of stream downstream", self.camera)


def camera_frames(camera: CameraConfig, stop: threading.Event, opener: Callable = open_capture) -> Iterator[Captured]:
    """Frames of a camera or stream, reopened with backoff whenever it fails, until `stop`.

    `opener(target)` returns something like cv2.VideoCapture (read() -> (ok, image),
    release()) or raises SourceError.
    """
    target = int(camera.source) if str(camera.source).isdigit() else camera.source
    up, attempt, index, first_open = telemetry.CAMERA_UP.labels(camera.id), 0, 0, True
    up.set(0)
    while not stop.is_set():
        if not first_open:
            telemetry.CAMERA_RECONNECTS.labels(camera.id).inc()
        first_open = False
        try:
            capture = opener(target)
        except Exception as e:  # SourceError, or whatever a capture backend throws
            delay = camera.reconnect.delay(attempt)
            log.warning("%s: %s; retrying in %.1f s", camera.id, e, delay)
            attempt += 1
            stop.wait(delay)
            continue
        reset = True  # a (re)opened camera starts a new recording: stateful stages forget the past
        why = "no frame"
        try:
            while not stop.is_set():
                ok, image = capture.read()
                if not ok or image is None:
                    break
                if reset:
                    log.info("%s: source up", camera.id)
                    up.set(1)
                attempt = 0
                index += 1
                yield Frame(index, to_gray(image), time.time()), "", reset
                reset = False
        except Exception as e:  # a backend error mid-stream is a lost camera, not a dead stage
            why = str(e)
        finally:
            capture.release()
        if not stop.is_set():
            up.set(0)
            delay = camera.reconnect.delay(attempt)
            log.warning("%s: source lost (%s); reconnecting in %.1f s", camera.id, why, delay)
            attempt += 1
            stop.wait(delay)
    up.set(0)


def recorded_sources(camera: CameraConfig) -> list[tuple[str, VideoSource | FolderSource]]:
    """(clip name, source) pairs of a file, folder or Ped2 source; SourceError now if unreadable."""
    kind = camera.source_kind
    if kind == "file":
        return [("", VideoSource(str(camera.source)))]
    if kind == "folder":
        return [("", FolderSource(camera.source))]
    name = str(camera.source)
    if name.lower() in ("test", "train"):
        clips = ped2.test_clips(camera.data) if name.lower() == "test" else ped2.training_clips(camera.data)
    else:
        everything = ped2.test_clips(camera.data) + ped2.training_clips(camera.data)
        clips = [c for c in everything if c.name.lower() == name.lower()]
        if not clips:
            raise SourceError(f"no Ped2 clip {name!r} (use test, train, or a name like Test002)")
    return [(clip.name, FolderSource(clip.path)) for clip in clips]


def playback_fps(camera: CameraConfig, sources: list) -> float:
    """The rate recorded sources play at: `fps`, else the file's own, else Ped2's; SourceError if pacing lacks one."""
    fps = camera.fps or getattr(sources[0][1], "fps", 0) or (PED2_FPS if camera.source_kind == "ped2" else 0)
    if camera.pace and not fps:
        raise SourceError(f"camera {camera.id}: pace: true needs fps (the source does not say its frame rate)")
    return fps


def recorded_frames(camera: CameraConfig, stop: threading.Event) -> Iterator[Captured]:
    """Frames of recorded sources in order, paced to `fps` if asked, looping if asked.

    The sources open now, so a missing file is an error at start rather than later.
    """
    sources = recorded_sources(camera)
    return _play(camera, sources, playback_fps(camera, sources), stop)


def _play(camera: CameraConfig, sources: list, fps: float, stop: threading.Event) -> Iterator[Captured]:
    """Paced, like a camera: one frame every 1/fps s. After a stall (downstream took nothing for a while) it goes
    on from the next frame at real time, rather than replaying the frames it fell behind by at full speed."""
    up = telemetry.CAMERA_UP.labels(camera.id)
    up.set(1)
    period = 1.0 / fps if camera.pace else 0.0
    due = time.monotonic()
    while not stop.is_set():
        for clip, source in sources:
            skipped, reset = source.skipped, True
            for frame in source:
                now = time.monotonic()
                if now < due:
                    stop.wait(due - now)
                elif now - due > period:  # more than a frame late: a stall, not jitter to make up
                    due = now
                due += period
                if stop.is_set():
                    break
                frame.timestamp = time.time()  # captured now, after pacing
                yield frame, clip, reset
                reset = False
            if source.skipped > skipped:
                telemetry.FRAMES_DROPPED.labels(camera.id, "unreadable").inc(source.skipped - skipped)
        if not camera.loop:
            break
    up.set(0)


class LatestFrames:
    """A small buffer between a reader thread and the sender; when full, the oldest frame is dropped."""

    def __init__(self, size: int, camera: str):
        self._items: deque[Captured] = deque()
        self._size = size
        self._ready = threading.Condition()
        self._dropped = telemetry.FRAMES_DROPPED.labels(camera, "backpressure")
        self._depth = telemetry.QUEUE_DEPTH.labels("capture", camera)
        self.finished = False

    def put(self, item: Captured) -> None:
        with self._ready:
            if len(self._items) == self._size:
                oldest = self._items.popleft()
                if oldest[2] and self._items:  # keep the new-recording mark on the frame that now comes first
                    frame, clip, _ = self._items[0]
                    self._items[0] = (frame, clip, True)
                self._dropped.inc()
            self._items.append(item)
            self._depth.set(len(self._items))
            self._ready.notify()

    def finish(self) -> None:
        with self._ready:
            self.finished = True
            self._ready.notify()

    def get(self, timeout: float) -> Captured | None:
        with self._ready:
            if not self._items:
                self._ready.wait(timeout)
            if not self._items:
                return None
            item = self._items.popleft()
            self._depth.set(len(self._items))
            return item

    def __len__(self) -> int:
        return len(self._items)


def send_live(frames: Iterator[Captured], sender: FrameSender, size: int, stop: threading.Event) -> None:
    """Read in a thread, send from here; stop at the end of the frames or on `stop`."""
    buffer = LatestFrames(size, sender.camera)

    def read() -> None:
        try:
            for item in frames:
                buffer.put(item)
        except Exception:  # a reader must never die silently: log, then end the stream
            log.exception("%s: reading failed", sender.camera)
        finally:
            buffer.finish()

    # A daemon thread: a camera read can block for long and must not hold up the exit.
    threading.Thread(target=read, name=f"read-{sender.camera}", daemon=True).start()
    while len(buffer) or not (buffer.finished or stop.is_set()):
        item = buffer.get(timeout=0.2)
        if item is not None and not sender.frame(item):
            break


def run(cfg: PipelineConfig, camera_id: str, stop: threading.Event, opener: Callable = open_capture) -> int:
    camera = cfg.camera(camera_id)
    live_source = camera.source_kind in ("camera", "url")
    if live_source:
        frames, fps = camera_frames(camera, stop, opener), camera.fps or 0.0
    else:  # the rate a recording plays at, for its clips, also when it is read faster (pace: false)
        frames, fps = recorded_frames(camera, stop), playback_fps(camera, recorded_sources(camera))
    log.info(
        "%s: %s source %s, %s",
        camera.id,
        camera.source_kind,
        camera.source,
        "live (drops oldest)" if camera.is_live else "lossless",
    )
    with zmq.Context() as ctx, curve_for(ctx, cfg.security.curve) as curve:
        socket = make_socket(ctx, zmq.PUSH, camera.frames_endpoint, bind=True, messaging=cfg.messaging, curve=curve)
        preview = None
        if cfg.alerter.media.enabled:
            media = cfg.alerter.media
            preview_socket = publisher_socket(ctx, camera.preview_endpoint, cfg, curve)
            preview = PreviewPublisher(preview_socket, media.max_width, media.jpeg_quality, fps)
            if not camera.is_live and not preview.wait_for_reader(READER_WAIT_SECONDS, stop):
                log.warning(
                    "%s: no alerter took previews within %.0f s: events may lack media", camera.id, READER_WAIT_SECONDS
                )
        sender = FrameSender(socket, camera.id, stop, cfg, preview)
        if camera.is_live:
            send_live(frames, sender, camera.buffer_frames, stop)
        else:
            for item in frames:
                if not sender.frame(item):
                    break
        if stop.is_set():
            sender.end("shutdown")
        else:
            sender.end("end_of_stream")
            log.info("%s: %d frames sent, stream ended; idle until stopped", camera.id, sender.frames)
            # Exiting now could drop frames still queued for a busy patch stage (ZeroMQ only lingers
            # so long); staying up until stopped keeps a recorded source lossless to the end.
            stop.wait()
        sender.links.close()
        socket.close()
        if preview is not None:
            preview.socket.close()
    return 0
