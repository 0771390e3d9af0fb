"""Faults of a running daemon: stages killed with SIGKILL, a crash-looping stage.

The daemon test runs `vad run` on a looping clip at 10 fps and kills its scorer,
capture, patch stage and alerter in turn. After each kill the supervisor must
start the stage again and frames must flow; at the end every frame the capture
numbered is either in the score log or counted (and logged) as lost, and every
event that started has ended, the one the killed alerter left open with reason
`restart`.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
import time

import pytest
from prometheus_client import REGISTRY

from streamer.cli import main
from streamer.pipeline import config as pipeline_config
from streamer.pipeline.config import StageRef
from streamer.pipeline.events import read_events
from streamer.pipeline.supervisor import CRASH_LOOP, Supervisor

from .pipeline_helpers import (
    read_jsonl,
    receive_events,
    running,
    sample,
    scrape,
    short_dir,
    stages_of,
    subscriber,
    wait_for,
    write_config,
)

LOST_LINE = re.compile(r"(\S+): (\d+) frame\(s\) of seq \d+-\d+ never arrived: counted as lost")


class CrashingSupervisor(Supervisor):
    """Every stage is a process that fails at once with status 3."""

    def command(self, ref: StageRef) -> list[str]:
        return [sys.executable, "-c", "import sys; sys.exit(3)"]


def crash_config(tmp_path, **supervisor):
    camera = {"id": "c", "source": 0}
    path = write_config(tmp_path, tmp_path / "unused.onnx", [camera], supervisor=supervisor, metrics={"enabled": False})
    return path, pipeline_config.load(path)


def test_a_crashing_stage_is_restarted_with_doubling_waits_and_a_crash_loop_is_reported(tmp_path, caplog):
    path, cfg = crash_config(tmp_path, backoff={"initial_seconds": 0.1, "max_seconds": 0.4})
    supervisor = CrashingSupervisor(path, cfg)
    scorer_labels = {"stage": "scorer", "camera": "", "index": "0"}
    counted = REGISTRY.get_sample_value("vad_stage_restarts_total", scorer_labels)
    assert counted is not None  # created with the supervisor, before any restart
    caplog.set_level(logging.WARNING, logger="streamer.pipeline.supervisor")
    supervisor.start()
    try:
        scorer = supervisor.children[StageRef("scorer")]
        wait_for(lambda: supervisor.poll() is None and scorer.failures >= CRASH_LOOP + 1, 60, "six scorer failures")
    finally:
        supervisor.stop()
    waits = [
        float(m.group(1))
        for r in caplog.records
        if r.getMessage().startswith("scorer[0]") and (m := re.search(r"in ([\d.]+) s$", r.getMessage()))
    ]
    assert waits[:6] == [0.1, 0.2, 0.4, 0.4, 0.4, 0.4]  # doubling, capped at max_seconds
    loops = [r for r in caplog.records if "scorer[0]" in r.getMessage() and "crash loop" in r.getMessage()]
    assert loops and loops[0].levelno == logging.ERROR and f"{CRASH_LOOP} failures in a row" in loops[0].getMessage()
    restarts = REGISTRY.get_sample_value("vad_stage_restarts_total", scorer_labels) - counted
    assert restarts >= CRASH_LOOP  # every restart is counted, and the supervisor kept going
    assert all(child.process is None or child.process.poll() is not None for child in supervisor.children.values())


def test_without_restarts_a_failed_stage_stops_the_pipeline_with_its_status(tmp_path):
    path, cfg = crash_config(tmp_path, restart=False)
    supervisor = CrashingSupervisor(path, cfg)
    supervisor.start()
    try:
        assert wait_for(supervisor.poll, 30, "the pipeline to stop") == 3
    finally:
        supervisor.stop()


@pytest.fixture(scope="module")
def daemon(tiny_model, synthetic_ped2):
    """`vad run` on a 20-frame clip looping at 10 fps (frames 11-20 anomalous), with a subscriber."""
    with short_dir() as run_dir:
        camera = {"id": "cam1", "source": str(synthetic_ped2 / "Test" / "Test001"), "pace": True, "fps": 10}
        camera["loop"] = True
        config = write_config(
            run_dir,
            tiny_model,
            [camera],
            alerter={"end_after": 2, "update_every": 3, "reorder_timeout": 0.5},
            supervisor={"backoff": {"initial_seconds": 0.2, "max_seconds": 1.0}},
        )
        cfg = pipeline_config.load(config)
        command = ("run", "--config", str(config))
        with subscriber(cfg.alerter.events_endpoint) as sub, running(*command, log=run_dir / "log") as (process, _):
            wait_for(lambda: len(stages_of(process.pid)) == 4, 30, "four stages")
            yield {
                "run_dir": run_dir,
                "config": config,
                "cfg": cfg,
                "process": process,
                "sub": sub,
                "kills": {},
                "open_at_kill": set(),
            }


def scored(daemon) -> list[dict]:
    return read_jsonl(daemon["run_dir"] / "scores.jsonl")


def kill(daemon, label: str) -> float:
    """Hang one stage for a second (frames pile up in flight to it), then SIGKILL it; wait for its new
    process and for frames scored after it. Returns when the stage stopped taking frames."""
    process = daemon["process"]
    wait_for(lambda: len(scored(daemon)) >= 5, 60, "frames being scored")
    old = stages_of(process.pid)[label]
    os.kill(old, signal.SIGSTOP)
    stopped_at = time.time()
    time.sleep(1.0)
    os.kill(old, signal.SIGKILL)
    daemon["kills"][label] = daemon["kills"].get(label, 0) + 1
    killed_at = time.time()
    wait_for(lambda: stages_of(process.pid).get(label, old) != old, 30, f"{label} to be started again")
    wait_for(lambda: sum(s["t_alert"] > killed_at for s in scored(daemon)) >= 10, 60, f"frames after {label} came back")
    port = pipeline_config.supervisor_metrics_port(daemon["cfg"])
    ref = next(ref for ref in pipeline_config.stage_refs(daemon["cfg"]) if ref.label == label)
    labels = dict(zip(("stage", "camera", "index"), ref.metric_labels))
    assert sample(scrape(port), "vad_stage_restarts_total", **labels) == daemon["kills"][label]
    assert sample(scrape(port), "vad_stage_up", **labels) == 1
    return stopped_at


def test_vad_health_lists_every_stage_up(daemon, capsys):
    wait_for(lambda: scored(daemon), 60, "frames scored: every stage serving")
    assert main(["health", "--config", str(daemon["config"])]) == 0
    states = dict(line.split() for line in capsys.readouterr().out.splitlines())
    assert states == {
        "capture[cam1]": "up",
        "patcher[cam1]": "up",
        "scorer[0]": "up",
        "alerter": "up",
        "camera[cam1]": "up",
    }


def test_a_killed_scorer_is_restarted_and_frames_flow_again(daemon):
    kill(daemon, "scorer[0]")


def test_a_killed_capture_is_restarted_and_continues_its_stream(daemon):
    before = max(s["seq"] for s in scored(daemon))
    kill(daemon, "capture[cam1]")
    after = [s for s in scored(daemon) if s["seq"] > before]
    assert after and after[0]["seq"] > 0  # numbering went on: no new stream from seq 0
    assert "cam1: the last run did not end its stream" in (daemon["run_dir"] / "log").read_text()


def test_a_killed_patch_stage_is_restarted(daemon):
    kill(daemon, "patcher[cam1]")


def test_a_killed_alerter_ends_the_event_it_left_open(daemon):
    log_path = daemon["cfg"].alerter.event_log
    for _ in range(5):  # the kill must land while an event is open (frames 11-20 of each pass)
        receive_until(daemon["sub"], lambda e: e["type"] == "start")
        stopped_at = kill(daemon, "alerter")
        open_now = open_events(read_events(log_path), before=stopped_at)
        if open_now:
            break
    else:
        pytest.fail("no event was open at any of five alerter kills")
    ends = wait_for(
        lambda: [e for e in read_events(log_path) if e["event_id"] in open_now and e["type"] == "end"],
        30,
        "the open event to be ended",
    )
    assert [e["reason"] for e in ends] == ["restart"] * len(open_now)
    daemon["open_at_kill"] |= open_now


def open_events(events: list[dict], before: float) -> set[str]:
    last = {}
    for event in events:
        if event["time"] <= before:
            last[event["event_id"]] = event
    return {event_id for event_id, event in last.items() if event["type"] != "end"}


def receive_until(sub, predicate, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in receive_events(sub, 0.05):
            if predicate(event):
                return event
    raise AssertionError("the event never came")


def test_after_the_kills_every_frame_is_scored_or_counted_lost_and_every_event_ended(daemon):
    process, run_dir = daemon["process"], daemon["run_dir"]
    assert daemon["kills"] == {
        "scorer[0]": 1,
        "capture[cam1]": 1,
        "patcher[cam1]": 1,
        "alerter": daemon["kills"]["alerter"],
    }
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 0
    seqs = [s["seq"] for s in scored(daemon)]
    assert len(seqs) == len(set(seqs))  # no frame scored twice
    lost = sum(int(count) for camera, count in LOST_LINE.findall((run_dir / "log").read_text()) if camera == "cam1")
    assert (max(seqs) + 1) - len(seqs) == lost  # every number the capture gave out: scored, or counted lost
    assert lost > 0  # the hung stages had frames in flight when they were killed
    events = read_events(daemon["cfg"].alerter.event_log)
    by_id: dict[str, list[dict]] = {}
    for event in events:
        by_id.setdefault(event["event_id"], []).append(event)
    for event_id, records in by_id.items():
        assert records[0]["type"] == "start" and records[-1]["type"] == "end", records
        assert [r["type"] for r in records].count("end") == 1
        assert (records[-1]["reason"] == "restart") == (event_id in daemon["open_at_kill"])
