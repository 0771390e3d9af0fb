"""Events on their way out of the alerter: committed to the durable log first, then published.

While the log cannot be written (disk full, read-only file system, a missing
mount) events wait here in order, unpublished: nothing is announced that the log
does not have. The write is retried every `retry_seconds`; meanwhile
vad_event_log_up is 0, each failed attempt counts in vad_event_log_errors_total,
vad_event_log_held says how many wait, and an error is logged every half
minute. Past `max_held` waiting events new ones are dropped and counted
(vad_events_lost_total), so memory stays bounded through a long outage.

The first successful contact with the log ends the events a killed alerter left
open (reason `restart`), before any new event.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Callable

from . import telemetry
from .events import EventLog, EventLogError, closed_by_restart

log = logging.getLogger(__name__)

EVENT_TOPIC = b"event"
SCORE_TOPIC = b"score"  # each frame's smoothed score, published by the alerter as it goes (best effort, not logged)
REPORT_EVERY_SECONDS = 30.0


class Outbox:
    def __init__(self, event_log: EventLog, publish: Callable[[list], None], retry_seconds: float, max_held: int):
        telemetry.register_alerter_metrics()
        self.event_log = event_log
        self.publish = publish
        self.retry_seconds = retry_seconds
        self.max_held = max_held
        self.held: deque[dict] = deque()
        self.recovered = False  # the previous run's open events are closed
        self.failing_since: float | None = None
        self._next_try = 0.0
        self._next_report = 0.0
        self._dropped = 0

    def put(self, event: dict) -> None:
        if len(self.held) >= self.max_held:
            telemetry.EVENTS_LOST.inc()
            self._dropped += 1
            if self._dropped in (1, 10, 100) or self._dropped % 1000 == 0:
                log.error(
                    "event log still unwritable and %d events wait: %d new events dropped", self.max_held, self._dropped
                )
            return
        self.held.append(event)
        self.flush()

    def flush(self, now: float | None = None) -> None:
        """Write and publish what waits, in order; after a failure, only once `retry_seconds` have passed."""
        now = time.monotonic() if now is None else now
        if (self.held or not self.recovered) and now >= self._next_try:
            self._write_out(now)
        telemetry.EVENT_LOG_HELD.set(len(self.held))

    def _write_out(self, now: float) -> None:
        written = 0
        try:
            if not self.recovered:
                self.held.extendleft(reversed([closed_by_restart(e) for e in self.event_log.open_events()]))
                self.recovered = True
            while self.held:
                body = self.event_log.append(self.held[0])
                event = self.held.popleft()
                self.publish([EVENT_TOPIC, body.encode()])
                self._published(event)
                written += 1
        except EventLogError as e:
            self._failed(e, now)
            return
        if self.failing_since is not None:
            log.warning(
                "event log writable again after %.0f s: %d held events written and published",
                now - self.failing_since,
                written,
            )
        self.failing_since, self._dropped = None, 0
        telemetry.EVENT_LOG_UP.set(1)

    def _failed(self, error: EventLogError, now: float) -> None:
        telemetry.EVENT_LOG_ERRORS.inc()
        telemetry.EVENT_LOG_UP.set(0)
        self._next_try = now + self.retry_seconds
        if self.failing_since is None:
            self.failing_since, self._next_report = now, now
        if now >= self._next_report:
            log.error(
                "event log %s; %d events wait unpublished, retrying every %g s",
                error,
                len(self.held),
                self.retry_seconds,
            )
            self._next_report = now + REPORT_EVERY_SECONDS

    def _published(self, event: dict) -> None:
        telemetry.EVENTS.labels(event["camera"], event["type"]).inc()
        log.info(
            "event %s %s %s seq %d score %s%s",
            event["type"],
            event["camera"],
            event["event_id"][:8],
            event["seq"],
            event["score"],
            f" ({event['reason']})" if event["reason"] else "",
        )

    def close(self) -> None:
        """Last try; whatever still waits is lost with this process, and said so."""
        self._next_try = 0.0
        self.flush()
        if self.held:
            log.error("event log unwritable at exit: %d events were never logged or published", len(self.held))
