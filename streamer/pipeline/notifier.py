"""Notifier stage: events from the durable event log to MQTT and webhooks, at least once, in log order.

The event log (the alerter's SQLite file) is the source of truth, not the PUB
socket: a destination that is down, slow or restarting misses nothing. Each
destination has its own courier thread and its own cursor, the last log row it
delivered, kept in RUN_DIR/state/notify-NAME.json and moved only after the
destination acknowledged (the broker's PUBACK, a 2xx answer). After a crash, a
kill -9, a broker outage or an endpoint answering 5xx, delivery resumes from
the cursor: nothing is lost, and what may arrive twice carries the same
idempotency key (delivery.py). A failing destination is retried with doubling
waits (notify.retry_*) and holds up no other.

Bounds, per destination: past `max_queue` waiting events the oldest are
dropped, and events older than `max_age_seconds` are dropped rather than
delivered late; both are counted (vad_notify_dropped_total{reason}) and logged.
A destination seen for the first time starts with the events of the last
`max_age_seconds`; a log that replaced the one a cursor was for (archived and
started anew) is delivered from its beginning.

The MQTT destination also gets each camera's smoothed score, which the alerter
publishes on its PUB socket (topic `score`, best effort: a live reading, not an
event), passed on at most once per mqtt.score_interval_seconds.

At a stop, each destination that is not failing is given messaging.linger_seconds
to catch up with the log; what remains is delivered by the next start.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time

import zmq

from . import telemetry
from .checkpoint import Checkpoint, state_path
from .config import Backoff, MessagingConfig, PipelineConfig
from .delivery import DeliveryError
from .events import EventLogError, EventLogReader
from .mqtt import MqttDestination
from .outbox import SCORE_TOPIC
from .runtime import make_socket
from .security import curve_for
from .webhooks import WebhookDestination

log = logging.getLogger(__name__)

POLL_SECONDS = 0.1  # how often an idle courier looks for new events
REPORT_EVERY_SECONDS = 30.0  # a failing destination, or one dropping events, is logged this often
SCORE_MESSAGING = MessagingConfig(high_water_mark=100, max_message_bytes=4096, linger_seconds=0)


class Courier:
    """Delivers one destination's events in log order from its cursor, in its own thread."""

    def __init__(self, destination, max_queue: int, max_age: float, event_log: str, run_dir: str, backoff: Backoff):
        self.destination = destination
        self.name = destination.name
        self.label = f"{destination.name} ({destination.where})"
        self.types = destination.types
        self.max_queue, self.max_age = max_queue, max_age
        self.reader = EventLogReader(event_log)
        self.checkpoint = Checkpoint(state_path(run_dir, f"notify-{self.name}"))
        self.backoff = backoff
        self.row = 0  # the cursor: the last log row delivered (or dropped)
        self.log_id: str | None = None  # the first event of the log the cursor belongs to
        self.failures = 0  # failed attempts in a row
        self.failing_since: float | None = None
        self.next_report = 0.0  # of a failing destination
        self.dropped_since_report = 0
        self.next_drop_report = 0.0
        self.waiting = 0  # events after the cursor
        self.finish_by: float | None = None  # set at a stop: catch up until then
        self.wake = threading.Event()
        self.error: BaseException | None = None  # an unexpected one, which ends the stage
        self.thread = threading.Thread(target=self._run, name=f"notify-{self.name}", daemon=True)
        self.delivered = telemetry.NOTIFY_DELIVERED.labels(self.name)
        self.failed = telemetry.NOTIFY_FAILED.labels(self.name)
        self.retried = telemetry.NOTIFY_RETRIED.labels(self.name)
        self.dropped = {reason: telemetry.NOTIFY_DROPPED.labels(self.name, reason) for reason in ("queue", "age")}
        self.lag_events = telemetry.NOTIFY_LAG_EVENTS.labels(self.name)
        self.lag_seconds = telemetry.NOTIFY_LAG_SECONDS.labels(self.name)

    def start(self) -> None:
        self.thread.start()

    def finish(self, deadline: float) -> None:
        """Catch up with the log until `deadline` (time.monotonic()), unless failing; then close and end."""
        self.finish_by = deadline
        self.wake.set()

    def _resume(self) -> None:
        record = self.checkpoint.read() or {}
        self.log_id = self.reader.first_event_id()
        if "row" in record and record.get("log") in (self.log_id, None):
            self.row = record["row"]
            how = f"from row {self.row}"
        elif "row" in record:
            how = "from the beginning of a new event log"
        else:
            self.row = self.reader.before_time(time.time() - self.max_age)
            how = f"from row {self.row} (first start: events of the last {self.max_age:g} s)"
        self.destination.sync(self.reader.last_per_camera(self.row))
        log.info("notifier: %s delivers %s", self.label, how)

    def _running(self) -> bool:
        if self.finish_by is None:
            return True
        return self.failures == 0 and time.monotonic() < self.finish_by

    def _run(self) -> None:
        try:
            self._resume()
            while self._running():
                try:
                    if not self._step():
                        break
                except EventLogError as e:
                    log.error("notifier: %s: %s", self.label, e)
                    if self.finish_by is not None:
                        break
                    self.wake.wait(self.backoff.max_seconds)  # then the next step tries again
        except Exception as e:
            log.exception("notifier: %s stopped on an unexpected error", self.label)
            self.error = e
        finally:
            self.destination.close()
            self.reader.close()
            self.checkpoint.close()

    def _step(self) -> bool:
        """One attempt; False once a finishing courier has caught up."""
        self._apply_limits()
        batch = self.reader.after(self.row, self.destination.batch_size, self.types)
        if not batch and self.finish_by is not None:
            return False
        if self.failures:
            self.retried.inc()
        try:
            self.destination.deliver([event for _, event in batch])
        except DeliveryError as e:
            self._advance(batch[: e.delivered])
            self._failed(e)
            self.wake.wait(self.backoff.delay(self.failures - 1))
            return True
        self._advance(batch)
        self._recovered()
        if not batch:
            self.wake.wait(POLL_SECONDS)
        return True

    def _apply_limits(self) -> None:
        """Drop what waits beyond max_queue or max_age; set the lag gauges."""
        now = time.time()
        waiting, oldest = self.reader.backlog(self.row, self.types)
        if waiting > self.max_queue:
            self._skip(self.reader.keeping(self.row, self.max_queue, self.types), waiting - self.max_queue, "queue")
            waiting, oldest = self.reader.backlog(self.row, self.types)
        if oldest is not None and oldest < now - self.max_age:
            row = max(self.row, self.reader.before_time(now - self.max_age))
            left, oldest = self.reader.backlog(row, self.types)
            self._skip(row, waiting - left, "age")
            waiting = left
        self.waiting = waiting
        self.lag_events.set(waiting)
        self.lag_seconds.set(max(0.0, now - oldest) if oldest is not None else 0.0)

    def _skip(self, row: int, count: int, reason: str) -> None:
        self.dropped[reason].inc(count)
        self.dropped_since_report += count
        self._move(row)
        self.destination.sync(self.reader.last_per_camera(row))
        now = time.monotonic()
        if now >= self.next_drop_report:
            why = "over max_queue" if reason == "queue" else f"older than max_age_seconds ({self.max_age:g})"
            log.error(
                "notifier: %s: dropped %d undelivered event(s) %s (%d since the last report)",
                self.label,
                count,
                why,
                self.dropped_since_report,
            )
            self.dropped_since_report, self.next_drop_report = 0, now + REPORT_EVERY_SECONDS

    def _advance(self, delivered: list[tuple[int, dict]]) -> None:
        if delivered:
            self.delivered.inc(len(delivered))
            self._move(delivered[-1][0])

    def _move(self, row: int) -> None:
        self.row = row
        self.log_id = self.log_id or self.reader.first_event_id()
        self.checkpoint.write({"row": row, "log": self.log_id})

    def _failed(self, error: DeliveryError) -> None:
        self.failed.inc()
        self.failures += 1
        now = time.monotonic()
        delay = self.backoff.delay(self.failures - 1)
        if self.failing_since is None:
            self.failing_since, self.next_report = now, now + REPORT_EVERY_SECONDS
            log.warning("notifier: %s: %s; retrying in %.1f s", self.label, error, delay)
        elif now >= self.next_report:
            self.next_report = now + REPORT_EVERY_SECONDS
            log.warning(
                "notifier: %s: still failing after %.0f s and %d attempts: %s; %d event(s) wait",
                self.label,
                now - self.failing_since,
                self.failures,
                error,
                self.waiting,
            )

    def _recovered(self) -> None:
        if self.failing_since is not None:
            log.warning(
                "notifier: %s: delivering again after %.0f s and %d failed attempt(s)",
                self.label,
                time.monotonic() - self.failing_since,
                self.failures,
            )
        self.failures, self.failing_since = 0, None


class ScoreRelay:
    """Each camera's latest smoothed score from the alerter's PUB socket, offered at most once per interval."""

    def __init__(self, socket: zmq.Socket, cameras: list[str], interval: float, offer):
        self.socket = socket
        self.interval = interval
        self.offer = offer
        self.latest: dict[str, float] = {}
        self.next_due = dict.fromkeys(cameras, 0.0)

    def receive(self, timeout: float) -> None:
        if self.socket.poll(int(timeout * 1000)):
            while True:
                try:
                    parts = self.socket.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._take(parts)
        now = time.monotonic()
        for camera, score in list(self.latest.items()):
            if now >= self.next_due[camera]:
                self.offer(camera, score)
                self.next_due[camera] = now + self.interval
                del self.latest[camera]

    def _take(self, parts: list[bytes]) -> None:
        try:
            score = json.loads(parts[1]) if len(parts) == 2 else None
            camera, value = score["camera"], float(score["score"])
        except (ValueError, TypeError, KeyError, IndexError, RecursionError):
            camera, value = None, math.nan
        if camera not in self.next_due or not math.isfinite(value):
            telemetry.MESSAGES_REJECTED.labels("notifier", "malformed").inc()
            return
        self.latest[camera] = value


def run(cfg: PipelineConfig, stop: threading.Event) -> int:
    notify = cfg.notify
    cameras = [camera.id for camera in cfg.cameras]
    backoff = Backoff(notify.retry_initial_seconds, notify.retry_max_seconds)
    mqtt = MqttDestination(notify.mqtt, cameras) if notify.mqtt else None
    pairs = [(mqtt, notify.mqtt)] if mqtt else []
    pairs += [(WebhookDestination(webhook), webhook) for webhook in notify.webhooks]
    couriers = [
        Courier(destination, c.max_queue, c.max_age_seconds, cfg.alerter.event_log, cfg.run_dir, backoff)
        for destination, c in pairs
    ]
    telemetry.MESSAGES_REJECTED.labels("notifier", "malformed")
    for courier in couriers:
        courier.start()
    log.info("notifier: %d destination(s); events from %s", len(couriers), cfg.alerter.event_log)
    with zmq.Context() as ctx, curve_for(ctx, cfg.security.curve) as curve:
        relay = None
        if mqtt and notify.mqtt.score_interval_seconds > 0:
            socket = make_socket(ctx, zmq.SUB, cfg.alerter.events_endpoint, False, SCORE_MESSAGING, curve)
            socket.subscribe(SCORE_TOPIC)
            relay = ScoreRelay(socket, cameras, notify.mqtt.score_interval_seconds, mqtt.offer_score)
        while not stop.is_set() and not any(courier.error for courier in couriers):
            if relay:
                relay.receive(POLL_SECONDS)
            else:
                stop.wait(POLL_SECONDS)
        if relay:
            relay.socket.close()
    deadline = time.monotonic() + cfg.messaging.linger_seconds
    for courier in couriers:
        courier.finish(deadline)
    for courier in couriers:
        courier.thread.join(max(0.0, deadline - time.monotonic()) + 1.0)
        if courier.thread.is_alive():
            log.warning("notifier: %s still busy at exit; its cursor keeps what is left", courier.label)
    return 1 if any(courier.error for courier in couriers) else 0
