"""The own-camera path end to end on the generated scene: README.md's walk-through run as printed, then `vad run`.

The commands between README.md's walk-through markers run in a fresh folder
(beside a link to configs/), as a newcomer would type them: generate the
scene, train on its normal footage, calibrate on another day's, evaluate on
the labelled test clips, play one through the pipeline. Then `vad run`
scores the clip with the two runners, and its events are checked against the
labels: an event while each runner is in view, and a larger share of the
runners' frames under events than of the other frames.
"""

import json
import os
import re
import subprocess
import sys

import pytest
import yaml

from streamer.pipeline.config import free_port_base
from streamer.pipeline.events import read_events

from .conftest import REPO
from .pipeline_helpers import short_dir, vad_command

BEGIN, END = "<!-- walk-through: tests/test_own_camera.py runs these -->", "<!-- end of the walk-through -->"


def walkthrough() -> list[str]:
    text = (REPO / "README.md").read_text()
    match = re.search(re.escape(BEGIN) + r"\s*```bash\n(.*?)```\s*" + re.escape(END), text, re.S)
    assert match, f"README.md lost its walk-through between {BEGIN} and {END}"
    return [line for line in match.group(1).splitlines() if line.strip()]


def test_the_walkthrough_is_a_short_list_of_vad_commands():
    commands = walkthrough()
    assert 4 <= len(commands) <= 8 and all(c.startswith("vad ") for c in commands)


def frames_in_events(events: list[dict]) -> set[int]:
    """Frames (1-based) from each event's start to its end."""
    starts = {e["event_id"]: e["frame_index"] for e in events if e["type"] == "start"}
    ends = {e["event_id"]: e["frame_index"] for e in events if e["type"] == "end"}
    return {n for event, start in starts.items() for n in range(start, ends[event] + 1)}


def anomalous_runs(labels: dict[int, int]) -> list[set[int]]:
    """Each run of consecutive anomalous frames: one incident."""
    runs: list[set[int]] = []
    for n in sorted(labels):
        if labels[n]:
            if runs and n - 1 in runs[-1]:
                runs[-1].add(n)
            else:
                runs.append({n})
    return runs


@pytest.mark.slow
def test_the_readme_walkthrough_on_the_generated_scene_then_vad_run_alerts_on_the_fast_mover(tmp_path):
    (tmp_path / "configs").symlink_to(REPO / "configs")
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"}
    outputs = []
    for command in walkthrough():
        done = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"`{command}` failed:\n{done.stderr[-3000:]}"
        outputs.append(done.stdout)

    cards = {p: json.loads(p.read_text()) for p in tmp_path.glob("runs/*.json")}
    calibrated = [p.with_suffix(".onnx") for p, card in cards.items() if card["calibrated_on"].get("from_model")]
    assert len(calibrated) == 1, f"one model trained, then calibrated on the other day: {sorted(cards)}"
    report = json.loads(next(tmp_path.glob("runs/**/report.json")).read_text())
    assert report["frames_scored"] == 2400 and report["model"].endswith(calibrated[0].name)  # four one-minute clips
    assert "start  event" in outputs[-1]  # the demo printed an event as it fired

    labels = {}
    for line in (tmp_path / "scene" / "labels.csv").read_text().splitlines()[1:]:
        clip, frame, label = line.split(",")
        labels.setdefault(clip, {})[int(frame)] = int(label)
    with short_dir() as run_dir:
        config = {
            "model": str(calibrated[0]),
            "run_dir": str(run_dir),
            "cameras": [{"id": "scene", "source": str(tmp_path / "scene" / "test" / "fast.mp4")}],
            "alerter": {"events_endpoint": f"ipc://{run_dir}/events", "exit_at_end": True},
            "metrics": {"base_port": free_port_base(8)},
            "supervisor": {"restart": False},
        }
        (run_dir / "pipeline.yaml").write_text(yaml.safe_dump(config))
        command = vad_command("run", "--config", str(run_dir / "pipeline.yaml"))
        done = subprocess.run(command, timeout=300, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        events = read_events(run_dir / "events.sqlite")
    alerted = frames_in_events(events)
    for run in anomalous_runs(labels["fast"]):
        assert alerted & run, f"no event while the runner of frames {min(run)}-{max(run)} was in view"
    anomalous = {n for n, label in labels["fast"].items() if label}
    normal = set(labels["fast"]) - anomalous
    on_anomalous, on_normal = len(alerted & anomalous) / len(anomalous), len(alerted & normal) / len(normal)
    # the events point at the runners: they cover a larger share of the runners' frames than of the others'
    assert on_anomalous > on_normal, f"events over {on_anomalous:.0%} of the runners' frames, {on_normal:.0%} of others"
