"""Helpers for tests that run pipeline processes: configs, polling, scraping, clean-up."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import yaml
import zmq
from prometheus_client.parser import text_string_to_metric_families

from streamer.patches import PatchExtractor
from streamer.pipeline import messages
from streamer.pipeline.config import free_port_base


def load_benchmark(name: str):
    """benchmarks/NAME.py as a module (the benchmarks are scripts, not a package)."""
    path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextmanager
def short_dir():
    """A short temporary folder, removed afterwards: ipc:// socket paths must stay under ~100 bytes."""
    path = Path(tempfile.mkdtemp(prefix="vad-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def write_config(run_dir: Path, model: Path, cameras: list[dict], **sections) -> Path:
    """A pipeline YAML in run_dir: ipc events endpoint, a score log, free metrics ports unless disabled."""
    metrics = sections.pop("metrics", {"base_port": free_port_base(8)})
    alerter = {
        "events_endpoint": f"ipc://{run_dir}/events",
        "score_log": str(run_dir / "scores.jsonl"),
        **sections.pop("alerter", {}),
    }
    config = {
        "model": str(model),
        "run_dir": str(run_dir),
        "cameras": cameras,
        "alerter": alerter,
        "metrics": metrics,
        **sections,
    }
    path = run_dir / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    """Poll until `predicate()` is truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def scrape(port: int) -> dict:
    """Metric families of a /metrics endpoint, parsed with prometheus-client's parser, by name."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def try_scrape(port: int):
    try:
        return scrape(port)
    except OSError:
        return None


def sample(families: dict, name: str, **labels) -> float | None:
    for family in families.values():
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def child_pids(pid: int) -> list[int]:
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(entry))
    return children


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def vad_command(*args: str, level: str = "info") -> list[str]:
    return [sys.executable, "-m", "streamer.cli", "--log-level", level, *args]


@contextmanager
def running(*args: str, log: Path, prefix: tuple[str, ...] = (), level: str = "info"):
    """A `vad ...` process (run through `prefix`, e.g. ip netns exec NAME), killed with all its children on the way
    out whatever happens."""
    with open(log, "w") as out:
        process = subprocess.Popen([*prefix, *vad_command(*args, level=level)], stdout=out, stderr=subprocess.STDOUT)
    children: set[int] = set()
    try:
        yield process, children
    except BaseException:
        print(log.read_text()[-6000:])  # the stages' logs, for the failure report
        raise
    finally:
        children.update(child_pids(process.pid))
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for pid in children:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@contextmanager
def subscriber(endpoint: str):
    """A SUB socket for events, connected before the pipeline starts publishing."""
    with zmq.Context() as ctx, ctx.socket(zmq.SUB) as socket:
        socket.setsockopt(zmq.LINGER, 0)
        socket.connect(endpoint)
        socket.subscribe(b"event")
        yield socket


def receive_events(socket: zmq.Socket, timeout: float) -> list[dict]:
    """Events that arrive within `timeout` seconds of quiet."""
    events = []
    while socket.poll(int(timeout * 1000)):
        topic, body = socket.recv_multipart()
        assert topic == b"event"
        events.append(json.loads(body))
    return events


def rss_bytes(pid: int) -> int:
    """Resident memory of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def stage_label(pid: int) -> str | None:
    """'capture[cam1]', 'scorer[0]', 'alerter', ... for a `vad stage` process, from its command line."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    args = [a.decode() for a in argv]
    if "stage" not in args:
        return None
    name = args[args.index("stage") + 1]
    if "--camera" in args:
        return f"{name}[{args[args.index('--camera') + 1]}]"
    if name == "scorer":
        return f"scorer[{args[args.index('--index') + 1] if '--index' in args else 0}]"
    return name


def stages_of(pid: int) -> dict[str, int]:
    """The live stage processes a `vad run` process supervises, by label."""
    return {label: child for child in child_pids(pid) if alive(child) and (label := stage_label(child))}


def frame_header(camera: str = "cam1", seq: int = 0, stream: str = "test", reset: bool = True) -> dict:
    return {
        "kind": "frame",
        "camera": camera,
        "stream": stream,
        "seq": seq,
        "t_capture": time.time(),
        "index": seq + 1,
        "clip": "",
        "reset": reset,
    }


def scores_parts(card, seq: int, score: float, camera: str = "cam1", stream: str = "test") -> list:
    """A scores message from a stand-in scorer: every patch at `score`, frame score `score`."""
    shape = tuple(card.patch.frame_size)
    positions = len(PatchExtractor(card.patch).boxes(shape))
    header = {
        **frame_header(camera, seq, stream, reset=seq == 0),
        "kind": "scores",
        "frame_shape": list(shape),
        "score": score,
        "active": positions,
        "moving": positions,
        "t_scored": time.time(),
        "model": card.onnx_sha256,
    }
    return messages.encode(header, {"patch_scores": np.full(positions, score, np.float32)})
