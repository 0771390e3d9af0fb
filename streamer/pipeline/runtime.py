"""What every stage process shares: sockets, receiving with checks, sending with backpressure, stopping.

Stopping: SIGTERM or SIGINT sets a `threading.Event`. A stage then stops taking
new work from upstream once its input has been quiet for `IDLE_SECONDS` (or
after `linger_seconds` at most), so frames already sent to it are finished:
with `vad run` stopping stages upstream first, nothing in flight is lost.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import time
from collections import Counter

import zmq

from . import telemetry
from .config import MessagingConfig
from .links import Links
from .messages import Message, MessageError, decode, receive, send
from .security import Curve

log = logging.getLogger(__name__)

IDLE_SECONDS = 0.2  # input quiet this long after a stop request means drained
SEND_RETRY_MS = 100  # a blocked send wakes this often to check for a stop request


SUPERVISOR_PID_ENV = "VAD_SUPERVISOR_PID"


# glibc mallopt parameters, and the values a stage process sets (see tune_allocator).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
# Above a 1080p RGB frame (6.2 MB), so a frame's buffers stay in the heap; larger blocks (a peer's message
# near the 16 MiB limit) are still mapped by themselves and unmapped when freed. The heap keeps at most
# twice that of free top (as glibc sets it when it adapts): a burst of hostile messages must not leave the
# stage holding 64 MiB it no longer uses (tests/test_hostile_peers.py).
MMAP_THRESHOLD_BYTES = 8 << 20
TRIM_THRESHOLD_BYTES = 16 << 20


def tune_allocator() -> bool:
    """Let glibc reuse freed buffers of up to 8 MiB rather than unmap them; False where there is no glibc.

    Every frame allocates and frees buffers of a few hundred KB (OpenCV's optical flow alone several), above
    glibc's initial 128 KiB mmap threshold: each is then mapped and unmapped again, and its pages fault in
    zeroed on every frame. glibc raises the threshold itself only once a larger block is freed, which may
    never happen. Setting it (and the trim threshold with it) at start keeps those buffers in the heap;
    without it, Farneback flow on Ped2 frames took 1.34x the CPU time (docs/benchmarks.md, "The cuts").
    """
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None) if sys.platform.startswith("linux") else None
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT (main thread only), or when the supervisor that started us is gone."""
    stop = threading.Event()

    def handler(signum, _frame):
        log.info("%s received: finishing", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    supervisor = os.environ.get(SUPERVISOR_PID_ENV)
    if supervisor:
        threading.Thread(target=_watch_parent, args=(int(supervisor), stop), daemon=True).start()
    return stop


def _watch_parent(pid: int, stop: threading.Event) -> None:
    """A supervisor killed outright (kill -9) cannot stop its stages: they notice and stop themselves."""
    while not stop.wait(1.0):
        if os.getppid() != pid:
            log.warning("supervisor (pid %d) is gone: finishing", pid)
            stop.set()


def make_socket(
    ctx: zmq.Context,
    kind: int,
    endpoint: str,
    bind: bool,
    messaging: MessagingConfig,
    curve: Curve | None = None,
    options: dict[int, int] | None = None,
    events: bool = False,
) -> zmq.Socket:
    """A socket with small high-water marks (backpressure), bounded linger and interruptible sends.

    Every option, `options` (overriding the defaults) included, is set before the bind or
    connect: libzmq copies a socket's options into each listener and connection when it
    is made, and a later setsockopt never reaches them.

    MAXMSGSIZE: libzmq drops the connection of a peer that sends a part larger than the
    message limit, before allocating it (the sender's numbered frame is then counted lost
    downstream); `decode` checks the total of all parts. With `curve` (security.curve)
    a binding socket is a CURVE server, a connecting one a client; set before the
    first bind or connect, the keys hold for every endpoint the socket is given;
    `events`: the alerter's events socket, which also admits the subscriber keys.
    """
    socket = ctx.socket(kind)
    if curve is not None:
        if bind:
            curve.server(socket, events=events)
        else:
            curve.client(socket)
    socket.setsockopt(zmq.MAXMSGSIZE, messaging.max_message_bytes)
    socket.setsockopt(zmq.SNDHWM, messaging.high_water_mark)
    socket.setsockopt(zmq.RCVHWM, messaging.high_water_mark)
    socket.setsockopt(zmq.LINGER, int(messaging.linger_seconds * 1000))
    socket.setsockopt(zmq.SNDTIMEO, SEND_RETRY_MS)
    for option, value in (options or {}).items():
        socket.setsockopt(option, value)
    if bind:
        if endpoint.startswith("ipc://"):
            os.makedirs(os.path.dirname(endpoint[len("ipc://") :]) or ".", exist_ok=True)
        socket.bind(endpoint)
    else:
        socket.connect(endpoint)
    return socket


def send_blocking(
    socket: zmq.Socket, parts: list, stop: threading.Event, linger_seconds: float, links: Links | None = None
) -> bool:
    """Send, waiting while downstream is full (reading the socket's `links` meanwhile: a refusal shows there);
    after a stop request give up after `linger_seconds`."""
    deadline = None
    while True:
        try:
            send(socket, parts)
            return True
        except zmq.Again:
            if links is not None:
                links.poll()
            if stop.is_set():
                deadline = deadline or time.monotonic() + linger_seconds
                if time.monotonic() > deadline:
                    return False


class Inbox:
    """Receives and checks messages on one socket; rejected ones are counted, logged and dropped.

    `connected`: the endpoints the socket connected to, each with the camera whose
    stream comes from it. Its `links` make dropped or refused connections again and
    report refusals (see links.py); a link that closes after its camera's stream
    ended is expected and logged as such. The monitor is read when no message is
    waiting, or once a second; a dropped link is judged only when none is waiting,
    so that its last messages, an `end` among them, are taken first.
    """

    def __init__(
        self,
        socket: zmq.Socket,
        stage: str,
        stop: threading.Event,
        messaging: MessagingConfig,
        connected: dict[str, str] | None = None,
    ):
        self.socket = socket
        self.stage = stage
        self.stop = stop
        self.max_bytes = messaging.max_message_bytes
        self.linger_seconds = messaging.linger_seconds
        self.connected = connected or {}
        self.links = Links(socket, stage, tuple(self.connected))
        self._links_read = 0.0
        self._deadline: float | None = None
        self._drained = False
        self._rejections: Counter[str] = Counter()

    def _read_links(self) -> None:
        now, waiting = time.monotonic(), bool(self.socket.poll(0))
        if now - self._links_read >= 1.0 or not waiting:
            self._links_read = now
            self.links.poll(settle=not waiting)

    def _note_end(self, message: Message) -> None:
        """Which connected endpoints' cameras have ended their stream (their links may close)."""
        for endpoint, camera in self.connected.items():
            if camera == message.camera:
                (self.links.ended.add if message.kind == "end" else self.links.ended.discard)(endpoint)

    def close(self) -> None:
        self.links.close()
        self.socket.close()

    def open(self) -> bool:
        """False once a stop was requested and the input went quiet (or the linger time ran out)."""
        if not self.stop.is_set():
            return True
        self._deadline = self._deadline or time.monotonic() + self.linger_seconds
        return not self._drained and time.monotonic() < self._deadline

    def receive(self, timeout: float = IDLE_SECONDS) -> Message | None:
        """The next good message, or None when none arrived within `timeout` seconds."""
        self._read_links()
        if not self.socket.poll(int(timeout * 1000)):
            self._drained = self.stop.is_set()
            return None
        return self._checked()

    def receive_more(self, limit: int) -> list[Message]:
        """Up to `limit` more messages that are already waiting, without blocking."""
        found = []
        while len(found) < limit:
            try:
                message = self._checked(zmq.NOBLOCK)
            except zmq.Again:
                break
            if message is not None:
                found.append(message)
        return found

    def _checked(self, flags: int = 0) -> Message | None:
        try:
            message = decode(receive(self.socket, flags), self.max_bytes)
        except MessageError as e:
            self.reject(e)
            return None
        self._note_end(message)
        return message

    def handle(self, work, *args):
        """`work(*args)`, or None with the message counted as rejected if it raises.

        A message that trips an unexpected error is dropped like a malformed one: one
        bad frame must not stop a camera's stage.
        """
        try:
            return work(*args)
        except MessageError as e:
            self.reject(e)
        except Exception as e:
            self.reject(MessageError("error", f"{type(e).__name__}: {e}"))
        return None

    def reject(self, error: MessageError) -> None:
        telemetry.MESSAGES_REJECTED.labels(self.stage, error.reason).inc()
        self._rejections[error.reason] += 1
        count = self._rejections[error.reason]
        if count in (1, 10, 100) or count % 1000 == 0:  # a flood of bad messages must not flood the log
            log.warning("%s: dropped a message (%d %s so far): %s", self.stage, count, error.reason, error)
