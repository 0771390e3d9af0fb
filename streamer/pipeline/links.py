"""What ZeroMQ's socket monitor says about a socket's connections: refused handshakes, dropped links.

A CURVE handshake that fails is otherwise silent on both ends: the refused side
just retries, and nothing counts it. `Links` reads a socket's monitor events
(never blocking, from the thread that owns the socket) and

  logs every refused handshake with what to check, counts it in
      vad_handshakes_failed_total{stage, side, reason} (side: `server` when this
      process refused a client, `client` when a server refused this process), and
      shows in vad_links_refused{stage} how many of the endpoints this socket
      connects to are refusing it right now ("connected but refused");
  makes connections again that libzmq gave up: it never retries after a refused
      handshake or a protocol error (which includes a message part over
      MAXMSGSIZE). A dropped link is made again at once; a refused one after 1 s,
      doubling to 30 s, so a key authorised later is taken up without a restart,
      and a refused peer is not hammered.

Reasons: `not_authorized` (the client key is not in the server's
authorized_keys), `curve_mismatch` (CURVE on at one end only), `wrong_key` (the
client expects another server key: the hosts hold different pipeline key
pairs), `other`.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

import zmq
from zmq.utils.monitor import recv_monitor_message

from . import telemetry
from .config import Backoff

log = logging.getLogger(__name__)

FAILED = {
    zmq.EVENT_HANDSHAKE_FAILED_AUTH,
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
}
EVENTS = zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED
for _event in FAILED:
    EVENTS |= _event
REASONS = ("not_authorized", "curve_mismatch", "wrong_key", "other")
RETRY = Backoff(1.0, 30.0)  # waits before connecting again to an endpoint that refused us
_refused_now: Counter[str] = Counter()  # stage -> endpoints refusing it, over all of this process's sockets

WHY = {
    ("client", "not_authorized"): "our public key is not in its authorized_keys",
    ("client", "curve_mismatch"): "CURVE is on at one end only (security.curve.enabled must match)",
    ("client", "wrong_key"): "it closed the handshake: it serves another key pair than the server key we expect "
    "(or it is not a vad stage)",
    ("server", "not_authorized"): "the client's public key is not in authorized_keys",
    ("server", "curve_mismatch"): "CURVE is on at one end only (security.curve.enabled must match)",
    ("server", "wrong_key"): "the client expects another server key (it holds another pipeline key pair)",
}


def refusal(event: int, value: int) -> str:
    """The reason label of a failed-handshake monitor event."""
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return "not_authorized"
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
        return "curve_mismatch"
    if event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL or value == zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC:
        return "wrong_key"
    return "other"


def worth_logging(count: int) -> bool:
    """The 1st, 10th, 100th and every 1000th of a repeated event: a retrying peer must not flood the log."""
    return count in (1, 10, 100) or count % 1000 == 0


class Links:
    """One socket's monitor: refusals logged and counted, given-up connections made again.

    `connected`: the endpoints this socket connects to (it is then a client; a socket
    that binds is a server). `ended`: connected endpoints whose upstream finished
    its stream, so that their closing is expected (kept up to date by the Inbox).
    """

    def __init__(self, socket: zmq.Socket, stage: str, connected: tuple[str, ...] = ()):
        self.socket = socket
        self.stage = stage
        self.connected = connected
        self.side = "client" if connected else "server"
        self.ended: set[str] = set()
        self._monitor = socket.get_monitor_socket(EVENTS)
        self._refusals: dict[str, int] = {}  # endpoint -> refused handshakes in a row
        self._retry_at: dict[str, float] = {}  # endpoint -> when to connect again
        self._failures = {reason: telemetry.HANDSHAKES_FAILED.labels(stage, self.side, reason) for reason in REASONS}
        self._drops = 0
        self._unjudged: set[str] = set()  # dropped links not yet logged as expected or not
        self._refused_clients: Counter[str] = Counter()  # reason -> clients this server refused
        self._refused_gauge = telemetry.LINKS_REFUSED.labels(stage)
        self._refused_gauge.set(_refused_now[stage])

    @property
    def refused(self) -> list[str]:
        """Connected endpoints whose last handshake was refused."""
        return list(self._refusals)

    def poll(self, settle: bool = True) -> None:
        """Handle every event waiting (without blocking), then make the connections that are due again.

        `settle`: judge the links dropped so far (expected after their stream's end, or not). A socket with
        messages still waiting says False: a dropped link's last messages, its `end` among them, come first.
        """
        while self._monitor.poll(0):
            event = recv_monitor_message(self._monitor)
            endpoint = event["endpoint"].decode()
            if event["event"] in FAILED:
                self._failed(endpoint, refusal(event["event"], event["value"]), event["value"])
            elif event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._succeeded(endpoint)
            elif endpoint in self.connected and endpoint not in self._retry_at:
                self._dropped(endpoint)
        now = time.monotonic()
        for endpoint, due in list(self._retry_at.items()):
            if now >= due:
                del self._retry_at[endpoint]
                self.socket.connect(endpoint)
        if settle:
            self._judge_drops()

    def _failed(self, endpoint: str, reason: str, value: int) -> None:
        self._failures[reason].inc()
        why = WHY.get((self.side, reason), f"handshake failed (ZeroMQ error {value:#x})")
        if self.side == "server":
            self._refused_clients[reason] += 1
            count = self._refused_clients[reason]
            if reason != "not_authorized" and worth_logging(count):  # the authenticator logs the refused key itself
                log.warning("%s: refused a client on %s: %s (%d so far)", self.stage, endpoint, why, count)
            return
        if endpoint not in self.connected:
            return
        count = self._refusals.get(endpoint, 0) + 1
        self._refusals[endpoint] = count
        if count == 1:
            self._count_refused(+1)
        delay = RETRY.delay(count - 1)
        if worth_logging(count):
            log.warning(
                "%s: %s refused our handshake: %s (%d in a row); trying again in %.0f s",
                self.stage,
                endpoint,
                why,
                count,
                delay,
            )
        # libzmq would never retry after a refusal, or would retry ten times a second: we retry, backing off.
        self._disconnect(endpoint)
        self._retry_at[endpoint] = time.monotonic() + delay

    def _succeeded(self, endpoint: str) -> None:
        count = self._refusals.pop(endpoint, 0)
        if count:
            self._count_refused(-1)
            log.info("%s: %s accepted our handshake after %d refusals", self.stage, endpoint, count)

    def _count_refused(self, change: int) -> None:
        _refused_now[self.stage] += change
        self._refused_gauge.set(_refused_now[self.stage])

    def _dropped(self, endpoint: str) -> None:
        self._unjudged.add(endpoint)
        self._disconnect(endpoint)
        self.socket.connect(endpoint)

    def _judge_drops(self) -> None:
        for endpoint in self._unjudged:
            if endpoint in self.ended:  # the upstream stage finished its stream and left: expected
                log.info("%s: %s closed after the end of its stream", self.stage, endpoint)
                continue
            self._drops += 1
            if worth_logging(self._drops):
                log.warning(
                    "%s: connection to %s dropped (%d so far: the peer stopped or restarted, or sent a message over "
                    "max_message_bytes); connected again",
                    self.stage,
                    endpoint,
                    self._drops,
                )
        self._unjudged.clear()

    def _disconnect(self, endpoint: str) -> None:
        try:
            self.socket.disconnect(endpoint)
        except zmq.ZMQError:  # libzmq has forgotten it already
            pass

    def close(self) -> None:
        if self._refusals:
            self._count_refused(-len(self._refusals))
        self.socket.disable_monitor()
        self._monitor.close()
