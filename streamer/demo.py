"""`vad demo`: the whole multi-process pipeline on the bundled sample clip, events printed as they fire.

The clip (streamer/samples/ped2_test002.mp4, see ATTRIBUTION.txt there) plays at
its own 10 fps as a stand-in camera: pedestrians first, then a cyclist. Every
stage serves /metrics while it runs; a summary follows when the clip ends. With
--mqtt or --webhook the notifier stage delivers the events there too (camera
`demo` in Home Assistant, through MQTT discovery).

The review page (events with their snapshots and clips) is served from the
start; after the summary it stays up until Ctrl-C when the output is a terminal,
so scripts and tests, whose output is not, end with the clip (or pass --no-ui).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from .model import BUNDLED_MODEL
from .pipeline import PipelineError
from .pipeline import config as pipeline_config
from .pipeline.checks import preflight
from .pipeline.events import events_after, read_events
from .pipeline.media import SNAPSHOT_DIR
from .pipeline.supervisor import Supervisor

SAMPLE_CLIP = Path(__file__).resolve().parent / "samples" / "ped2_test002.mp4"
DEFAULT_METRICS_PORT = 9100
DEFAULT_UI_PORT = 8080


def demo_config(
    run_dir: Path,
    model: Path,
    clip: Path,
    pace: bool,
    metrics_port: int,
    notify: dict | None = None,
    ui_port: int = DEFAULT_UI_PORT,
) -> dict:
    config = {
        "model": str(model),
        "run_dir": str(run_dir),
        # A video file says its own frame rate; an image folder plays at Ped2's 10 fps.
        "cameras": [{"id": "demo", "source": str(clip), "pace": pace, "fps": None if clip.is_file() else 10.0}],
        "alerter": {
            "events_endpoint": f"ipc://{run_dir}/events",
            "score_log": str(run_dir / "scores.jsonl"),
            "exit_at_end": True,
        },
        "metrics": {"base_port": metrics_port},
        "ui": {"port": ui_port},
    }
    return {**config, "notify": notify} if notify else config


def demo_notify(mqtt: str | None, webhook: str | None) -> dict | None:
    """A notify section for `--mqtt HOST[:PORT]` and `--webhook URL` (start and end events).

    MQTT topics go under `vad-demo/`, apart from a daemon's `vad/` on the same broker.
    """
    notify = {}
    if mqtt:
        host, _, port = mqtt.partition(":")
        notify["mqtt"] = {"host": host, "port": int(port)} if port.isdigit() else {"host": mqtt}
        notify["mqtt"]["topic_prefix"] = "vad-demo"
    if webhook:
        notify["webhooks"] = [{"url": webhook}]
    return notify or None


def describe(event: dict) -> str:
    boxes = " ".join(f"({b['x']},{b['y']},{b['w']},{b['h']})" for b in event["boxes"][:3])
    more = f" +{len(event['boxes']) - 3}" if len(event["boxes"]) > 3 else ""
    score = "" if event["score"] is None else f"score {event['score']:7.2f}  "
    why = f"  ({event['reason']}, peak {event['peak_score']:.2f})" if event["type"] == "end" else ""
    where = f"  boxes {boxes}{more}" if boxes else ""
    return (
        f"  {event['type']:<6} event {event['event_id'][:8]}  frame {event['frame_index']:>4}  "
        f"{score}threshold {event['threshold']:.2f}{where}{why}"
    )


def run_demo(
    model: str | None = None,
    clip: str | None = None,
    pace: bool = True,
    metrics_port: int | None = None,
    as_json: bool = False,
    log_level: str = "warning",
    notify: dict | None = None,
    ui: bool = True,
) -> int:
    model_path = Path(model) if model else BUNDLED_MODEL
    clip_path = Path(clip) if clip else SAMPLE_CLIP
    run_dir = Path(tempfile.mkdtemp(prefix="vad-demo-"))
    ports = 6 if notify else 5  # the stages', then the supervisor's
    port = metrics_port or pipeline_config.free_port_base(ports, preferred=DEFAULT_METRICS_PORT)
    config_path = run_dir / "demo.yaml"
    ui_port = pipeline_config.free_port_base(1, preferred=DEFAULT_UI_PORT) if ui else DEFAULT_UI_PORT
    config_path.write_text(yaml.safe_dump(demo_config(run_dir, model_path, clip_path, pace, port, notify, ui_port)))
    cfg = pipeline_config.load(config_path)
    preflight(cfg)
    page = None
    if ui:
        from .ui.server import BackgroundServer, site_for_config

        page = BackgroundServer(site_for_config(cfg))
        page.start()
    refs = pipeline_config.stage_refs(cfg)
    first, last = (pipeline_config.metrics_port(cfg, ref) for ref in (refs[0], refs[-1]))
    print(f"vad demo: {clip_path.name} through capture -> patches -> scorer -> alerts, each its own process")
    print(f"  model    {model_path}")
    print(f"  metrics  http://127.0.0.1:{first}/metrics .. :{last}/metrics ({', '.join(r.label for r in refs)})")
    print(f"  events   vad alerts --endpoint {cfg.alerter.events_endpoint}   (JSON lines, from another terminal)")
    if cfg.notify:
        where = ", ".join(f"{d.name} {d.address}" for d in cfg.notify.destinations)
        print(f"  notify   {where} (see docs/alerts.md)")
    if page is not None:
        print(f"  review   {page.site.url}   (events with snapshots and clips, in a browser)")
    speed = "at the clip's own frame rate, like a camera" if pace else "as fast as the pipeline goes"
    print(f"  playing  {speed}; Ctrl-C stops\n")
    supervisor = Supervisor(config_path, cfg, log_level=log_level)
    started = time.monotonic()
    # Events are read back from the durable log, not the PUB socket: a subscriber that joins after the
    # first event was published (ZeroMQ's slow joiner) would miss it, the log never does.
    printed = 0
    supervisor.start()
    code, interrupted = None, False
    try:
        try:
            while code is None:
                time.sleep(0.2)
                printed = _print_new_events(cfg.alerter.event_log, printed, as_json)
                code = supervisor.poll()
        except KeyboardInterrupt:
            print("\ninterrupted: stopping the pipeline")
            interrupted = True
        finally:
            supervisor.stop()
        _print_new_events(cfg.alerter.event_log, printed, as_json)
        if code not in (None, 0):
            raise PipelineError(f"the pipeline stopped with status {code} (see the stage errors above)")
        summarize(run_dir, cfg, time.monotonic() - started)
        if page is not None and not interrupted and sys.stdout.isatty():
            wait_for_ctrl_c(page.site.url)
    finally:
        if page is not None:
            page.stop()
    return 0


def wait_for_ctrl_c(url: str) -> None:
    print(f"\nreview page: {url}   (still served; Ctrl-C stops it)", flush=True)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        print()


def _print_new_events(log: Path, printed: int, as_json: bool) -> int:
    """Prints the events logged after row `printed`; returns the last row printed."""
    for row, event in events_after(log, printed):
        print(json.dumps(event) if as_json else describe(event), flush=True)
        printed = row
    return printed


def summarize(run_dir: Path, cfg: pipeline_config.PipelineConfig, seconds: float) -> None:
    scores = [json.loads(line) for line in (run_dir / "scores.jsonl").read_text().splitlines()]
    events = read_events(cfg.alerter.event_log)
    counts = {kind: sum(e["type"] == kind for e in events) for kind in ("start", "update", "end")}
    print(f"\nsummary: {len(scores)} frames scored in {seconds:.1f} s")
    if scores:
        latency = np.array([s["t_alert"] - s["t_capture"] for s in scores]) * 1000
        peak = max(scores, key=lambda s: s["smoothed"])
        print(f"  highest smoothed score {peak['smoothed']:.2f} at frame {peak['index']}")
        p50, p99 = np.percentile(latency, [50, 99])
        print(f"  capture -> alert latency p50 {p50:.0f} ms, p99 {p99:.0f} ms")
    print(f"  events: {counts['start']} started, {counts['update']} updates, {counts['end']} ended")
    print(f"  event log (SQLite) {cfg.alerter.event_log}; per-frame scores {run_dir / 'scores.jsonl'}")
    print(f"  snapshots and clips {run_dir / SNAPSHOT_DIR}")
