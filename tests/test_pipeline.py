"""The multi-process pipeline over loopback (ipc:// sockets, 127.0.0.1 metrics), with the tiny model."""

from __future__ import annotations

import json
import signal
import threading
import time

import numpy as np
import pytest
import zmq
from prometheus_client import REGISTRY

from streamer.cli import main
from streamer.detector import Detector
from streamer.model import PatchModel
from streamer.pipeline import capture, messages
from streamer.pipeline import config as pipeline_config
from streamer.pipeline.events import read_events
from streamer.sources import FolderSource, SourceError

from .pipeline_helpers import (
    alive,
    child_pids,
    read_jsonl,
    receive_events,
    running,
    sample,
    scrape,
    short_dir,
    subscriber,
    try_scrape,
    wait_for,
    write_config,
)

END_REASONS = {"below_threshold", "end_of_stream", "new_recording", "shutdown"}


@pytest.fixture(scope="module")
def short_run(tiny_model, synthetic_ped2):
    """One 20-frame clip through capture, patcher, two scorers and the alerter, run to its end by `vad run`."""
    with short_dir() as run_dir:
        yield run_through(run_dir, tiny_model, synthetic_ped2 / "Test" / "Test001")


def run_through(run_dir, tiny_model, clip, **sections):
    config = write_config(
        run_dir,
        tiny_model,
        [{"id": "cam1", "source": str(clip)}],
        scorer={"processes": 2, "batch_frames": 4},
        alerter={"exit_at_end": True, "end_after": 2, "update_every": 3},
        metrics={"enabled": False},
        **sections,
    )
    command = ("run", "--config", str(config))
    with subscriber(f"ipc://{run_dir}/events") as sub, running(*command, log=run_dir / "log") as (process, _):
        code = process.wait(90)
        published = receive_events(sub, 1.0)
    return {
        "code": code,
        "clip": clip,
        "published": published,
        "logged": read_events(run_dir / "events.sqlite"),
        "scores": read_jsonl(run_dir / "scores.jsonl"),
    }


def test_a_short_clip_runs_through_all_four_processes_in_order(short_run):
    assert short_run["code"] == 0
    scores = short_run["scores"]
    assert [s["seq"] for s in scores] == list(range(20))  # two scorers, put back in capture order
    assert [s["index"] for s in scores] == list(range(1, 21))
    assert all(s["t_capture"] <= s["t_scored"] <= s["t_alert"] for s in scores)


def test_pipeline_scores_equal_the_offline_detector(short_run, tiny_model):
    offline = list(Detector(PatchModel(tiny_model, threads=1)).run(FolderSource(short_run["clip"])))
    np.testing.assert_allclose([s["score"] for s in short_run["scores"]], [r.score for r in offline], atol=1e-6)
    np.testing.assert_allclose([s["smoothed"] for s in short_run["scores"]], [r.smoothed for r in offline], atol=1e-6)


def test_events_follow_the_schema_and_are_logged_before_published(short_run):
    logged, published = short_run["logged"], short_run["published"]
    assert published == logged  # every event published is in the durable log, in the same order
    assert [e["type"] for e in logged][0] == "start" and logged[-1]["type"] == "end"
    assert logged[-1]["reason"] == "end_of_stream"
    assert len({e["event_id"] for e in logged}) == 1  # the fast mover is one event, not one per frame
    fields = {
        "event_id": str,
        "camera": str,
        "type": str,
        "seq": int,
        "frame_index": int,
        "clip": str,
        "frames": int,
        "start_seq": int,
        "capture_time": float,
        "time": float,
        "peak_score": float,
        "threshold": float,
        "boxes": list,
        "model": dict,
    }
    for event in logged:
        media = {"snapshot", "video"} if event["type"] == "end" else {"snapshot"}  # their paths in the run dir
        assert set(event) == set(fields) | {"reason", "score"} | media
        assert event["snapshot"].startswith(f"snapshots/{event['event_id']}/")
        assert all(isinstance(event[k], t) for k, t in fields.items()), event
        assert event["camera"] == "cam1" and event["type"] in ("start", "update", "end")
        assert (event["reason"] in END_REASONS) if event["type"] == "end" else event["reason"] is None
        assert event["time"] >= event["capture_time"] and event["model"]["sha256"]
        if event["type"] != "end":
            assert event["score"] >= event["threshold"] or event["type"] == "update"
        assert bool(event["boxes"]) == (event["type"] != "end")  # the synthetic mover always stands out
        for box in event["boxes"]:
            assert set(box) == {"x", "y", "w", "h", "score"} and box["score"] > 0
            assert 0 <= box["x"] and box["x"] + box["w"] <= 90 and 0 <= box["y"] and box["y"] + box["h"] <= 60


def frame_parts(camera: str = "cam1", seq: int = 0, shape=(60, 90)) -> list:
    header = {
        "kind": "frame",
        "camera": camera,
        "stream": "test",
        "seq": seq,
        "t_capture": time.time(),
        "index": 1,
        "clip": "",
        "reset": True,
    }
    return messages.encode(header, {"image": np.full(shape, 128, np.uint8)})


def test_malformed_and_oversized_messages_are_counted_and_dropped(tiny_model):
    with short_dir() as run_dir:
        reject_and_carry_on(run_dir, tiny_model)


def reject_and_carry_on(run_dir, tiny_model):
    config = write_config(
        run_dir,
        tiny_model,
        [{"id": "cam1", "source": str(run_dir), "kind": "folder"}],
        messaging={"max_message_bytes": 8192},
    )
    cfg = pipeline_config.load(config)
    port = cfg.metrics.base_port + 1  # stage order: capture[cam1], patcher[cam1], ...
    with zmq.Context() as ctx, ctx.socket(zmq.PUSH) as upstream, ctx.socket(zmq.PULL) as downstream:
        upstream.setsockopt(zmq.SNDTIMEO, 20000)
        upstream.setsockopt(zmq.LINGER, 0)
        upstream.bind(cfg.cameras[0].frames_endpoint)  # this test stands in for the capture stage
        downstream.setsockopt(zmq.LINGER, 0)
        downstream.connect(cfg.cameras[0].patches_endpoint)
        stage = ("stage", "patcher", "--camera", "cam1", "--config", str(config))
        with running(*stage, log=run_dir / "log") as (process, _):
            wait_for(lambda: try_scrape(port), 30, "the patch stage's metrics endpoint")
            upstream.send(b"\x00 not a message")
            upstream.send_multipart([b'{"kind": "frame", "v": 1}', b"xx"])
            # Every part fits the 8192-byte limit but not the whole: counted by decode. (A part over the limit
            # is refused by libzmq itself, which drops the connection: test_hostile_peers.)
            messages.send(upstream, frame_parts(shape=(90, 90)))
            messages.send(upstream, frame_parts(camera="elsewhere"))
            messages.send(upstream, frame_parts(seq=5))
            assert downstream.poll(20000), "the stage stopped passing good frames on"
            out = messages.decode(downstream.recv_multipart(copy=False), 1 << 20)
            assert out.kind == "patches" and out.seq == 5 and out.header["frame_shape"] == [60, 90]
            families = scrape(port)
            rejected = {
                reason: sample(families, "vad_messages_rejected_total", stage="patcher", reason=reason)
                for reason in ("malformed", "oversized", "unknown_camera")
            }
            assert rejected == {"malformed": 2, "oversized": 1, "unknown_camera": 1}
            assert process.poll() is None
            process.send_signal(signal.SIGTERM)
            assert process.wait(15) == 0


class FlakyCamera:
    """An opener: not there at first, then 3 frames before the signal is lost, then frames until stopped."""

    def __init__(self, lost_by_raising: bool):
        self.opens = 0
        self.lost_by_raising = lost_by_raising

    def __call__(self, target):
        assert target == 7
        self.opens += 1
        if self.opens == 1:
            raise SourceError("camera 7 is not there yet")
        return FakeCapture(3 if self.opens == 2 else None, self.lost_by_raising)


class FakeCapture:
    def __init__(self, frames: int | None, lost_by_raising: bool):
        self.left = frames
        self.lost_by_raising = lost_by_raising

    def read(self):
        if self.left == 0:
            if self.lost_by_raising:
                raise RuntimeError("backend error: stream reset by peer")
            return False, None
        if self.left is not None:
            self.left -= 1
        time.sleep(0.01)
        return True, np.full((24, 32, 3), 100, np.uint8)

    def release(self):
        pass


@pytest.mark.parametrize("lost_by_raising", [False, True])
def test_a_lost_camera_is_reconnected_with_backoff(tmp_path, lost_by_raising):
    with short_dir() as run_dir:
        reconnect_flaky_camera(run_dir, tmp_path, lost_by_raising)


def reconnect_flaky_camera(run_dir, tmp_path, lost_by_raising):
    name = f"flaky{int(lost_by_raising)}"
    camera = {"id": name, "source": 7, "reconnect": {"initial_seconds": 0.2, "max_seconds": 0.4}}
    cfg = pipeline_config.load(write_config(run_dir, tmp_path / "unused.onnx", [camera]))
    stop, opener = threading.Event(), FlakyCamera(lost_by_raising)
    received = []
    with zmq.Context() as ctx, ctx.socket(zmq.PULL) as pull:
        pull.setsockopt(zmq.RECONNECT_IVL, 10)
        pull.setsockopt(zmq.LINGER, 0)
        pull.connect(cfg.cameras[0].frames_endpoint)
        stage = threading.Thread(target=capture.run, args=(cfg, name, stop, opener), daemon=True)
        stage.start()
        try:
            while len(received) < 6:
                assert pull.poll(10000), f"frames stopped after {len(received)}"
                received.append(messages.decode(pull.recv_multipart(copy=False), 1 << 20))
            up = REGISTRY.get_sample_value("vad_camera_up", {"camera": name})
            reconnects = REGISTRY.get_sample_value("vad_camera_reconnects_total", {"camera": name})
        finally:
            stop.set()
        while (last := messages.decode(pull.recv_multipart(copy=False), 1 << 20)).kind != "end":
            pass
        stage.join(10)
    assert not stage.is_alive() and last.header["reason"] == "shutdown"
    assert opener.opens == 3 and reconnects == 2 and up == 1
    assert [m.seq for m in received] == list(range(6))
    assert [m.header["index"] for m in received if m.header["reset"]] == [1, 4]  # each reconnection is a new recording
    assert received[0].arrays["image"].shape == (24, 32)  # grayscale at the source


def test_a_paced_file_after_a_stall_goes_on_at_real_time_without_replaying_its_backlog(synthetic_ped2, tmp_path):
    fps = 20.0
    camera = {"id": "paced", "source": str(synthetic_ped2 / "Test" / "Test001"), "pace": True, "fps": fps, "loop": True}
    cfg = pipeline_config.load(write_config(tmp_path, tmp_path / "unused.onnx", [camera]))
    frames = capture.recorded_frames(cfg.cameras[0], threading.Event())
    for _ in range(3):
        next(frames)
    time.sleep(1.5)  # downstream took nothing for 30 frames' time
    next(frames)  # the frame that was due
    started = time.monotonic()
    for _ in range(10):
        next(frames)
    # A clock fixed at the start would send the 30 frames it fell behind by at once; a camera sends 1 per 1/fps.
    assert time.monotonic() - started >= 9.5 / fps


@pytest.fixture
def looping_pipeline(tiny_model, synthetic_ped2):
    """`vad run` on a clip that loops at 50 fps until stopped, with metrics and a subscriber."""
    with short_dir() as run_dir:
        yield from start_looping(run_dir, tiny_model, synthetic_ped2)


def start_looping(run_dir, tiny_model, synthetic_ped2):
    camera = {"id": "loop", "source": str(synthetic_ped2 / "Test" / "Test001"), "pace": True, "fps": 50, "loop": True}
    config = write_config(run_dir, tiny_model, [camera], alerter={"end_after": 2, "update_every": 3})
    command = ("run", "--config", str(config))
    with subscriber(f"ipc://{run_dir}/events") as sub, running(*command, log=run_dir / "log") as (process, children):
        yield {
            "run_dir": run_dir,
            "cfg": pipeline_config.load(config),
            "process": process,
            "children": children,
            "sub": sub,
        }


def test_metrics_endpoints_are_scraped_and_parsed(looping_pipeline):
    base = looping_pipeline["cfg"].metrics.base_port
    ports = {"capture": base, "patcher": base + 1, "scorer": base + 2, "alerter": base + 3}

    def alerter_busy():
        families = try_scrape(ports["alerter"]) or {}
        started = sample(families, "vad_events_total", camera="loop", type="start") or 0
        return started >= 1 and (sample(families, "vad_capture_to_alert_seconds_count", camera="loop") or 0) >= 25

    wait_for(alerter_busy, 60, "25 frames and a start event at the alerter")
    stage = {name: scrape(port) for name, port in ports.items()}
    assert stage["capture"]["vad_frames_captured"].type == "counter"
    assert sample(stage["capture"], "vad_frames_captured_total", camera="loop") >= 25
    assert sample(stage["capture"], "vad_camera_up", camera="loop") == 1
    assert sample(stage["patcher"], "vad_stage_seconds_count", stage="patcher") >= 25
    assert stage["scorer"]["vad_capture_to_score_seconds"].type == "histogram"
    assert sample(stage["scorer"], "vad_frames_scored_total", camera="loop") >= 25
    assert sample(stage["scorer"], "vad_patches_scored_total", camera="loop") >= 25 * 15  # no gate: all 15 patches
    assert sample(stage["scorer"], "vad_capture_to_score_seconds_count", camera="loop") >= 25
    info = next(s for f in stage["scorer"].values() for s in f.samples if s.name == "vad_model_info").labels
    assert info["method"] == "ae" and info["provider"] == "CPUExecutionProvider" and len(info["sha256"]) == 64
    assert float(info["threshold"]) > 0
    assert sample(stage["alerter"], "vad_capture_to_alert_seconds_bucket", camera="loop", le="+Inf") >= 25
    assert sample(stage["alerter"], "vad_frame_score", camera="loop") is not None
    assert sample(stage["alerter"], "vad_queue_depth", stage="alerter") is not None
    for families in stage.values():
        assert sample(families, "process_resident_memory_bytes") > 0
        names = [s.name for f in families.values() for s in f.samples if s.name.startswith("vad_")]
        assert names and all(n == n.lower() for n in names)


def test_sigterm_stops_everything_cleanly_and_loses_no_event(looping_pipeline):
    process, sub, run_dir = looping_pipeline["process"], looping_pipeline["sub"], looping_pipeline["run_dir"]
    published = receive_until_start(sub, 60)
    children = child_pids(process.pid)
    looping_pipeline["children"].update(children)
    assert len(children) == 4
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0
    published += receive_events(sub, 1.0)
    for pid in children:
        wait_for(lambda: not alive(pid), 10, f"stage process {pid} to exit")
    logged = read_events(run_dir / "events.sqlite")
    assert all(event in logged for event in published)
    by_event: dict[str, list[dict]] = {}
    for event in logged:
        by_event.setdefault(event["event_id"], []).append(event)
    for events in by_event.values():
        assert events[0]["type"] == "start" and events[-1]["type"] == "end"  # no event left open
    seqs = [s["seq"] for s in read_jsonl(run_dir / "scores.jsonl")]
    assert seqs == list(range(len(seqs))) and len(seqs) >= 11  # every frame sent was scored, none in flight lost


def receive_until_start(sub, timeout: float) -> list[dict]:
    events = []
    deadline = time.monotonic() + timeout
    while not any(e["type"] == "start" for e in events):
        assert sub.poll(max(1, int((deadline - time.monotonic()) * 1000))), "no event started"
        events += receive_events(sub, 0.01)
    return events


def test_run_refuses_a_missing_model_or_bad_config_before_starting(tmp_path, synthetic_ped2, capsys):
    clip = str(synthetic_ped2 / "Test" / "Test001")
    config = write_config(tmp_path, tmp_path / "missing.onnx", [{"id": "cam1", "source": clip}])
    assert main(["run", "--config", str(config)]) == 2
    assert "model not found" in capsys.readouterr().err
    config.write_text(f"cameras: [{{id: cam1, source: {clip}, pace: sometimes}}]\nscorers: 2\n")
    assert main(["run", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "cameras[0].pace: expected true or false" in err and "scorers: unknown setting" in err
    config = write_config(tmp_path, tmp_path / "missing.onnx", [{"id": "cam1", "source": clip}])
    assert main(["stage", "capture", "--config", str(config)]) == 2
    assert "pass --camera ID" in capsys.readouterr().err
    assert main(["stage", "scorer", "--index", "3", "--config", str(config)]) == 2
    assert "scorer[3] is not a stage of this config" in capsys.readouterr().err


def test_stages_stop_by_themselves_when_the_supervisor_is_killed(looping_pipeline):
    process = looping_pipeline["process"]
    children = wait_for(lambda: len(child_pids(process.pid)) == 4 and child_pids(process.pid), 30, "four stages")
    looping_pipeline["children"].update(children)
    process.kill()
    process.wait(10)
    for pid in children:
        wait_for(lambda: not alive(pid), 15, f"orphaned stage {pid} to stop")


def test_alerts_command_prints_events_as_json_lines(tmp_path, capsys):
    endpoint = f"ipc://{tmp_path}/events"
    event = {"event_id": "e1", "camera": "cam1", "type": "start"}
    done = threading.Event()

    def publish():
        with zmq.Context() as ctx, ctx.socket(zmq.PUB) as pub:
            pub.bind(endpoint)
            while not done.wait(0.05):  # a subscriber joins late: publish until it has heard enough
                pub.send_multipart([b"event", json.dumps(event).encode()])

    publisher = threading.Thread(target=publish)
    publisher.start()
    try:
        assert main(["alerts", "--endpoint", endpoint, "--count", "2", "--timeout", "10"]) == 0
    finally:
        done.set()
        publisher.join()
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line) for line in lines] == [event, event]
    assert main(["alerts", "--endpoint", "udp:/nowhere", "--count", "1"]) == 2
    assert "cannot subscribe to 'udp:/nowhere'" in capsys.readouterr().err


def test_the_scorer_counts_frames_busier_than_any_training_frame(banded_model, synthetic_ped2):
    """Test001 loops; the banded card says no training frame had over 10 moving patches, and some of its frames do."""
    clip = list(Detector(PatchModel(banded_model, threads=1)).run(FolderSource(synthetic_ped2 / "Test" / "Test001")))
    per_loop = sum(r.active > 10 for r in clip)
    assert 0 < per_loop < len(clip)
    with short_dir() as run_dir:
        looping = start_looping(run_dir, banded_model, synthetic_ped2)
        port = next(looping)["cfg"].metrics.base_port + 2  # the scorer's
        wait_for(
            lambda: (sample(try_scrape(port) or {}, "vad_frames_scored_total", camera="loop") or 0) >= 3 * len(clip),
            60,
            "three loops of the clip scored",
        )
        families = scrape(port)
        looping.close()
    loops = int(sample(families, "vad_frames_scored_total", camera="loop")) // len(clip)
    busier = sample(families, "vad_frames_busier_than_training_total", camera="loop")
    assert loops * per_loop <= busier <= (loops + 1) * per_loop  # each loop resets the patch stage: same counts


def test_boxes_under_count_bands_are_the_patches_reaching_the_bands_level(banded_model, synthetic_ped2):
    """Patch scores are on the scale before count bands: a box must reach the threshold mapped back into its band."""
    from streamer.patches import PatchExtractor
    from streamer.pipeline.events import top_boxes

    clip = synthetic_ped2 / "Test" / "Test001"
    with short_dir() as run_dir:
        run = run_through(run_dir, banded_model, clip)
    model = PatchModel(banded_model, threads=1)
    offline = {r.index: r for r in Detector(model).run(FolderSource(clip))}
    frame_boxes = PatchExtractor(model.card.patch).boxes((60, 90))  # max_boxes: the alerter default, 10
    events = [e for e in run["logged"] if e["type"] != "end"]
    assert events
    differs = False
    for event in events:
        result = offline[event["frame_index"]]
        level = model.card.count_bands.level(event["threshold"], result.active)
        assert event["boxes"] == top_boxes(result.patch_scores, frame_boxes, level, 10)
        differs |= event["boxes"] != top_boxes(result.patch_scores, frame_boxes, event["threshold"], 10)
    assert differs  # the bands' level picks other boxes than the bare threshold would


def test_with_the_gate_off_count_bands_still_use_the_gates_count_of_moving_patches(banded_model, synthetic_ped2):
    clip = synthetic_ped2 / "Test" / "Test001"
    with short_dir() as run_dir:
        run = run_through(run_dir, banded_model, clip, gate=False)
    gated = list(Detector(PatchModel(banded_model, threads=1)).run(FolderSource(clip)))
    assert [s["active"] for s in run["scores"]] == [15] * 20  # every patch of the 60x90 frame went to the network
    assert [s["moving"] for s in run["scores"]] == [r.active for r in gated]  # the band is still picked by motion
