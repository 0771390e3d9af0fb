"""Small JPEGs of the scored frames, from capture to the alerter, for event snapshots and clips.

Capture publishes each frame it sends on, downscaled to `alerter.media.max_width`
and JPEG-encoded, on an XPUB socket (`preview` messages): a slow or absent reader
never holds capture up, it only misses previews. A recorded source waits (up to
READER_WAIT_SECONDS) for the alerter to subscribe before its first frame, so its
previews are as complete as its scores. The alerter reads them in a
thread into a `PreviewRing` per camera, keyed by stream and sequence number, the
same key its scores carry, so a snapshot shows exactly the frame that was scored.
The scores of a frame come through the patch stage and a scorer, so its preview
is normally there first; a reader asking for a frame not yet arrived waits briefly.

The ring is bounded three ways: frames the media writer has passed (beyond the
pre-roll it may still need) are dropped, and so is the oldest beyond a frame count
and a byte count, whatever the writer does.
"""

from __future__ import annotations

import dataclasses
import logging
import struct
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import cv2
import numpy as np
import zmq

from . import messages
from .config import PipelineConfig
from .messages import MessageError
from .runtime import Inbox, make_socket

log = logging.getLogger(__name__)

PUBLISH_HIGH_WATER_MARK = 64  # previews queued for the alerter before new ones are dropped
IN_FLIGHT_FRAMES = 512  # previews held ahead of the media writer: frames between capture and alert decision
RING_MAX_BYTES = 64 << 20  # per camera, whatever the frame count
MAX_SIDE = 4096  # a preview claiming more pixels is refused before it is decoded
READER_WAIT_SECONDS = 10.0


def publisher_socket(ctx: zmq.Context, endpoint: str, cfg: PipelineConfig, curve) -> zmq.Socket:
    """Capture's publishing socket: a deeper queue than the stage links, little kept at exit.

    XPUB rather than PUB: it tells when a reader subscribes (`PreviewPublisher.wait_for_reader`).
    """
    messaging = dataclasses.replace(cfg.messaging, high_water_mark=PUBLISH_HIGH_WATER_MARK, linger_seconds=0.5)
    return make_socket(ctx, zmq.XPUB, endpoint, bind=True, messaging=messaging, curve=curve)


class PreviewPublisher:
    """Encodes and publishes one camera's previews; never blocks."""

    def __init__(self, socket: zmq.Socket, max_width: int, quality: int, fps: float):
        self.socket = socket
        self.max_width = max_width
        self.quality = quality
        self.fps = fps

    def wait_for_reader(self, timeout: float, stop: threading.Event) -> bool:
        """Wait until a reader subscribes (or `timeout` seconds, or `stop`); True if one did."""
        deadline = time.monotonic() + timeout
        while not stop.is_set() and time.monotonic() < deadline:
            if self.socket.poll(100):
                self._drain()
                return True
        return False

    def _drain(self) -> None:
        """Read the (un)subscription notices XPUB queues, so readers coming and going cannot pile them up."""
        while self.socket.poll(0):
            self.socket.recv(zmq.NOBLOCK)

    def publish(self, header: dict, image: np.ndarray) -> None:
        """`header`: the frame message's (camera, stream, seq, t_capture, index, clip, reset)."""
        self._drain()
        jpeg = encode_jpeg(downscale(image, self.max_width), self.quality)
        parts = messages.encode({**header, "kind": "preview", "fps": float(self.fps)}, {"jpeg": jpeg})
        self._send(parts)

    def end(self, header: dict) -> None:
        """The stream is over (`header`: camera, stream, seq, reason): the reader expects capture to go."""
        self._send(messages.encode({**header, "kind": "end", "t_capture": time.time()}))

    def _send(self, parts: list) -> None:
        try:
            self.socket.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:  # XPUB drops rather than blocks; this is only belt and braces
            pass


def downscale(image: np.ndarray, max_width: int) -> np.ndarray:
    height, width = image.shape[:2]
    if width <= max_width:
        return image
    size = (max_width, max(1, round(height * max_width / width)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def encode_jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"cannot encode a {image.shape} image as JPEG")
    return data.reshape(-1)


def jpeg_size(data: bytes | memoryview) -> tuple[int, int] | None:
    """(height, width) from a JPEG's frame header, without decoding it; None if there is no such header."""
    data = bytes(data[: 1 << 16]) if len(data) > 1 << 16 else bytes(data)  # headers come first
    if data[:2] != b"\xff\xd8":
        return None
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # no length field
            at += 2
            continue
        (length,) = struct.unpack(">H", data[at + 2 : at + 4])
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            if at + 9 > len(data):
                return None
            height, width = struct.unpack(">HH", data[at + 5 : at + 9])
            return height, width
        if marker == 0xDA or length < 2:  # image data before any frame header
            return None
        at += 2 + length
    return None


def decode_preview(jpeg: bytes) -> np.ndarray | None:
    """The preview image (grayscale or BGR), or None when it is not a JPEG of a sane size."""
    size = jpeg_size(jpeg)
    if size is None or not (0 < size[0] <= MAX_SIDE and 0 < size[1] <= MAX_SIDE):
        return None
    return cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_UNCHANGED)


@dataclass
class Preview:
    seq: int
    t_capture: float
    fps: float
    jpeg: bytes


class _CameraRing:
    def __init__(self):
        self.stream: str | None = None
        self.frames: OrderedDict[int, Preview] = OrderedDict()
        self.bytes = 0
        self.newest = -1  # highest seq received in this stream
        self.passed = -1  # highest seq the media writer has processed


class PreviewRing:
    """Recent previews per camera; `put` from the reader thread, `get` and `passed` from the media writer."""

    def __init__(self, keep_frames: int, max_frames: int | None = None, max_bytes: int = RING_MAX_BYTES):
        self.keep_frames = keep_frames  # frames before the writer's position still wanted (pre-roll)
        self.max_frames = max_frames or keep_frames + IN_FLIGHT_FRAMES
        self.max_bytes = max_bytes
        self._cameras: dict[str, _CameraRing] = {}
        self._changed = threading.Condition()

    def put(self, camera: str, stream: str, preview: Preview) -> None:
        with self._changed:
            ring = self._cameras.setdefault(camera, _CameraRing())
            if ring.stream != stream:  # a new capture stream numbers from 0 again
                ring.__init__()
                ring.stream = stream
            if preview.seq in ring.frames or preview.seq <= ring.passed:
                return
            ring.frames[preview.seq] = preview
            ring.bytes += len(preview.jpeg)
            ring.newest = max(ring.newest, preview.seq)
            self._trim(ring)
            self._changed.notify_all()

    def passed(self, camera: str, stream: str, seq: int) -> None:
        """The media writer is done with this camera's frames up to `seq`, but for the last `keep_frames`."""
        with self._changed:
            ring = self._cameras.get(camera)
            if ring is None or ring.stream != stream:
                return
            ring.passed = max(ring.passed, seq)
            self._trim(ring)

    def get(self, camera: str, stream: str, seq: int, timeout: float = 0.0) -> Preview | None:
        """The preview of a frame; waits up to `timeout` while it may still come: previews of this stream
        arrive, none newer yet. A camera whose previews do not arrive at all costs no waiting."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                ring = self._cameras.get(camera)
                if ring is None or ring.stream != stream:
                    return None
                found = ring.frames.get(seq)
                if found is not None or ring.newest >= seq:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._changed.wait(left)

    def _trim(self, ring: _CameraRing) -> None:
        while ring.frames:
            oldest = next(iter(ring.frames))
            wanted = oldest >= ring.passed - self.keep_frames
            if wanted and len(ring.frames) <= self.max_frames and ring.bytes <= self.max_bytes:
                break
            ring.bytes -= len(ring.frames.pop(oldest).jpeg)

    def held(self) -> tuple[int, int]:
        """(frames, bytes) held over all cameras."""
        with self._changed:
            return sum(len(r.frames) for r in self._cameras.values()), sum(r.bytes for r in self._cameras.values())


class PreviewReader:
    """A thread that subscribes to every camera's previews and fills a ring.

    Its socket lives in that thread, in a ZeroMQ context of its own: the preview traffic
    keeps its own I/O thread, apart from the alerter's event sockets.
    """

    def __init__(self, cfg: PipelineConfig, ring: PreviewRing, curve):
        self.cfg = cfg
        self.cameras = {camera.id for camera in cfg.cameras}
        self.ring = ring
        self.curve = curve
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="previews", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        endpoints = {camera.preview_endpoint: camera.id for camera in self.cfg.cameras}
        first, *others = endpoints
        with zmq.Context() as ctx:
            socket = make_socket(ctx, zmq.SUB, first, bind=False, messaging=self.cfg.messaging, curve=self.curve)
            for endpoint in others:
                socket.connect(endpoint)
            socket.subscribe(b"")
            inbox = Inbox(socket, "previews", self.stop, self.cfg.messaging, connected=endpoints)
            try:
                while not self.stop.is_set():
                    message = inbox.receive()
                    if message is not None:
                        inbox.handle(self._accept, message)
            finally:
                socket.setsockopt(zmq.LINGER, 0)
                inbox.close()

    def _accept(self, message: messages.Message) -> None:
        if message.kind == "end":  # capture is going: its connection closing is no fault
            return
        if message.kind != "preview":
            raise MessageError("unexpected_kind", f"{message.kind} message on the preview input")
        if message.camera not in self.cameras:
            raise MessageError("unknown_camera", f"camera {message.camera!r} is not configured")
        header = message.header
        preview = Preview(header["seq"], header["t_capture"], header["fps"], message.arrays["jpeg"].tobytes())
        self.ring.put(message.camera, header["stream"], preview)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
