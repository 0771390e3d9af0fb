"""The notifier's courier on a real event log, with a destination in memory: cursor, limits, retries, metrics.

The end-to-end tests with a real broker and HTTP endpoint are in test_notify.py.
"""

from __future__ import annotations

import re
import time
import uuid

import pytest
from prometheus_client import REGISTRY

from streamer.pipeline.config import Backoff
from streamer.pipeline.delivery import DeliveryError
from streamer.pipeline.events import EventLog
from streamer.pipeline.notifier import Courier

from .pipeline_helpers import wait_for


class Memory:
    """A destination that keeps what it gets; `failing` makes every attempt fail, after one event if `partial`."""

    where = "memory"
    types = None
    batch_size = 4

    def __init__(self, name: str):
        self.name = name
        self.received: list[dict] = []
        self.synced: list[list[dict]] = []
        self.failing: str | None = None
        self.partial = False
        self.attempts = 0

    def deliver(self, events: list[dict]) -> None:
        self.attempts += 1
        if self.failing and events:
            delivered = 1 if self.partial and len(events) > 1 else 0
            self.received += events[:delivered]
            raise DeliveryError(self.failing, delivered)
        self.received += events

    def sync(self, last_events: list[dict]) -> None:
        self.synced.append(last_events)

    def close(self) -> None:
        pass


def event(camera: str = "cam1", kind: str = "start", seq: int = 0, age: float = 0.0) -> dict:
    return {"event_id": uuid.uuid4().hex, "camera": camera, "type": kind, "seq": seq, "time": time.time() - age}


def metric(name: str, destination: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, {"destination": destination, **labels}) or 0.0


@pytest.fixture
def log(tmp_path):
    event_log = EventLog(tmp_path / "events.sqlite")
    yield event_log
    event_log.close()


def courier_for(destination, tmp_path, max_queue=1000, max_age=3600.0) -> Courier:
    return Courier(destination, max_queue, max_age, str(tmp_path / "events.sqlite"), str(tmp_path), Backoff(0.05, 0.1))


def run_until(courier: Courier, predicate, what: str) -> None:
    courier.start()
    try:
        wait_for(predicate, 10, what)
    finally:
        courier.finish(time.monotonic() + 1)
        courier.thread.join(5)
    assert not courier.thread.is_alive() and courier.error is None


def test_a_restarted_courier_delivers_from_its_cursor_and_a_new_log_from_its_start(tmp_path, log):
    first = [log_event(log, event(seq=k)) for k in range(6)]
    destination = Memory("resume")
    run_until(courier_for(destination, tmp_path), lambda: len(destination.received) == 6, "six events")
    assert destination.received == first
    second = [log_event(log, event(seq=k)) for k in range(6, 9)]
    again = Memory("resume")
    run_until(courier_for(again, tmp_path), lambda: len(again.received) == 3, "the three new events")
    assert again.received == second
    assert again.synced[0] == [first[-1]]  # the camera's state as of the cursor: its last event
    log.close()
    (tmp_path / "events.sqlite").unlink()  # archived: the daemon starts a new log
    replaced = [log_event(EventLog(tmp_path / "events.sqlite"), event(seq=k)) for k in range(2)]
    fresh = Memory("resume")
    run_until(courier_for(fresh, tmp_path), lambda: len(fresh.received) == 2, "the new log's events")
    assert fresh.received == replaced


def test_a_new_destination_starts_with_the_events_younger_than_max_age(tmp_path, log):
    for k in range(3):
        log_event(log, event(seq=k, age=7200))
    recent = log_event(log, event(seq=3, age=60))
    destination = Memory("new")
    run_until(courier_for(destination, tmp_path), lambda: destination.received, "the recent event")
    assert destination.received == [recent]
    assert metric("vad_notify_dropped_total", "new", reason="age") == 0  # never owed, so not dropped


def test_a_failing_destination_is_retried_until_it_takes_every_event_in_order(tmp_path, log):
    events = [log_event(log, event(seq=k)) for k in range(10)]
    destination = Memory("flaky")
    destination.failing, destination.partial = "HTTP 500", True
    courier = courier_for(destination, tmp_path)
    courier.start()
    try:
        wait_for(lambda: destination.attempts >= 5, 10, "five attempts")
        assert metric("vad_notify_failed_total", "flaky") >= 4
        assert metric("vad_notify_lag_events", "flaky") > 0
        destination.failing = None
        wait_for(lambda: len(destination.received) >= 10, 10, "every event")
    finally:
        courier.finish(time.monotonic() + 1)
        courier.thread.join(5)
    # Each failed attempt got its first event through: the cursor moved past it, so it came once.
    assert destination.received == events
    assert metric("vad_notify_delivered_total", "flaky") == 10
    assert metric("vad_notify_retried_total", "flaky") >= 4
    assert metric("vad_notify_lag_events", "flaky") == 0 and metric("vad_notify_lag_seconds", "flaky") == 0


def test_what_waits_beyond_max_queue_or_max_age_is_dropped_counted_and_logged(tmp_path, log, caplog):
    destination = Memory("bounded")
    destination.failing = "connection refused"
    courier = courier_for(destination, tmp_path, max_queue=5, max_age=2.0)
    courier.start()
    try:
        wait_for(lambda: destination.attempts >= 1, 10, "a first attempt")
        events = [log_event(log, event(camera=f"cam{k % 2}", seq=k)) for k in range(8)]
        wait_for(lambda: metric("vad_notify_dropped_total", "bounded", reason="queue") == 3, 10, "3 over the queue")
        assert [e["seq"] for e in destination.synced[-1]] == [1, 2]  # each camera's state as of the cursor
        wait_for(lambda: metric("vad_notify_dropped_total", "bounded", reason="age") == 5, 10, "5 too old")
        destination.failing = None
        late = log_event(log, event(seq=8))
        wait_for(lambda: destination.received, 10, "the next event")
    finally:
        courier.finish(time.monotonic() + 1)
        courier.thread.join(5)
    assert destination.received == [late] and len(events) == 8
    # The 8 events may reach the courier over several polls under load, so the drops may be logged in parts.
    over_queue = [
        re.search(r"bounded \(memory\): dropped (\d+) undelivered event\(s\) over max_queue", r.getMessage())
        for r in caplog.records
    ]
    assert sum(int(m.group(1)) for m in over_queue if m) == 3


def log_event(log: EventLog, record: dict) -> dict:
    log.append(record)
    return record
