"""Puts one camera's results back in capture order after several scorers worked on them.

Capture numbers each run's messages 0, 1, 2, ... (`seq`) under a stream id. A
result that arrives early waits until the ones before it are through. If one
never comes (a rejected message, a crashed scorer), it is skipped after
`timeout` seconds or once `max_pending` results wait behind it, and counted as
lost (and logged).

Any process that reaches the scores socket can send well-formed messages, so
nothing a single message says can take the camera away from its stream:

- A new stream id (a new capture run) takes over only from a stream that has
  ended (its `end` came through) or gone quiet for `timeout` seconds (its capture
  is gone), and only with a plausible start: a new recording (`reset`) or one of
  its first `max_pending` numbers. What is left of the old stream is flushed in
  order first. Until then its messages are rejected (`foreign_stream`). A stream
  that ended is over for good (its stragglers are `late`); one that went quiet
  and lost the camera takes it back, where it left off, once the other goes quiet.
- A number more than `max_gap` ahead of the next one due is rejected
  (`seq_out_of_range`) while the stream delivers; after `timeout` seconds of
  quiet the stream resumes there, without counting the jump as lost.
- Gaps are counted arithmetically, never one number at a time.

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

GAP_WINDOWS = 4  # how many pending windows ahead a number may be (frames lost in flight stay far below)
MAX_STREAMS_KEPT = 16  # earlier streams remembered per camera


class Reorder:
    def __init__(
        self,
        camera: str,
        max_pending: int,
        timeout: float,
        position: list | tuple | None = None,
        now: float | None = None,
    ):
        self.camera = camera
        self.max_pending = max_pending
        self.max_gap = GAP_WINDOWS * max_pending
        self.timeout = timeout
        self.stream: str | None = None
        self.next_seq = 0
        if _is_position(position):
            self.stream, self.next_seq = position
        self._ended = False  # the current stream's end came through
        self._last_accepted = time.monotonic() if now is None else now  # a restored stream gets `timeout` to return
        self._pending: dict[int, tuple[float, Message]] = {}
        self._retired: deque[str] = deque(maxlen=MAX_STREAMS_KEPT)  # streams that ended
        self._displaced: dict[str, int] = {}  # streams that went quiet and lost the camera -> their next seq
        self._lost = telemetry.FRAMES_DROPPED.labels(camera, "lost")

    def __len__(self) -> int:
        return len(self._pending)

    @property
    def position(self) -> tuple[str, int] | None:
        """(stream, the next seq due), once a stream is known."""
        return None if self.stream is None else (self.stream, self.next_seq)

    def push(self, message: Message, now: float | None = None) -> list[Message]:
        """Messages now ready in order (possibly none); MessageError if this one cannot be taken."""
        now = time.monotonic() if now is None else now
        ready = []
        stream, seq = message.header["stream"], message.seq
        quiet = now - self._last_accepted >= self.timeout
        if stream != self.stream:
            ready = self._switch(message, quiet)
        elif seq >= self.next_seq + self.max_gap:
            if not quiet:
                raise MessageError(
                    "seq_out_of_range", f"{self.camera}: seq {seq} is far ahead of {self.next_seq}, the next one due"
                )
            ready = self._flush()
            log.warning("%s: stream %s resumes at seq %d after a jump from %d", self.camera, stream, seq, self.next_seq)
            self.next_seq = seq
        if seq < self.next_seq or seq in self._pending:
            raise MessageError("late", f"{self.camera}: seq {seq} arrived after its turn or twice")
        self._pending[seq] = (now, message)
        self._last_accepted = now
        if message.kind == "end":
            self._ended = True
        if len(self._pending) > self.max_pending:
            ready += self._skip_to(min(self._pending))
        return ready + self._release()

    def _switch(self, message: Message, quiet: bool) -> list[Message]:
        """Make the message's stream the camera's, or MessageError if it may not take over."""
        stream, seq = message.header["stream"], message.seq
        if stream in self._retired:
            raise MessageError("late", f"{self.camera}: message of an earlier capture run (seq {seq})")
        returning = stream in self._displaced
        plausible = returning or (message.kind != "end" and (message.header["reset"] or seq < self.max_pending))
        if self.stream is not None and not ((self._ended or quiet) and plausible):
            raise MessageError(
                "foreign_stream",
                f"{self.camera}: seq {seq} of stream {stream!r} while stream {self.stream!r} "
                + ("delivers" if not (self._ended or quiet) else "waits for a plausible start (a new recording)"),
            )
        ready = self._flush()
        if self._ended:
            self._retired.append(self.stream)
        elif self.stream is not None:
            log.warning(
                "%s: stream %s went quiet; stream %s takes over at seq %d", self.camera, self.stream, stream, seq
            )
            self._displaced[self.stream] = self.next_seq
            if len(self._displaced) > MAX_STREAMS_KEPT:
                del self._displaced[next(iter(self._displaced))]
        if returning:  # it carries on where it was left; a jump beyond the window is not counted as lost
            resume = self._displaced.pop(stream)
            self.next_seq = resume if resume <= seq < resume + self.max_gap else seq
        else:  # capture starts at 0; a stream first seen much later was joined midway (this stage restarted)
            self.next_seq = 0 if seq < self.max_pending else seq
        self.stream, self._ended = stream, False
        return ready

    def expire(self, now: float | None = None) -> list[Message]:
        """Skip a missing message that has held the others up for longer than `timeout`."""
        now = time.monotonic() if now is None else now
        if self._pending and now - min(t for t, _ in self._pending.values()) > self.timeout:
            return self._skip_to(min(self._pending))
        return []

    def _flush(self) -> list[Message]:
        """Everything waiting, in order, the holes before it counted as lost."""
        return self._skip_to(max(self._pending) + 1) if self._pending else []

    def _skip_to(self, seq: int) -> list[Message]:
        """Give up on everything before `seq`: release what is there, count the holes as lost."""
        first = self.next_seq
        ready = [self._pending.pop(s)[1] for s in sorted(s for s in self._pending if s < seq)]
        lost = seq - first - len(ready)
        self.next_seq = seq
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


def _is_position(position) -> bool:
    """Whether a checkpointed position is (stream id, seq): the state file may be damaged."""
    return (
        isinstance(position, (list, tuple))
        and len(position) == 2
        and isinstance(position[0], str)
        and isinstance(position[1], int)
        and position[1] >= 0
    )
