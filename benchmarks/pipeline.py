"""Streaming pipeline benchmark on the UCSD Ped2 test clips; prints a table.

  python benchmarks/pipeline.py --data ../shared/datasets/UCSDped2 --duration 600

1. Throughput: the 12 test clips (2010 frames) through the multi-process
   pipeline as fast as it goes (lossless source), with the model card's cascade
   gate on and off; frames/s from the first capture to the last alert decision,
   and the EER of the scores each run produced.
2. Latency: the test clips looped at 10 fps real time as a live source (oldest
   frame dropped if the pipeline falls behind) for --duration seconds; p50/p99
   capture->score and capture->alert, frames dropped, and each stage process's
   resident memory (from its /metrics) after warm-up and at the end.

With --media both are also run with event media on (start and peak snapshots, score
traces, clips; docs/review.md), side by side with them off: the Ped2 test clips
hold many anomalies, so media work goes on most of the time.

Figures depend on the machine and on what else runs on it: the table says the
CPU count and load average.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import yaml
from prometheus_client.parser import text_string_to_metric_families

from streamer import ped2
from streamer.evaluation import summarize
from streamer.model import BUNDLED_MODEL, PatchModel
from streamer.pipeline import config as pipeline_config
from streamer.pipeline.supervisor import Supervisor

WARM_UP_FRAMES = 50  # latency and memory are measured after these


def write_config(
    run_dir: Path, args, camera: dict, gate: bool = True, metrics: bool = False, media: bool = False
) -> Path:
    config = {
        "model": str(args.model),
        "run_dir": str(run_dir),
        "gate": gate,
        "cameras": [{"id": "ped2", "kind": "ped2", "source": "test", "data": str(args.data), **camera}],
        "scorer": {"processes": args.scorers, "threads": args.threads, "device": args.device},
        "alerter": {
            "events_endpoint": f"ipc://{run_dir}/events",
            "score_log": str(run_dir / "scores.jsonl"),
            "exit_at_end": not camera.get("loop", False),
            "media": {"enabled": media},
        },
        "metrics": {"base_port": pipeline_config.free_port_base(4 + args.scorers)} if metrics else {"enabled": False},
        "supervisor": {"restart": False},  # a measurement, not a daemon: a failed stage ends it
    }
    path = run_dir / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def read_scores(run_dir: Path) -> list[dict]:
    path = run_dir / "scores.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def scrape(port: int) -> dict[tuple, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def throughput(args, gate: bool, media: bool = False) -> dict:
    run_dir = Path(tempfile.mkdtemp(prefix="vad-bench-"))
    try:
        config = write_config(run_dir, args, {}, gate=gate, media=media)
        supervisor = Supervisor(config, pipeline_config.load(config), log_level="warning")
        supervisor.start()
        try:
            code = None
            while code is None:
                time.sleep(0.5)
                code = supervisor.poll()
        finally:
            supervisor.stop()
        finished = time.time()  # the alerter exits once its media are written
        if code != 0:
            raise SystemExit(f"throughput run failed (status {code})")
        scores = read_scores(run_dir)
        snapshots = len(list(run_dir.glob("snapshots/*/*.jpg")))
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    clips = {clip.name: clip for clip in ped2.test_clips(args.data)}
    records = [
        {"video": s["clip"], "score": s["smoothed"], "label": int(clips[s["clip"]].labels[s["index"] - 1])}
        for s in scores
    ]
    seconds = max(s["t_alert"] for s in scores) - min(s["t_capture"] for s in scores)
    return {
        "frames": len(scores),
        "seconds": seconds,
        "fps": len(scores) / seconds,
        "patches_per_frame": float(np.mean([s["active"] for s in scores])),
        "eer": summarize(records)["eer"],
        "snapshots": snapshots,
        "tail": finished - max(s["t_alert"] for s in scores),
    }


def latency(args, media: bool = False) -> dict:
    run_dir = Path(tempfile.mkdtemp(prefix="vad-bench-"))
    try:
        camera = {"pace": True, "fps": 10.0, "loop": True, "live": True}
        config = write_config(run_dir, args, camera, metrics=True, media=media)
        cfg = pipeline_config.load(config)
        ports = {ref.label: pipeline_config.metrics_port(cfg, ref) for ref in pipeline_config.stage_refs(cfg)}
        supervisor = Supervisor(config, cfg, log_level="warning")
        supervisor.start()
        try:
            while len(read_scores(run_dir)) < WARM_UP_FRAMES:
                time.sleep(0.5)
            started = time.monotonic()
            rss = {label: [rss_of(port)] for label, port in ports.items()}
            while time.monotonic() - started < args.duration:
                time.sleep(min(30.0, max(0.0, args.duration - (time.monotonic() - started))))
                for label, port in ports.items():
                    rss[label].append(rss_of(port))
            capture = scrape(ports["capture[ped2]"])
        finally:
            supervisor.stop()
        scores = read_scores(run_dir)[WARM_UP_FRAMES:]
        clips = len(list(run_dir.glob("snapshots/*/clip.*")))
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    to_score = np.array([s["t_scored"] - s["t_capture"] for s in scores]) * 1000
    to_alert = np.array([s["t_alert"] - s["t_capture"] for s in scores]) * 1000
    dropped = capture.get(("vad_frames_dropped_total", (("camera", "ped2"), ("reason", "backpressure"))), 0.0)
    return {
        "frames": len(scores),
        "captured": capture[("vad_frames_captured_total", (("camera", "ped2"),))],
        "dropped": dropped,
        "score_ms": np.percentile(to_score, [50, 99, 100]),
        "alert_ms": np.percentile(to_alert, [50, 99, 100]),
        "rss": rss,
        "clips": clips,
    }


def latency_rows(rows: list, result: dict, args, media: bool) -> None:
    condition = f", event media {'on' if media else 'off'}" if args.media else ""
    rows.append(
        (
            f"capture -> score at 10 fps{condition}, p50 / p99 / max",
            "{:.0f} / {:.0f} / {:.0f} ms".format(*result["score_ms"]),
            "",
        )
    )
    clips = f" ({result['clips']} clips written)" if media else ""
    rows.append(
        (
            f"capture -> alert at 10 fps{condition}, p50 / p99 / max",
            "{:.0f} / {:.0f} / {:.0f} ms{}".format(*result["alert_ms"], clips),
            "p99 <= 100 ms",
        )
    )
    rows.append(
        (
            f"frames dropped at 10 fps over {args.duration:.0f} s{condition}",
            f"{result['dropped']:.0f} of {result['captured'] + result['dropped']:.0f}",
            "0",
        )
    )
    for label, samples in result["rss"].items():
        rows.append(
            (
                f"RSS {label}{condition}: after warm-up, half-way, end",
                f"{samples[0]:.0f}, {samples[len(samples) // 2]:.0f}, {samples[-1]:.0f} MiB",
                "flat",
            )
        )


def rss_of(port: int) -> float:
    return scrape(port)[("process_resident_memory_bytes", ())] / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="UCSDped2 folder (default: $VAD_PED2, then ../shared/datasets/UCSDped2)")
    parser.add_argument("--model", default=str(BUNDLED_MODEL), help="model .onnx (default: the bundled model)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of the 10 fps latency run")
    parser.add_argument("--scorers", type=int, default=1, help="scorer processes")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads per scorer")
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    parser.add_argument("--skip", choices=["throughput", "no-gate", "latency"], action="append", default=[])
    parser.add_argument("--media", action="store_true", help="also run with event media on (snapshots, clips)")
    args = parser.parse_args()
    args.data = ped2.resolve_root(args.data)
    model = PatchModel(args.model, device=args.device, threads=1)
    load_before = os.getloadavg()

    rows = []
    if "throughput" not in args.skip:
        gates = [True] + ([False] if "no-gate" not in args.skip and model.card.gate else [])
        runs = [(gate, False) for gate in gates] + [(True, True)] * args.media
        for gate, media in runs:
            result = throughput(args, gate, media)
            name = "cascade gate on" if gate else "gate off (every patch to the network)"
            name += f", event media {'on' if media else 'off'}" if args.media else ""
            wrote = (
                f"; {result['snapshots']} snapshots, done {result['tail']:.1f} s after the last alert" if media else ""
            )
            rows.append(
                (
                    f"end-to-end, sources unpaced, {name}",
                    f"{result['fps']:.1f} frames/s ({result['frames']} frames in {result['seconds']:.1f} s; "
                    f"{result['patches_per_frame']:.0f} patches/frame to the network; EER {result['eer']:.2%}{wrote})",
                    ">= 100 frames/s" if gate else "",
                )
            )
    if "latency" not in args.skip:
        for media in [False] + [True] * args.media:
            latency_rows(rows, latency(args, media), args, media)

    print(
        f"\nmodel {Path(args.model).name} ({model.card.method}, {model.provider}), {args.scorers} scorer(s) x "
        f"{args.threads} thread(s); {os.cpu_count()} CPUs, load average {load_before[0]:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after\n"
    )
    width = max(len(r[0]) for r in rows)
    print(f"| {'measure':<{width}} | result | target |")
    print(f"|{'-' * (width + 2)}|--------|--------|")
    for measure, value, target in rows:
        print(f"| {measure:<{width}} | {value} | {target} |")


if __name__ == "__main__":
    main()
