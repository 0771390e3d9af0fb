"""An event log that cannot be written: events wait unpublished, the failure is a metric and a log line,
and everything goes out in order once the log takes writes again; events a killed alerter left open."""

from __future__ import annotations

import json
import os
import resource
import signal

import zmq
from prometheus_client import REGISTRY

from streamer.model import ModelCard, card_path_for
from streamer.pipeline import config as pipeline_config
from streamer.pipeline.events import EventLog, read_events, read_spill, spill
from streamer.pipeline.outbox import EVENT_TOPIC, Outbox
from streamer.pipeline.publisher import HIGH_WATER_MARK

from .pipeline_helpers import (
    receive_events,
    running,
    sample,
    scores_parts,
    scrape,
    short_dir,
    subscriber,
    try_scrape,
    wait_for,
    write_config,
)


def event(event_id: str, kind: str, seq: int) -> dict:
    return {
        "event_id": event_id,
        "camera": "cam1",
        "type": kind,
        "reason": None,
        "seq": seq,
        "time": 100.0 + seq,
        "score": 2.0,
    }


def metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def published_events(published: list) -> list[tuple[str, str]]:
    assert all(topic == EVENT_TOPIC for topic, _ in published)
    return [(e["event_id"], e["type"]) for e in (json.loads(body) for _, body in published)]


def test_events_wait_unpublished_while_the_log_cannot_be_opened_then_go_out_in_order(tmp_path):
    blocker = tmp_path / "mount"
    blocker.write_text("a file where the log's folder should be")  # unwritable, even for root
    published: list = []
    outbox = Outbox(EventLog(blocker / "events.sqlite"), published.append, retry_seconds=5.0, max_held=100)
    errors = metric("vad_event_log_errors_total")
    for seq, kind in enumerate(["start", "update", "end"]):
        outbox.put(event("a", kind, seq))
    assert published == [] and len(outbox.held) == 3
    assert metric("vad_event_log_up") == 0 and metric("vad_event_log_held") == 3
    assert metric("vad_event_log_errors_total") - errors == 1  # one try, then the next only after retry_seconds

    blocker.unlink()
    blocker.mkdir()  # the disk is back
    outbox.flush()
    assert published == []  # not before retry_seconds have passed
    outbox.flush(now=outbox._next_try)
    assert published_events(published) == [("a", "start"), ("a", "update"), ("a", "end")]
    assert [e["type"] for e in read_events(blocker / "events.sqlite")] == ["start", "update", "end"]
    assert metric("vad_event_log_up") == 1 and metric("vad_event_log_held") == 0


def test_past_max_held_new_events_are_dropped_and_counted(tmp_path):
    (tmp_path / "file").write_text("")
    outbox = Outbox(EventLog(tmp_path / "file" / "events.sqlite"), [].append, retry_seconds=5.0, max_held=2)
    lost = metric("vad_events_lost_total")
    for seq in range(3):
        outbox.put(event(f"e{seq}", "start", seq))
    assert [e["event_id"] for e in outbox.held] == ["e0", "e1"]
    assert metric("vad_events_lost_total") - lost == 1


def test_events_left_open_are_ended_with_reason_restart_before_anything_new(tmp_path):
    path = tmp_path / "events.sqlite"
    earlier = EventLog(path)
    for record in [
        event("open", "start", 1),
        event("done", "start", 2),
        event("done", "end", 3),
        event("open", "update", 4),
    ]:
        earlier.append(record)
    earlier.close()
    published: list = []
    outbox = Outbox(EventLog(path), published.append, retry_seconds=1.0, max_held=100)
    outbox.put(event("new", "start", 10))
    assert published_events(published) == [("open", "end"), ("new", "start")]
    ended = read_events(path)[-2]
    assert ended["reason"] == "restart" and ended["seq"] == 4 and ended["boxes"] == [] and ended["score"] is None
    assert EventLog(path).open_events()[0]["event_id"] == "new"


def test_events_waiting_at_exit_are_spilled_then_logged_and_published_first_at_the_next_start(tmp_path):
    """Issue 19, 5: events held at shutdown with an unwritable log were discarded."""
    blocker = tmp_path / "mount"
    blocker.write_text("a file where the log's folder should be")
    spill_file = tmp_path / "run" / "unlogged-events.jsonl"
    published: list = []
    outbox = Outbox(EventLog(blocker / "events.sqlite"), published.append, 5.0, 100, spill_file)
    waiting = [event("a", "start", 1), event("a", "update", 2), event("b", "start", 3), event("b", "end", 4)]
    for record in waiting:
        outbox.put(record)
    outbox.close()
    assert published == [] and read_spill(spill_file) == waiting

    blocker.unlink()
    blocker.mkdir()  # the disk is back; an alerter starts
    log = EventLog(blocker / "events.sqlite")
    outbox = Outbox(log, published.append, 5.0, 100, spill_file)
    outbox.put(event("c", "start", 10))
    assert published_events(published) == [
        ("a", "start"),
        ("a", "update"),
        ("b", "start"),
        ("b", "end"),
        ("a", "end"),  # left open by the run that spilled it: ended, reason restart
        ("c", "start"),
    ]
    assert read_events(blocker / "events.sqlite")[4]["reason"] == "restart"
    assert not spill_file.exists()

    # A crash while a spill was being logged: what is in the log already is not logged twice.
    spill(spill_file, [waiting[0], event("d", "start", 20)])
    published.clear()
    Outbox(EventLog(blocker / "events.sqlite"), published.append, 5.0, 100, spill_file).flush()
    assert published_events(published) == [("d", "start"), ("c", "end"), ("d", "end")]
    assert not spill_file.exists()


def test_events_waiting_at_exit_go_to_the_process_log_when_the_spill_file_fails_too(tmp_path, caplog):
    (tmp_path / "file").write_text("")
    outbox = Outbox(EventLog(tmp_path / "file" / "events.sqlite"), [].append, 5.0, 100, tmp_path / "file" / "spill")
    waiting = [event("a", "start", 1), event("a", "end", 2)]
    for record in waiting:
        outbox.put(record)
    outbox.close()
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("unlogged event ")]
    assert [json.loads(line.removeprefix("unlogged event ")) for line in logged] == waiting


def test_a_full_disk_holds_events_back_and_reports_it_until_there_is_room(tiny_model):
    with short_dir() as run_dir:
        fill_the_disk_under_the_alerter(run_dir, tiny_model)


def fill_the_disk_under_the_alerter(run_dir, tiny_model):
    card = ModelCard.load(card_path_for(tiny_model))
    config = write_config(
        run_dir,
        tiny_model,
        [{"id": "cam1", "source": str(run_dir), "kind": "folder"}],
        alerter={"score_log": None, "log_retry_seconds": 0.2, "end_after": 2},
    )
    cfg = pipeline_config.load(config)
    port = pipeline_config.metrics_port(cfg, pipeline_config.StageRef("alerter"))
    log_file = run_dir / "log"
    high = card.scoring.threshold * 3
    with (
        zmq.Context() as ctx,
        ctx.socket(zmq.PUSH) as scorer,
        subscriber(cfg.alerter.events_endpoint) as sub,
        running("stage", "alerter", "--config", str(config), log=log_file) as (process, _),
    ):
        scorer.setsockopt(zmq.LINGER, 0)
        scorer.connect(cfg.alerter.scores_endpoint)
        wait_for(lambda: sample(try_scrape(port) or {}, "vad_event_log_up") == 1, 30, "the alerter and its log")
        for seq in range(3):
            scorer.send_multipart(scores_parts(card, seq, 0.0))
        wait_for(lambda: sample(scrape(port), "vad_capture_to_alert_seconds_count", camera="cam1") == 3, 20, "3 frames")

        # Disk full for the alerter: no file of it may grow past its present size (Python ignores SIGXFSZ,
        # so a write past the limit fails with EFBIG, which SQLite reports as an I/O error).
        files = [cfg.alerter.event_log, cfg.alerter.event_log + "-wal", log_file, run_dir / "state" / "alerter.json"]
        limit = max(os.path.getsize(f) for f in files if os.path.exists(f)) + 1024
        resource.prlimit(process.pid, resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
        for seq in range(3, 9):  # an anomaly: an event starts, and updates
            scorer.send_multipart(scores_parts(card, seq, high))
        wait_for(lambda: sample(scrape(port), "vad_event_log_up") == 0, 20, "the alerter to report its log down")
        assert receive_events(sub, 1.0) == []  # nothing published that the log does not have
        families = scrape(port)
        assert sample(families, "vad_event_log_errors_total") >= 1 and sample(families, "vad_event_log_held") >= 1
        assert read_events(cfg.alerter.event_log) == []

        resource.prlimit(process.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        for seq in range(9, 12):
            scorer.send_multipart(scores_parts(card, seq, 0.0))  # the anomaly is over
        wait_for(lambda: sample(scrape(port), "vad_event_log_held") == 0, 20, "the held events to be written")
        published = receive_events(sub, 1.0)
        logged = read_events(cfg.alerter.event_log)
        assert published == logged and [e["type"] for e in logged][0] == "start" and logged[-1]["type"] == "end"
        assert sample(scrape(port), "vad_event_log_up") == 1 and process.poll() is None
    text = log_file.read_text()
    assert "event log cannot write to" in text and "event log writable again" in text


def failing_disk_alerter(run_dir) -> dict:
    """Alerter settings for an alerter whose event log's disk `fail_the_log_disk` can fail."""
    return {
        "score_log": None,
        "log_retry_seconds": 0.2,
        "end_after": 1,
        "event_log": str(run_dir / "disk" / "events.sqlite"),
    }


def fail_the_log_disk(process, cfg, run_dir) -> None:
    """The alerter's next write to its log fails (the write-ahead file may not grow: run it quiet, its other
    files stay smaller), and so does every reopening after it (a file where the log's folder was)."""
    limit = os.path.getsize(cfg.alerter.event_log + "-wal")
    resource.prlimit(process.pid, resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    (run_dir / "disk").rename(run_dir / "away")
    (run_dir / "disk").write_text("")


def restore_the_log_disk(process, run_dir) -> None:
    if process is not None:
        resource.prlimit(process.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    (run_dir / "disk").unlink()
    (run_dir / "away").rename(run_dir / "disk")


def test_a_burst_of_held_events_reaches_a_live_subscriber_whole(tiny_model):
    with short_dir() as run_dir:
        burst_to_a_live_subscriber(run_dir, tiny_model)


def burst_to_a_live_subscriber(run_dir, tiny_model):
    """Issue 19, 2: the events socket's high-water mark was set after bind and never applied (libzmq's 8 instead
    of 1000): 21 held events written out at once lost an update and an end on their way to `vad alerts`."""
    card = ModelCard.load(card_path_for(tiny_model))
    config = write_config(
        run_dir,
        tiny_model,
        [{"id": "cam1", "source": str(run_dir), "kind": "folder"}],
        scoring={"smoothing": "none"},
        alerter={**failing_disk_alerter(run_dir), "update_every": 10**6},
    )
    cfg = pipeline_config.load(config)
    port = pipeline_config.metrics_port(cfg, pipeline_config.StageRef("alerter"))
    high = card.scoring.threshold * 3
    burst = HIGH_WATER_MARK  # events: a start and an end for every two frames
    seq = 0

    def event_pair() -> None:
        nonlocal seq
        for score in (high, 0.0):
            scorer.send_multipart(scores_parts(card, seq, score))
            seq += 1

    with (
        zmq.Context() as ctx,
        ctx.socket(zmq.PUSH) as scorer,
        # Quiet: the full-disk trick below limits every file of the process, its log too.
        running("stage", "alerter", "--config", str(config), log=run_dir / "log", level="warning") as (process, _),
        running("alerts", "--config", str(config), log=run_dir / "alerts.jsonl") as (alerts, _),
    ):
        scorer.setsockopt(zmq.LINGER, 0)
        scorer.connect(cfg.alerter.scores_endpoint)
        wait_for(lambda: sample(try_scrape(port) or {}, "vad_event_log_up") == 1, 30, "the alerter and its log")

        def printed() -> list[dict]:  # `vad alerts` prints events as JSON lines; its log lines go there too
            lines = (run_dir / "alerts.jsonl").read_text().splitlines()
            return [json.loads(line) for line in lines if line.startswith("{")]

        wait_for(lambda: event_pair() or printed(), 30, "`vad alerts` to receive events", interval=0.5)
        decided = lambda: sample(scrape(port), "vad_capture_to_alert_seconds_count", camera="cam1")  # noqa: E731
        wait_for(lambda: decided() == seq, 20, "every frame sent so far decided on")

        fail_the_log_disk(process, cfg, run_dir)
        for _ in range(burst // 2):
            event_pair()
        wait_for(lambda: sample(scrape(port), "vad_event_log_held") == burst, 30, f"{burst} events held")
        restore_the_log_disk(process, run_dir)
        wait_for(lambda: sample(scrape(port), "vad_event_log_held") == 0, 30, "the held events written out")
        logged = read_events(cfg.alerter.event_log)
        held = logged[-burst:]
        wait_for(lambda: printed()[-1] == held[-1], 10, "the last held event at `vad alerts`")
        assert alerts.poll() is None
        assert printed()[-burst:] == held  # every one, in order


def test_an_alerter_stopped_on_a_full_disk_spills_its_events_and_the_next_one_logs_them(tiny_model):
    with short_dir() as run_dir:
        spill_across_a_restart(run_dir, tiny_model)


def spill_across_a_restart(run_dir, tiny_model):
    card = ModelCard.load(card_path_for(tiny_model))
    config = write_config(
        run_dir,
        tiny_model,
        [{"id": "cam1", "source": str(run_dir), "kind": "folder"}],
        scoring={"smoothing": "none"},
        alerter=failing_disk_alerter(run_dir),
    )
    cfg = pipeline_config.load(config)
    port = pipeline_config.metrics_port(cfg, pipeline_config.StageRef("alerter"))
    high = card.scoring.threshold * 3
    spill_file = run_dir / "unlogged-events.jsonl"
    alerter = ("stage", "alerter", "--config", str(config))
    with zmq.Context() as ctx, ctx.socket(zmq.PUSH) as scorer:
        scorer.setsockopt(zmq.LINGER, 0)
        scorer.connect(cfg.alerter.scores_endpoint)
        with running(*alerter, log=run_dir / "log", level="warning") as (process, _):
            wait_for(lambda: sample(try_scrape(port) or {}, "vad_event_log_up") == 1, 30, "the alerter and its log")
            for seq, score in enumerate([high, 0.0]):
                scorer.send_multipart(scores_parts(card, seq, score))
            wait_for(lambda: len(read_events(cfg.alerter.event_log)) == 2, 20, "an event logged")
            fail_the_log_disk(process, cfg, run_dir)
            scorer.send_multipart(scores_parts(card, 2, high))  # an event starts, and waits
            wait_for(lambda: sample(scrape(port), "vad_event_log_held") == 1, 20, "the start held")
            process.send_signal(signal.SIGTERM)  # stopped with the disk still full
            assert process.wait(20) == 0
        spilled = read_spill(spill_file)
        assert [(e["type"], e["reason"]) for e in spilled] == [("start", None), ("end", "shutdown")]
        restore_the_log_disk(None, run_dir)
        assert len(read_events(cfg.alerter.event_log)) == 2

        with (
            subscriber(cfg.alerter.events_endpoint) as sub,
            running(*alerter, log=run_dir / "log2") as _,
        ):
            wait_for(lambda: not spill_file.exists(), 30, "the spilled events logged")
            assert read_events(cfg.alerter.event_log)[2:] == spilled
            assert receive_events(sub, 2.0) == spilled  # and published
