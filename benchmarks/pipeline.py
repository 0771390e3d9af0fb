"""Streaming pipeline benchmark on the UCSD Ped2 test clips; prints a table.

  python benchmarks/pipeline.py --data ../shared/datasets/UCSDped2 --duration 600

1. Throughput: the 12 test clips (2010 frames) through the multi-process
   pipeline (`vad run`) as fast as it goes (lossless source), with the model
   card's cascade gate on and off; frames/s from the first capture to the last
   alert decision, the EER of the scores each run produced, and each stage
   process's CPU time per frame (from its /metrics, after its first frame).
   With --baseline MODEL the baseline (that model, run by the `streamer` package
   of --baseline-code, by default the commit before the throughput work) and
   this checkout's model and code take turns, --rounds times each; the table
   gives the median of each, and `speed-up vs baseline` (gate on) is the median
   of the rounds' ratios, each round's two runs made back to back, so that a
   change in the machine's load between rounds cancels out.
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
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import yaml
from codetree import REPO, code_at, env_for
from prometheus_client.parser import text_string_to_metric_families

from streamer import ped2
from streamer.evaluation import summarize
from streamer.model import BUNDLED_MODEL, PatchModel
from streamer.pipeline import config as pipeline_config
from streamer.pipeline.supervisor import Supervisor

WARM_UP_FRAMES = 50  # latency and memory are measured after these
# The code the bundled model was measured with before the throughput work (issue 17): --baseline runs it.
BASELINE_CODE = "2403843"
THROUGHPUT_TIMEOUT = 600.0  # seconds for one unpaced pass over the test clips


def write_config(
    run_dir: Path,
    args,
    camera: dict,
    gate: bool = True,
    metrics: bool = False,
    model: str | None = None,
    media: bool | None = False,
) -> Path:
    config = {
        "model": str(model or args.model),
        "run_dir": str(run_dir),
        "gate": gate,
        "cameras": [{"id": "ped2", "kind": "ped2", "source": "test", "data": str(args.data), **camera}],
        "scorer": {"processes": args.scorers, "threads": args.threads, "device": args.device},
        "alerter": {
            "events_endpoint": f"ipc://{run_dir}/events",
            "score_log": str(run_dir / "scores.jsonl"),
            # unpaced: the alerter ends the run once its media are written (otherwise the benchmark stops it)
            "exit_at_end": bool(media) and not camera.get("loop", False),
            # None: code from before event media (the baseline), which knows no such key
            **({"media": {"enabled": media}} if media is not None else {}),
        },
        "metrics": {"base_port": pipeline_config.free_port_base(4 + args.scorers)} if metrics else {"enabled": False},
        "supervisor": {"restart": False},  # a measurement, not a daemon: a failed stage ends it
    }
    path = run_dir / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def read_scores(run_dir: Path) -> list[dict]:
    """Every complete line of the score log (the alerter may be writing the next one)."""
    path = run_dir / "scores.jsonl"
    text = path.read_text() if path.exists() else ""
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines()]


def scrape(port: int) -> dict[tuple, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def throughput(args, gate: bool, tree: Path = REPO, model: str | None = None, media: bool | None = False) -> dict:
    """One unpaced pass over the test clips by `vad run` with the `streamer` package in `tree`."""
    clips = {clip.name: clip for clip in ped2.test_clips(args.data)}
    expected = sum(clip.frame_count for clip in clips.values())
    run_dir = Path(tempfile.mkdtemp(prefix="vad-bench-"))
    try:
        config = write_config(run_dir, args, {}, gate=gate, metrics=True, model=model, media=media)
        cfg = pipeline_config.load(config)
        ports = {ref.label: pipeline_config.metrics_port(cfg, ref) for ref in pipeline_config.stage_refs(cfg)}
        command = [sys.executable, "-m", "streamer.cli", "--log-level", "warning", "run", "--config", str(config)]
        process = subprocess.Popen(command, cwd=tree, env=env_for(tree))
        try:
            first = wait_for_scores(run_dir, 1, process)
            cpu_first = {label: cpu_seconds(port) for label, port in ports.items()}
            last = wait_for_scores(run_dir, expected, process)
            cpu_last = {label: cpu_seconds(port) for label, port in ports.items()}
            if media:  # the alerter ends the run once its media are written
                process.wait(timeout=THROUGHPUT_TIMEOUT)
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            code = process.wait()
        finished = time.time()
        if media and code != 0:
            raise SystemExit(f"throughput run failed (status {code})")
        scores = read_scores(run_dir)
        snapshots = len(list(run_dir.glob("snapshots/*/*.jpg")))
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
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
        "cpu_ms": {label: (cpu_last[label] - cpu_first[label]) / (last - first) * 1000 for label in ports},
        "snapshots": snapshots,
        "tail": finished - max(s["t_alert"] for s in scores),
    }


def wait_for_scores(run_dir: Path, count: int, process: subprocess.Popen) -> int:
    """How many frames are scored once at least `count` are; SystemExit if the pipeline ends or stalls first."""
    deadline = time.monotonic() + THROUGHPUT_TIMEOUT
    while (scored := scored_count(run_dir)) < count:
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"throughput run ended or stalled after {scored} of {count} frames")
        time.sleep(0.25)
    return scored


def scored_count(run_dir: Path) -> int:
    """Frames in the score log so far (complete lines: the alerter may be writing the next one)."""
    path = run_dir / "scores.jsonl"
    return path.read_bytes().count(b"\n") if path.exists() else 0


def cpu_seconds(port: int) -> float:
    return scrape(port)[("process_cpu_seconds_total", ())]


def throughput_rounds(args, gate: bool, arms: dict, media: bool = False) -> dict:
    """Median throughput per arm over `args.rounds` rounds, the arms taking turns within each round."""
    results = {name: [] for name in arms}
    for round_number in range(args.rounds):
        for name, (tree, model) in arms.items():
            result = throughput(args, gate, tree, model, media if name == "current" else None)
            results[name].append(result)
            print(
                f"gate {'on' if gate else 'off'}, round {round_number + 1}, {name}: {result['fps']:.1f} frames/s",
                file=sys.stderr,
                flush=True,
            )
    return {name: median_result(rounds) for name, rounds in results.items()}


def median_result(rounds: list[dict]) -> dict:
    """The round with the median frames/s (the lower middle one for an even count), with every round's figure."""
    ordered = sorted(rounds, key=lambda r: r["fps"])
    return {**ordered[(len(ordered) - 1) // 2], "all_fps": [r["fps"] for r in rounds]}


def throughput_row(arm: str, gate: bool, result: dict, media_compared: bool, media: bool = False) -> tuple:
    name = "cascade gate on" if gate else "gate off (every patch to the network)"
    name += f", event media {'on' if media else 'off'}" if media_compared else ""
    wrote = f"; {result['snapshots']} snapshots, done {result['tail']:.1f} s after the last alert" if media else ""
    cpu = ", ".join(f"{label.split('[')[0]} {ms:.2f}" for label, ms in result["cpu_ms"].items())
    rounds = f"; rounds {', '.join(f'{fps:.1f}' for fps in result['all_fps'])}" if len(result["all_fps"]) > 1 else ""
    return (
        f"end-to-end, sources unpaced, {name}" + (f", {arm}" if arm else ""),
        f"{result['fps']:.1f} frames/s ({result['frames']} frames in {result['seconds']:.1f} s; "
        f"{result['patches_per_frame']:.0f} patches/frame to the network; EER {result['eer']:.2%}; "
        f"CPU ms/frame: {cpu}{rounds}{wrote})",
        ">= 100 frames/s" if gate else "",
    )


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
    parser.add_argument("--baseline", help="baseline model .onnx, measured in turns with --model (throughput)")
    parser.add_argument(
        "--baseline-code",
        default=BASELINE_CODE,
        help="git revision whose streamer/ runs the baseline (default %(default)s, before the throughput work)",
    )
    parser.add_argument("--rounds", type=int, help="throughput runs per arm (default 5 with --baseline, else 1)")
    parser.add_argument("--media", action="store_true", help="also run with event media on (snapshots, clips)")
    args = parser.parse_args()
    args.data = ped2.resolve_root(args.data).resolve()
    args.model = str(Path(args.model).resolve())
    args.rounds = args.rounds or (5 if args.baseline else 1)
    model = PatchModel(args.model, device=args.device, threads=1)
    load_before = os.getloadavg()

    rows, speedups = [], []
    if "throughput" not in args.skip:
        gates = [True] + ([False] if "no-gate" not in args.skip and model.card.gate else [])
        with code_at(args.baseline_code) if args.baseline else nullcontext() as old_tree:
            arms = {"baseline": (old_tree, str(Path(args.baseline).resolve()))} if args.baseline else {}
            arms["current"] = (REPO, args.model)
            for gate in gates:
                results = throughput_rounds(args, gate, arms)
                for name, result in results.items():
                    rows.append(throughput_row(name if args.baseline else "", gate, result, args.media))
                if args.baseline:
                    speedups.append((gate, results["baseline"], results["current"]))
        if args.media:  # this checkout only: the baseline's code has no event media
            result = throughput_rounds(args, True, {"current": arms["current"]}, media=True)["current"]
            rows.append(throughput_row("current" if args.baseline else "", True, result, args.media, media=True))
    if "latency" not in args.skip:
        for media in [False] + [True] * args.media:
            latency_rows(rows, latency(args, media), args, media)

    print(
        f"\nmodel {Path(args.model).name} ({model.card.method}, {model.provider}), {args.scorers} scorer(s) x "
        f"{args.threads} thread(s); {os.cpu_count()} CPUs, load average {load_before[0]:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after"
    )
    if args.baseline:
        print(
            f"baseline: {Path(args.baseline).name} run by streamer/ at {args.baseline_code}; current: "
            f"{Path(args.model).name} run by this checkout; {args.rounds} rounds each, taking turns, median shown"
        )
    print()
    width = max(len(r[0]) for r in rows)
    print(f"| {'measure':<{width}} | result | target |")
    print(f"|{'-' * (width + 2)}|--------|--------|")
    for measure, value, target in rows:
        print(f"| {measure:<{width}} | {value} | {target} |")
    if speedups:
        print()
    for gate, before, after in speedups:
        label = "speed-up vs baseline" if gate else "speed-up vs baseline, gate off"
        ratios = [a / b for a, b in zip(after["all_fps"], before["all_fps"])]
        print(
            f"{label}: {statistics.median(ratios):.2f}x (end-to-end frames/s; the median of the {args.rounds} "
            f"rounds' ratios {', '.join(f'{r:.2f}' for r in ratios)}, each round's two runs back to back; "
            f"ratio of the medians {after['fps'] / before['fps']:.2f}; EER {after['eer']:.2%} against "
            f"{before['eer']:.2%})"
        )


if __name__ == "__main__":
    main()
