"""Puts one camera's results back in capture order after several scorers worked on them.

Capture numbers each run's messages 0, 1, 2, ... (`seq`) under a stream id. A
result that arrives early waits until the ones before it are through. If one
never comes (a rejected message, a crashed scorer), it is skipped after
`timeout` seconds or once `max_pending` results wait behind it, and counted as
lost (and logged). A new stream id means a new capture run: what is left of the
old stream is flushed in order and the new one starts.

`position` (stream, next seq) is what a restarted alerter starts from, so the
frames its killed predecessor had in flight are counted as lost like any other.
"""

from __future__ import annotations

import logging
import time
from collections import deque

from . import telemetry
from .messages import Message, MessageError

log = logging.getLogger(__name__)


class Reorder:
    def __init__(self, camera: str, max_pending: int, timeout: float, position: list | tuple | None = None):
        self.camera = camera
        self.max_pending = max_pending
        self.timeout = timeout
        self.stream: str | None = None
        self.next_seq = 0
        if position:
            self.stream, self.next_seq = position
        self._pending: dict[int, tuple[float, Message]] = {}
        self._retired: deque[str] = deque(maxlen=16)  # streams of earlier capture runs
        self._lost = telemetry.FRAMES_DROPPED.labels(camera, "lost")

    def __len__(self) -> int:
        return len(self._pending)

    @property
    def position(self) -> tuple[str, int] | None:
        """(stream, the next seq due), once a stream is known."""
        return None if self.stream is None else (self.stream, self.next_seq)

    def push(self, message: Message, now: float | None = None) -> list[Message]:
        """Messages now ready in order (possibly none); MessageError if this one comes too late."""
        now = time.monotonic() if now is None else now
        ready = []
        stream, seq = message.header["stream"], message.seq
        if stream != self.stream:
            if stream in self._retired:
                raise MessageError("late", f"{self.camera}: message of an earlier capture run (seq {seq})")
            if self.stream is not None:
                ready = self._skip_to(max(self._pending) + 1) if self._pending else []
                self._retired.append(self.stream)
            # Capture starts at 0; a stream first seen much later was joined midway (this stage restarted).
            self.stream, self.next_seq = stream, 0 if seq < self.max_pending else seq
        if seq < self.next_seq or seq in self._pending:
            raise MessageError("late", f"{self.camera}: seq {seq} arrived after its turn or twice")
        self._pending[seq] = (now, message)
        if len(self._pending) > self.max_pending:
            ready += self._skip_to(min(self._pending))
        return ready + self._release()

    def expire(self, now: float | None = None) -> list[Message]:
        """Skip a missing message that has held the others up for longer than `timeout`."""
        now = time.monotonic() if now is None else now
        if self._pending and now - min(t for t, _ in self._pending.values()) > self.timeout:
            return self._skip_to(min(self._pending))
        return []

    def _skip_to(self, seq: int) -> list[Message]:
        """Give up on everything before `seq`: release what is there, count the holes as lost."""
        ready, lost, first = [], 0, self.next_seq
        while self.next_seq < seq:
            if self.next_seq in self._pending:
                ready.append(self._pending.pop(self.next_seq)[1])
            else:
                lost += 1
            self.next_seq += 1
        if lost:
            self._lost.inc(lost)
            log.warning(
                "%s: %d frame(s) of seq %d-%d never arrived: counted as lost", self.camera, lost, first, seq - 1
            )
        return ready + self._release()

    def _release(self) -> list[Message]:
        ready = []
        while self.next_seq in self._pending:
            ready.append(self._pending.pop(self.next_seq)[1])
            self.next_seq += 1
        return ready
