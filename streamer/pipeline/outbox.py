"""Events on their way out of the alerter: committed to the durable log first, then published.

While the log cannot be written (disk full, read-only file system, a missing
mount) events wait here in order, unpublished: nothing is announced that the log
does not have. The write is retried every `retry_seconds`; meanwhile
vad_event_log_up is 0, each failed attempt counts in vad_event_log_errors_total,
vad_event_log_held says how many wait, and an error is logged every half
minute. Past `max_held` waiting events new ones are dropped and counted
(vad_events_lost_total), so memory stays bounded through a long outage.

Events still waiting when the alerter stops are not dropped: they are appended
to the spill file (JSON lines, RUN_DIR/unlogged-events.jsonl), or, if that
cannot be written either, logged one per line (the journal). The first
successful contact with the log then writes and publishes what an earlier run
spilled, ends the events a killed alerter left open (reason `restart`), and only
then anything new.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import deque
from pathlib import Path
from typing import Callable

from . import telemetry
from .events import EventLog, EventLogError, closed_by_restart, read_spill, spill
from .publisher import EVENT_TOPIC, SCORE_TOPIC  # noqa: F401 (SCORE_TOPIC: the notifier's, from here)

log = logging.getLogger(__name__)

REPORT_EVERY_SECONDS = 30.0


class Outbox:
    def __init__(
        self,
        event_log: EventLog,
        publish: Callable[[list], None],
        retry_seconds: float,
        max_held: int,
        spill_file: str | os.PathLike | None = None,
    ):
        telemetry.register_alerter_metrics()
        self.event_log = event_log
        self.publish = publish
        self.retry_seconds = retry_seconds
        self.max_held = max_held
        self.spill_file = Path(spill_file) if spill_file else None
        self.held: deque[dict] = deque()
        self.recovered = False  # what the previous run spilled is in the log, its open events are closed
        self._unspilled = 0  # events read back from the spill file, not yet in the log
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
                self.held.extendleft(reversed(self._recover()))
                self.recovered = True
            while self.held:
                body = self.event_log.append(self.held[0])
                event = self.held.popleft()
                self.publish([EVENT_TOPIC, body.encode()])
                self._published(event)
                written += 1
                if self._unspilled:
                    self._unspilled -= 1
                    if not self._unspilled:  # all in the log now: a crash before this reads them again, skipped
                        self.spill_file.unlink(missing_ok=True)
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

    def _recover(self) -> list[dict]:
        """What goes out before anything new: what an earlier run spilled, then the ends of events left open."""
        spilled = []
        if self.spill_file is not None and self.spill_file.exists():
            try:
                spilled = [e for e in read_spill(self.spill_file) if not self.event_log.contains(e)]
            except OSError as e:
                log.error("cannot read the spilled events in %s (%s): left there", self.spill_file, e)
            else:
                if spilled:
                    log.warning(
                        "%d events an earlier run could not log, from %s: logging them", len(spilled), self.spill_file
                    )
                else:
                    self.spill_file.unlink(missing_ok=True)
        last = {event["event_id"]: event for event in self.event_log.open_events()}
        last.update((event["event_id"], event) for event in spilled)
        self._unspilled = len(spilled)
        return spilled + [closed_by_restart(event) for event in last.values() if event["type"] != "end"]

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
        """Last try; whatever still waits goes to the spill file, or failing that to this process's log."""
        self._next_try = 0.0
        self.flush()
        if not self.held:
            return
        try:
            if self.spill_file is None:
                raise OSError("no spill file")
            spill(self.spill_file, self.held)
        except OSError as e:
            log.error(
                "event log unwritable at exit, and the spill file too (%s): the %d waiting events follow",
                e,
                len(self.held),
            )
            for event in self.held:
                log.error("unlogged event %s", json.dumps(event, separators=(",", ":")))
            return
        log.error(
            "event log unwritable at exit: %d events written to %s instead; the next start logs and publishes them",
            len(self.held),
            self.spill_file,
        )
