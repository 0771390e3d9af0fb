"""The alerter's events socket: [b"event", JSON] to every subscriber, with bounds on what subscribers can cost.

Any local process (any host, with allow_remote) can subscribe, so the socket's
limits are set before it binds (libzmq copies a socket's options into each
listener at bind; a later change never reaches the connections it accepts):

- HIGH_WATER_MARK events queue per subscriber. A burst of that many (held
  events written out once the event log is back) reaches a subscriber that is
  not reading at the moment; one that falls further behind misses the newer
  events (PUB never blocks the alerter), and the event log has them all. A
  subscriber that stops reading costs at most that many events of memory.
- A subscriber sends subscriptions: topic prefixes. libzmq keeps every distinct
  prefix of every connection in a trie costing tens of bytes per byte of prefix,
  so one peer sending millions of distinct prefixes could grow the alerter by
  gigabytes. A message over MAX_SUBSCRIPTION_BYTES makes libzmq drop the
  connection; and a connection that sends more than NON_EVENT_BUDGET bytes that
  can match nothing published (topics other than TOPICS, anything that is not a
  subscription) is cut
  (its file descriptor shut down): libzmq then frees what it kept for it. Each cut
  counts in vad_messages_rejected_total{stage="alerter", reason="subscription"}.
  So a connection costs at most about a hundred kB, however it subscribes.

libzmq names a message's connection only by its descriptor number, which the
next connection gets as soon as one closes: what a connection sent, read after it
closed, is taken for the next one's. The budget is twice what a connection can
have queued (RECEIVE_HIGH_WATER_MARK messages of at most MAX_SUBSCRIPTION_BYTES),
so that alone never cuts a subscriber that only subscribes to events.
"""

from __future__ import annotations

import errno
import logging
import socket as pysocket
import struct
import time

import zmq

from . import telemetry
from .config import MessagingConfig
from .runtime import make_socket
from .security import Curve

log = logging.getLogger(__name__)

EVENT_TOPIC = b"event"
SCORE_TOPIC = b"score"  # each frame's smoothed score, published by the alerter as it goes (best effort, not logged)
TOPICS = (EVENT_TOPIC, SCORE_TOPIC)
HIGH_WATER_MARK = 1000  # events queued per subscriber (about 1.5 kB each) before it misses newer ones
# A subscription is a topic prefix (ours is b"event"); the limit also covers the handshake (CURVE's is ~300 bytes).
MAX_SUBSCRIPTION_BYTES = 512
RECEIVE_HIGH_WATER_MARK = 2  # messages queued per subscriber connection before libzmq stops reading it
# The kernel's receive buffer of each tcp connection: what a connection still has there when it is cut is
# read and kept by libzmq all the same, until the connection is gone.
RECEIVE_BUFFER_BYTES = 4096
NON_EVENT_BUDGET = 2 * RECEIVE_HIGH_WATER_MARK * MAX_SUBSCRIPTION_BYTES  # bytes matching nothing published
REBIND_SECONDS = 2.0  # for the events endpoint to come free after dropping every subscriber
MAX_TRACKED = 4096  # connections whose bytes are counted, before the count starts over
SO_COOKIE = getattr(pysocket, "SO_COOKIE", 57)  # Linux's number for it (Python < 3.13 lacks the name)


class EventPublisher:
    def __init__(self, ctx: zmq.Context, endpoint: str, messaging: MessagingConfig, curve: Curve | None = None):
        self.socket = make_socket(
            ctx,
            zmq.XPUB,
            endpoint,
            bind=True,
            messaging=messaging,
            curve=curve,
            events=True,
            # VERBOSE: every subscription message comes up to `serve`, not only the first of each prefix.
            options={
                zmq.SNDHWM: HIGH_WATER_MARK,
                zmq.RCVHWM: RECEIVE_HIGH_WATER_MARK,
                zmq.RCVBUF: RECEIVE_BUFFER_BYTES,
                zmq.MAXMSGSIZE: MAX_SUBSCRIPTION_BYTES,
                zmq.XPUB_VERBOSE: 1,
            },
        )
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self._spent: dict[int, int] = {}  # connection -> bytes it sent that can match no event
        self._cut: set[int] = set()  # connections cut
        self._cuts = 0

    def publish(self, parts: list) -> None:
        self.socket.send_multipart(parts)

    def serve(self) -> None:
        """Read what subscribers sent since the last call and cut connections over budget (never blocks)."""
        while True:
            try:
                frame = self.socket.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._judge(frame)

    def _judge(self, frame: zmq.Frame) -> None:
        data = frame.bytes
        if data[:1] == b"\x00" or (data[:1] == b"\x01" and any(t.startswith(data[1:]) for t in TOPICS)):
            return  # a cancellation, or a subscription to what is published: nothing to hold against the sender
        try:
            fd = frame.get(zmq.SRCFD)
        except zmq.ZMQError:  # no connection behind it
            return
        connection = self._connection(fd)
        if connection is None or connection in self._cut:
            return
        if len(self._spent) > MAX_TRACKED:  # mostly connections long gone
            self._spent.clear()
            self._cut.clear()
        self._spent[connection] = self._spent.get(connection, 0) + max(len(data), 1)
        if self._spent[connection] > NON_EVENT_BUDGET:
            self._cut.add(connection)
            self._shut(fd, frame.get("Peer-Address"))

    def _connection(self, fd: int) -> int | None:
        """Which connection to this socket's endpoint `fd` is now, or None if it is none (closed, another
        socket's, a file). Descriptor numbers are reused at once; socket cookies (Linux) never are."""
        try:
            probe = pysocket.socket(fileno=fd)
        except OSError:
            return None
        try:
            local = probe.getsockname()
            cookie = struct.unpack("Q", probe.getsockopt(pysocket.SOL_SOCKET, SO_COOKIE, 8))[0]
        except OSError:
            return None
        finally:
            probe.detach()  # the descriptor stays libzmq's
        if isinstance(local, str):  # a Unix socket: its path
            return cookie if self.endpoint == f"ipc://{local}" else None
        return cookie if self.endpoint.endswith(f":{local[1]}") else None

    def _shut(self, fd: int, peer: str) -> None:
        connection = pysocket.socket(fileno=fd)
        try:
            connection.shutdown(pysocket.SHUT_RDWR)  # libzmq sees the connection end, closes it, frees its trie
        except OSError:
            pass
        finally:
            connection.detach()
        telemetry.MESSAGES_REJECTED.labels("alerter", "subscription").inc()
        self._cuts += 1
        if self._cuts in (1, 10, 100) or self._cuts % 1000 == 0:
            log.warning(
                "alerter: cut an events subscriber (%s) sending more than %d bytes that nothing published can match "
                "(%d so far); subscribe to %r or %r",
                peer,
                NON_EVENT_BUDGET,
                self._cuts,
                *TOPICS,
            )

    def drop_subscribers(self) -> None:
        """Close every subscriber connection: each handshakes again, and a revoked key is refused."""
        log.warning(
            "alerter: a subscriber key was revoked: dropping every subscriber connection once, to check each again"
        )
        self.socket.unbind(self.endpoint)
        # ZeroMQ's I/O thread closes the listener after unbind returns: until it has, the address is still taken.
        deadline = time.monotonic() + REBIND_SECONDS
        while True:
            try:
                self.socket.bind(self.endpoint)
                return
            except zmq.ZMQError as e:
                if e.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def close(self) -> None:
        self.socket.close()
