"""Cameras per box: the most live 10 fps cameras this machine holds, with 1 and with 2 scorer processes.

  python benchmarks/cameras_per_box.py --data ../shared/datasets/UCSDped2 --scorers 1 2 --hold 120

A trial runs `vad run` with N live cameras, camera k playing Ped2 test clip k on
a loop at 10 fps (clips reused past 12; the oldest frame dropped when the
pipeline falls behind, as with a real camera). After --warm-up seconds it watches
for --hold seconds: the trial holds if no frame is dropped (by a capture falling
behind, or lost on the way to the alerter) and the 99th percentile of capture ->
alert latency over the frames captured in that time stays within --max-p99-ms. A
trial that drops a frame, or whose share of late frames already makes the p99
fail, ends early.

N starts at --start and doubles while trials hold, then the gap between the
largest N held and the smallest N that failed is halved until they are
neighbours. Each trial starts a fresh pipeline; settings not named here are the
daemon's defaults (event media on). The machine's load average is
read before each trial: other work on the machine lowers the count.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from codetree import REPO
from pipeline import scrape

from streamer import ped2
from streamer.model import BUNDLED_MODEL
from streamer.pipeline import config as pipeline_config

STARTUP_TIMEOUT = 120.0  # seconds for every camera's first frame to be scored
CHECK_SECONDS = 5.0


def write_config(run_dir: Path, args, cameras: int, scorers: int) -> Path:
    clips = ped2.test_clips(args.data)
    config = {
        "model": args.model,
        "run_dir": str(run_dir),
        "cameras": [
            {
                "id": f"cam{k + 1}",
                "kind": "ped2",
                "source": clips[k % len(clips)].name,
                "data": str(args.data),
                "pace": True,
                "fps": 10.0,
                "loop": True,
                "live": True,
            }
            for k in range(cameras)
        ],
        "scorer": {"processes": scorers, "threads": 1},
        "alerter": {"events_endpoint": f"ipc://{run_dir}/events", "score_log": str(run_dir / "scores.jsonl")},
        "metrics": {"base_port": pipeline_config.free_port_base(2 * cameras + scorers + 2)},
        "supervisor": {"restart": False},  # a measurement: a stage that dies ends the trial
    }
    path = run_dir / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class ScoreLog:
    """The alerter's score log read as it grows: complete lines only, each read once."""

    def __init__(self, path: Path):
        self.path, self.offset, self.records = path, 0, []

    def read(self) -> list[dict]:
        if self.path.exists():
            with open(self.path, "rb") as log:
                log.seek(self.offset)
                chunk = log.read()
            complete = chunk[: chunk.rfind(b"\n") + 1]
            self.offset += len(complete)
            self.records += [json.loads(line) for line in complete.splitlines()]
        return self.records


def frames_dropped(cfg, ports: dict[str, int]) -> float:
    """Frames the captures dropped (backpressure) plus frames the alerter counted lost, all cameras."""
    total = 0.0
    for label, port in ports.items():
        reasons = ("backpressure",) if label.startswith("capture") else ("lost",) if label == "alerter" else ()
        samples = scrape(port) if reasons else {}
        for camera in cfg.cameras:
            for reason in reasons:
                total += samples.get(("vad_frames_dropped_total", (("camera", camera.id), ("reason", reason))), 0.0)
    return total


def trial(args, cameras: int, scorers: int) -> dict:
    load = os.getloadavg()[0]
    run_dir = Path(tempfile.mkdtemp(prefix="vad-box-"))
    config = write_config(run_dir, args, cameras, scorers)
    cfg = pipeline_config.load(config)
    ports = {ref.label: pipeline_config.metrics_port(cfg, ref) for ref in pipeline_config.stage_refs(cfg)}
    command = [sys.executable, "-m", "streamer.cli", "--log-level", "warning", "run", "--config", str(config)]
    process = subprocess.Popen(command, cwd=REPO)
    late_limit = args.max_p99_ms / 1000
    scores = ScoreLog(run_dir / "scores.jsonl")
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while len({s["camera"] for s in scores.read()}) < cameras:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{cameras} cameras: the pipeline did not start scoring every camera")
            time.sleep(1.0)
        time.sleep(args.warm_up)
        started, dropped_before = time.time(), frames_dropped(cfg, ports)
        dropped = late = 0
        while time.time() - started < args.hold and process.poll() is None:
            time.sleep(min(CHECK_SECONDS, max(0.0, args.hold - (time.time() - started))))
            dropped = frames_dropped(cfg, ports) - dropped_before
            late = sum(s["t_alert"] - s["t_capture"] > late_limit for s in scores.read() if s["t_capture"] >= started)
            if dropped or late > 0.01 * cameras * 10 * args.hold:  # the p99 cannot come back under the limit
                break
        ended = time.time()
        if process.poll() is not None:
            raise SystemExit(f"{cameras} cameras: the pipeline exited (status {process.returncode})")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait()
    window = [s for s in scores.read() if started <= s["t_capture"] <= ended]
    shutil.rmtree(run_dir, ignore_errors=True)
    latency = np.array([s["t_alert"] - s["t_capture"] for s in window]) * 1000
    p99 = float(np.percentile(latency, 99)) if len(latency) else float("inf")
    watched = ended - started
    return {
        "cameras": cameras,
        "scorers": scorers,
        "seconds": watched,
        "frames": len(window),
        "dropped": dropped,
        "p50_ms": float(np.percentile(latency, 50)) if len(latency) else float("inf"),
        "p99_ms": p99,
        "held": dropped == 0 and p99 <= args.max_p99_ms and watched >= args.hold,
        "load_before": load,
    }


def largest_held(args, scorers: int) -> tuple[int, list[dict]]:
    """Double the camera count while trials hold, then halve the gap to the first count that failed."""
    trials, held, failed = [], 0, None
    count = args.start
    while failed is None and count <= args.max_cameras:
        trials.append(report(trial(args, count, scorers)))
        held, failed = (count, None) if trials[-1]["held"] else (held, count)
        count *= 2
    while failed is not None and failed - held > 1:
        count = (held + failed) // 2
        trials.append(report(trial(args, count, scorers)))
        held, failed = (count, failed) if trials[-1]["held"] else (held, count)
    return held, trials


def report(result: dict) -> dict:
    print(
        f"{result['scorers']} scorer(s), {result['cameras']} cameras: {'held' if result['held'] else 'failed'} "
        f"({result['dropped']:.0f} dropped, p99 {result['p99_ms']:.0f} ms over {result['seconds']:.0f} s; "
        f"load average {result['load_before']:.1f} before)",
        file=sys.stderr,
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="UCSDped2 folder (default: $VAD_PED2, then ../shared/datasets/UCSDped2)")
    parser.add_argument("--model", default=str(BUNDLED_MODEL), help="model .onnx (default: the bundled model)")
    parser.add_argument("--scorers", type=int, nargs="+", default=[1, 2], help="scorer processes, one search each")
    parser.add_argument("--hold", type=float, default=120.0, help="seconds a camera count must hold")
    parser.add_argument("--warm-up", type=float, default=10.0, help="seconds after every camera is scored")
    parser.add_argument("--max-p99-ms", type=float, default=100.0, help="p99 capture -> alert limit")
    parser.add_argument("--start", type=int, default=4, help="first camera count tried")
    parser.add_argument("--max-cameras", type=int, default=64, help="stop doubling here")
    args = parser.parse_args()
    args.data = ped2.resolve_root(args.data).resolve()
    args.model = str(Path(args.model).resolve())

    found = {}
    for scorers in args.scorers:
        found[scorers] = largest_held(args, scorers)
    print(
        f"\n{Path(args.model).name}; {os.cpu_count()} CPUs; hold {args.hold:.0f} s, p99 <= {args.max_p99_ms:.0f} ms\n"
    )
    print("| scorer processes | cameras | result | dropped | capture -> alert p50 / p99 | load average before |")
    print("|---|---|---|---|---|---|")
    for scorers, (_, trials) in found.items():
        for t in sorted(trials, key=lambda t: t["cameras"]):
            print(
                f"| {scorers} | {t['cameras']} | {'held' if t['held'] else 'failed'} after {t['seconds']:.0f} s | "
                f"{t['dropped']:.0f} | {t['p50_ms']:.0f} / {t['p99_ms']:.0f} ms | {t['load_before']:.1f} |"
            )
    print()
    for scorers, (held, _) in found.items():
        print(f"largest camera count held for {args.hold:.0f} s with {scorers} scorer process(es): {held}")


if __name__ == "__main__":
    main()
