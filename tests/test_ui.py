"""The review page's app: paging, filters, bad ids, media, escaping and the token, over a run dir (no browser)."""

from __future__ import annotations

import json
import urllib.request
import uuid

import pytest
from starlette.testclient import TestClient

from streamer.pipeline.config import free_port_base
from streamer.pipeline.events import EventLog, EventTracker
from streamer.pipeline.media import SNAPSHOT_DIR
from streamer.ui.app import create_app
from streamer.ui.cameras import CameraStates
from streamer.ui.store import EventStore

from .pipeline_helpers import running, short_dir, wait_for, write_config

T0 = 1_700_000_000.0


def log_event(log: EventLog, camera: str, at: float, peak: float = 3.0, end: bool = True) -> str:
    """An event as the alerter logs it: start, an update, and (if `end`) an end; returns its id."""
    tracker = EventTracker(camera, threshold=2.0, end_after=1, update_every=1, model={"method": "ae"})
    scores = [2.5, peak] + ([1.0] if end else [])
    for i, score in enumerate(scores):
        position = {"seq": i, "frame_index": i + 1, "clip": "", "capture_time": at + i / 10}
        event = tracker.frame(position, score, lambda: [{"x": 15, "y": 30, "w": 30, "h": 30, "score": score}])
        if event is not None:
            log.append({**event, "time": at + i / 10})
    return event["event_id"]


@pytest.fixture
def run(tmp_path):
    log = EventLog(tmp_path / "events.sqlite")
    yield tmp_path, log
    log.close()


def client(run_dir, token=None, allowed_hosts=None) -> TestClient:
    store = EventStore(run_dir / "events.sqlite", run_dir)
    app = create_app(store, CameraStates({}, ["cam1", "cam2"]), token=token, allowed_hosts=allowed_hosts)
    return TestClient(app, base_url="http://127.0.0.1:8080")


def test_api_events_pages_newest_first_and_filters(run):
    run_dir, log = run
    ids = [log_event(log, f"cam{1 + i % 2}", T0 + 60 * i) for i in range(7)]
    with client(run_dir) as http:
        first = http.get("/api/events", params={"limit": 3}).json()
        assert [e["id"] for e in first["events"]] == ids[::-1][:3]
        second = http.get(first["next"]).json()
        third = http.get(second["next"]).json()
        assert [e["id"] for e in second["events"] + third["events"]] == ids[::-1][3:]
        assert third["next"] is None
        event = first["events"][0]
        assert (event["camera"], event["peak_score"], event["threshold"], event["reason"]) == (
            "cam1",
            3.0,
            2.0,
            "below_threshold",
        )
        assert event["start"] == T0 + 360 and event["end"] == pytest.approx(T0 + 360.2) and not event["open"]
        cam2 = http.get("/api/events", params={"camera": "cam2"}).json()["events"]
        assert [e["id"] for e in cam2] == [ids[5], ids[3], ids[1]]
        window = http.get("/api/events", params={"since": T0 + 100, "until": T0 + 250}).json()["events"]
        assert [e["id"] for e in window] == [ids[4], ids[3], ids[2]]
        iso = http.get("/api/events", params={"since": "2023-11-14T22:15:00+00:00"}).json()["events"]
        assert [e["id"] for e in iso] == ids[::-1][:5]  # T0 is 22:13:20 UTC
        bad = http.get("/api/events", params={"limit": "lots"})
        assert bad.status_code == 400 and "limit" in bad.json()["error"]


def test_a_bad_or_unknown_event_id_is_a_404_with_a_json_error(run):
    run_dir, log = run
    event_id = log_event(log, "cam1", T0)
    with client(run_dir) as http:
        found = http.get(f"/api/events/{event_id}").json()
        assert [r["type"] for r in found["records"]] == ["start", "update", "end"]
        assert found["boxes"] == [{"x": 15, "y": 30, "w": 30, "h": 30, "score": 3.0}]
        for bad in ("nope", uuid.uuid4().hex, "..%2F..%2Fevents.sqlite", "A" * 32):
            response = http.get(f"/api/events/{bad}")
            assert response.status_code == 404 and response.headers["content-type"] == "application/json"
            assert "error" in response.json()
        page = http.get(f"/events/{uuid.uuid4().hex}")
        assert page.status_code == 404 and "no such event" in page.text.lower()


def test_media_are_served_from_the_event_folder_only(run):
    run_dir, log = run
    event_id = log_event(log, "cam1", T0)
    folder = run_dir / SNAPSHOT_DIR / event_id
    folder.mkdir(parents=True)
    (folder / "start.jpg").write_bytes(b"\xff\xd8jpeg")
    (run_dir / "secret.txt").write_text("not for the page")
    (folder / "peak.jpg").symlink_to(run_dir / "secret.txt")
    with client(run_dir) as http:
        response = http.get(f"/media/{event_id}/start.jpg")
        assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
        for bad in (
            f"/media/{event_id}/peak.jpg",
            f"/media/{event_id}/scores.json",
            f"/media/{event_id}/..%2F..%2Fsecret.txt",
        ):
            assert http.get(bad).status_code == 404, bad
        summary = http.get(f"/api/events/{event_id}").json()["summary"]
        assert summary["media"] == {"start.jpg": f"/media/{event_id}/start.jpg"}


def test_what_the_log_holds_is_escaped_and_a_malformed_row_is_skipped(run):
    run_dir, log = run
    event_id = log_event(log, "<script>alert(1)</script>", T0)
    log.db.execute(
        "INSERT INTO events (event_id, camera, type, time, body) VALUES ('x', 'cam1', 'start', 1, 'not json')"
    )
    with client(run_dir) as http:
        listing = http.get("/")
        assert listing.status_code == 200
        assert (
            "<script>alert(1)</script>" not in listing.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in listing.text
        )
        page = http.get(f"/events/{event_id}")
        assert "<script>" not in page.text
        assert "script-src" not in page.headers["content-security-policy"]  # no script may run at all
        assert page.headers["content-security-policy"].startswith("default-src 'none'")
        assert len(http.get("/api/events").json()["events"]) == 1


def test_the_event_page_plots_the_score_trace_against_the_threshold(run):
    run_dir, log = run
    event_id = log_event(log, "cam1", T0)
    folder = run_dir / SNAPSHOT_DIR / event_id
    folder.mkdir(parents=True)
    frames = [[i, i + 1, T0 + (i - 5) / 10, 1.0 + 0.4 * min(i, 8), 1.0] for i in range(12)]
    (folder / "scores.json").write_text(json.dumps({"threshold": 2.0, "complete": True, "frames": frames}))
    with client(run_dir) as http:
        page = http.get(f"/events/{event_id}").text
    assert 'class="plot"' in page and 'class="smoothed"' in page and 'class="threshold"' in page
    points = page.split('class="smoothed" points="')[1].split('"')[0].split()
    assert len(points) == 12
    ys = [float(p.split(",")[1]) for p in points]
    assert ys[0] > ys[-1]  # the score rises: up the page


def test_a_token_guards_every_request_and_a_browser_keeps_it_in_a_cookie(run):
    run_dir, log = run
    log_event(log, "cam1", T0)
    token = "correct-horse-battery-staple"
    with client(run_dir, token=token) as http:
        assert http.get("/api/events").status_code == 401
        assert http.get("/api/events", headers={"Authorization": "Bearer wrong-token-wrong-token"}).status_code == 401
        assert http.get("/api/events", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        assert http.get("/", params={"token": "wrong"}).status_code == 401
        first = http.get("/", params={"token": token, "camera": "cam1"}, follow_redirects=False)
        assert first.status_code == 303 and first.headers["location"] == "/?camera=cam1"  # the token leaves the URL
        assert "httponly" in first.headers["set-cookie"].lower() and token not in first.headers["set-cookie"]
        assert http.get("/").status_code == 200  # the cookie from now on


def test_on_loopback_a_request_for_another_host_name_is_refused(run):
    run_dir, _ = run
    with client(run_dir, allowed_hosts={"127.0.0.1", "localhost"}) as http:
        assert http.get("/api/events").status_code == 200
        assert http.get("/api/events", headers={"Host": "attacker.example:8080"}).status_code == 400


def test_vad_run_serves_the_page_with_each_cameras_state_from_its_metrics(tiny_model, synthetic_ped2):
    """`vad run` with ui.enabled: the page is one more supervised process; /api/cameras reads the metrics."""
    with short_dir() as run_dir:
        camera = {
            "id": "loop",
            "source": str(synthetic_ped2 / "Test" / "Test001"),
            "pace": True,
            "fps": 20,
            "loop": True,
        }
        port = free_port_base(1)
        config = write_config(
            run_dir, tiny_model, [camera], alerter={"end_after": 2}, ui={"enabled": True, "port": port}
        )
        with running("run", "--config", str(config), log=run_dir / "log"):

            def camera_state():
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/cameras", timeout=2) as response:
                        (state,) = json.loads(response.read())["cameras"]
                except OSError:
                    return None
                return state if state["fps"] and state["last_score"] is not None and state["latest_event"] else None

            state = wait_for(camera_state, 90, "the page to report the camera up, its frame rate and an event")
            assert state["camera"] == "loop" and state["up"] is True
            assert 10 < state["fps"] < 30  # paced at 20 fps
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/cameras", timeout=5) as response:
                page = response.read().decode()
            assert 'class="badge up"' in page and "fps" in page
            event_id = state["latest_event"]["id"]
            wait_for(
                lambda: (run_dir / "snapshots" / event_id / "start.jpg").exists(), 30, "the event's start snapshot"
            )
