"""Soak and fault test: N cameras from the Ped2 test clips at 10 fps, stage processes killed at random.

  python benchmarks/soak.py --cameras 4 --duration 600 --kill-every 60 --model MODEL.onnx

Camera k plays Ped2 test clip k on a loop at 10 fps (each pass a new recording),
as a live camera (the oldest frame dropped when the pipeline falls behind) or,
with --lossless, as a recording read only as fast as the pipeline takes it.
`vad run` supervises the stages; every --kill-every seconds (randomised by
±50 %, --seed) one stage process gets SIGKILL. The kills take the stages in
turn (capture, patch stage, scorer, alerter, in an order shuffled anew each
round), each time a random process of that stage, so every stage is killed
about as often. At the end the daemon is stopped with SIGTERM and the script
prints:

- frames per camera: numbered by capture, scored, counted lost (the alerter logs
  each gap), unaccounted (numbered, neither scored nor counted: must be 0), and
  dropped before numbering (live sources falling behind; from the capture's
  metrics, sampled every 5 s, so a few around a capture kill can be missed);
- events against the offline run of the same clip (streamer.detector plus the
  same event state machine): for every pass of a clip that ran complete and
  undisturbed (every frame scored, no kill while it played), the pipeline's events
  must be the offline events, start and end frame; passes a kill disturbed are
  counted apart; every event in the log must have ended;
- per stage: kills, restarts counted by the supervisor, seconds from the kill until
  the new process answers on its metrics port and until that stage's frames are
  scored again;
- per stage: resident memory of its longest-lived process after --warm-up seconds
  and at its last sample, and the growth.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from streamer import ped2
from streamer.detector import Detector
from streamer.model import BUNDLED_MODEL, PatchModel
from streamer.pipeline import config as pipeline_config
from streamer.pipeline.config import StageRef
from streamer.pipeline.events import EventTracker, read_events
from streamer.sources import FolderSource

SAMPLE_SECONDS = 5.0
LOST_LINE = re.compile(r"(\S+): (\d+) frame\(s\) of seq (\d+)-(\d+) never arrived: counted as lost")


def write_config(run_dir: Path, args, clips: list) -> Path:
    cameras = [
        {
            "id": f"cam{k + 1}",
            "kind": "ped2",
            "source": clip.name,
            "data": str(args.data),
            "pace": True,
            "fps": 10.0,
            "loop": True,
            "live": not args.lossless,
        }
        for k, clip in enumerate(clips)
    ]
    config = {
        "model": str(args.model),
        "run_dir": str(run_dir),
        "cameras": cameras,
        "scorer": {"processes": args.scorers, "threads": 1},
        "alerter": {"events_endpoint": f"ipc://{run_dir}/events", "score_log": str(run_dir / "scores.jsonl")},
        "metrics": {"base_port": pipeline_config.free_port_base(2 * len(clips) + args.scorers + 2)},
    }
    path = run_dir / "soak.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def offline_events(model: PatchModel, clip, cfg) -> list[tuple[int, int]]:
    """(start frame, end frame) of each event the offline detector's scores make on one pass of the clip."""
    settings = pipeline_config.scoring_settings(cfg, model.card)
    tracker = EventTracker("offline", settings.threshold, cfg.alerter.end_after, cfg.alerter.update_every, {})
    events, start, position = [], None, None
    for result in Detector(model, settings).run(FolderSource(clip.path)):
        position = {"seq": result.index, "frame_index": result.index, "capture_time": 0.0}
        event = tracker.frame(position, result.smoothed, lambda: [])
        start, events = _collect(event, start, events)
    start, events = _collect(tracker.close(position, "new_recording"), start, events)
    return events


def _collect(event: dict | None, start: int | None, events: list) -> tuple[int | None, list]:
    if event is None or event["type"] == "update":
        return start, events
    if event["type"] == "start":
        return event["frame_index"], events
    return None, events + [(start, event["frame_index"])]


def stage_processes(supervisor_pid: int) -> dict[str, int]:
    """label -> pid of the live `vad stage` children of the supervisor."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            args = Path(f"/proc/{entry}/cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) != supervisor_pid or fields[0] == "Z" or "stage" not in args:
            continue
        name = args[args.index("stage") + 1]
        if "--camera" in args:
            found[f"{name}[{args[args.index('--camera') + 1]}]"] = int(entry)
        elif name == "scorer":
            found[f"scorer[{args[args.index('--index') + 1]}]"] = int(entry)
        else:
            found[name] = int(entry)
    return found


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def scrape(port: int) -> dict[tuple, float] | None:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return None
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


class Soak:
    def __init__(self, args, cfg: pipeline_config.PipelineConfig, process: subprocess.Popen):
        self.args = args
        self.cfg = cfg
        self.process = process
        self.ports = {ref.label: pipeline_config.metrics_port(cfg, ref) for ref in pipeline_config.stage_refs(cfg)}
        self.rng = random.Random(args.seed)
        self.turns: list[str] = []  # stages still to be killed this round
        self.kills: list[dict] = []  # label, time, back_up (seconds)
        self.rss: dict[str, dict[int, list[tuple[float, float]]]] = defaultdict(dict)  # label -> pid -> samples
        self.started: dict[int, float] = {}  # pid -> first seen
        self.backpressure: dict[str, float] = defaultdict(float)
        self._last_drop: dict[str, float] = {}

    def sample(self, now: float) -> None:
        for label, pid in stage_processes(self.process.pid).items():
            self.started.setdefault(pid, now)
            rss = rss_mib(pid)
            if rss is not None:
                self.rss[label].setdefault(pid, []).append((now, rss))
        rss = rss_mib(self.process.pid)
        self.started.setdefault(self.process.pid, now)
        if rss is not None:
            self.rss["supervisor"].setdefault(self.process.pid, []).append((now, rss))
        for camera in self.cfg.cameras:  # backpressure drops, summed over capture restarts
            metrics = scrape(self.ports[f"capture[{camera.id}]"]) or {}
            value = metrics.get(("vad_frames_dropped_total", (("camera", camera.id), ("reason", "backpressure"))))
            if value is not None:
                last = self._last_drop.get(camera.id, 0.0)
                self.backpressure[camera.id] += value - last if value >= last else value
                self._last_drop[camera.id] = value

    def kill_one(self) -> None:
        if not self.turns:
            self.turns = ["capture", "patcher", "scorer", "alerter"]
            self.rng.shuffle(self.turns)
        stage = self.turns.pop()
        running = sorted(stage_processes(self.process.pid).items())
        candidates = [(label, pid) for label, pid in running if label.startswith(stage)]
        if not candidates:  # being restarted after a crash of its own: its turn passes
            return
        label, pid = self.rng.choice(candidates)
        os.kill(pid, signal.SIGKILL)
        kill = {"label": label, "pid": pid, "time": time.time(), "back_up": None}
        self.kills.append(kill)
        print(f"  {time.strftime('%H:%M:%S')} SIGKILL {label} (pid {pid})", flush=True)

    def check_back(self) -> None:
        """For the latest kill: the new process is there and answers on its metrics port."""
        kill = self.kills[-1] if self.kills else None
        if kill is None or kill["back_up"] is not None:
            return
        pid = stage_processes(self.process.pid).get(kill["label"])
        if pid and pid != kill["pid"] and scrape(self.ports[kill["label"]]) is not None:
            kill["back_up"] = time.time() - kill["time"]

    def run(self) -> None:
        start = time.monotonic()
        next_sample, next_kill = start, start + self.args.warm_up + self._interval()
        end = start + self.args.warm_up + self.args.duration
        while time.monotonic() < end:
            now = time.monotonic()
            if now >= next_sample:
                self.sample(now)
                next_sample = now + SAMPLE_SECONDS
            self.check_back()
            if self.args.kill_every and now >= next_kill and (not self.kills or self.kills[-1]["back_up"]):
                self.kill_one()
                next_kill = now + self._interval()
            if self.process.poll() is not None:
                raise SystemExit(f"vad run exited with status {self.process.returncode}")
            time.sleep(0.1)
        self.supervisor_metrics = scrape(pipeline_config.supervisor_metrics_port(self.cfg)) or {}
        self.sample(time.monotonic())

    def _interval(self) -> float:
        return self.args.kill_every * self.rng.uniform(0.5, 1.5) if self.args.kill_every else float("inf")


def passes(records: list[dict]) -> list[list[dict]]:
    """One camera's score records split into passes of its clip (a pass starts again at a lower frame index)."""
    runs: list[list[dict]] = []
    for record in sorted(records, key=lambda r: r["seq"]):
        if not runs or record["index"] <= runs[-1][-1]["index"]:
            runs.append([])
        runs[-1].append(record)
    return runs


def compare_events(camera: str, records: list[dict], events: list[dict], expected: list, frames: int, kills) -> dict:
    """Pipeline events against the offline ones, per pass; clean passes must match exactly."""
    starts = [e for e in events if e["camera"] == camera and e["type"] == "start"]
    ends = {e["event_id"]: e for e in events if e["camera"] == camera and e["type"] == "end"}
    result = defaultdict(int)
    for run in passes(records):
        first, last = run[0], run[-1]
        in_pass = [e for e in starts if first["seq"] <= e["seq"] <= last["seq"]]
        got = [(e["frame_index"], ends[e["event_id"]]["frame_index"]) for e in in_pass if e["event_id"] in ends]
        disturbed = any(first["t_capture"] - 1 <= k["time"] <= last["t_alert"] + 1 for k in kills)
        complete = [r["index"] for r in run] == list(range(1, frames + 1))
        if complete and not disturbed:
            result["clean passes"] += 1
            result["expected"] += len(expected)
            result["matched"] += sum(min(got.count(e), expected.count(e)) for e in set(expected))
            result["extra"] += sum(max(0, got.count(e) - expected.count(e)) for e in set(got))
        else:
            result["disturbed passes"] += 1
            result["disturbed expected"] += len(expected)
            result["disturbed got"] += len(got)
    result["missed"] = result["expected"] - result["matched"]
    result["left open"] = sum(1 for e in starts if e["event_id"] not in ends)
    result["ended by restart"] = sum(1 for e in ends.values() if e["reason"] == "restart")
    return result


def report(soak: Soak, run_dir: Path, clips: dict, expected: dict, load: tuple) -> None:
    args, cfg = soak.args, soak.cfg
    records = [json.loads(line) for line in (run_dir / "scores.jsonl").read_text().splitlines()]
    events = read_events(cfg.alerter.event_log)
    log = (run_dir / "daemon.log").read_text()
    lost = defaultdict(int)
    for camera, count, _, _ in LOST_LINE.findall(log):
        lost[camera] += int(count)
    by_camera = defaultdict(list)
    for record in records:
        by_camera[record["camera"]].append(record)
    kind = "lossless recordings" if args.lossless else "live"
    print(
        f"\nsoak: {len(cfg.cameras)} cameras ({', '.join(c.source for c in cfg.cameras)} looped at 10 fps, {kind}), "
        f"{args.duration:.0f} s after {args.warm_up:.0f} s warm-up, a stage killed every ~{args.kill_every:.0f} s "
        f"(seed {args.seed}); model {Path(args.model).name}; {os.cpu_count()} CPUs, load average "
        f"{load[0]:.1f} before, {os.getloadavg()[0]:.1f} after\n"
    )
    print(
        "| camera | frames numbered | scored | lost at kills (counted) | unaccounted | dropped before numbering "
        "| clean passes | events expected / matched / missed / extra | passes a kill disturbed or the end cut: "
        "events offline / pipeline "
        "| left open | ended by restart |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    totals = defaultdict(int)
    for camera in cfg.cameras:
        rows = by_camera[camera.id]
        numbered = max(r["seq"] for r in rows) + 1 if rows else 0
        unaccounted = numbered - len({r["seq"] for r in rows}) - lost[camera.id]
        clip = clips[camera.id]
        kills = [
            k
            for k in soak.kills
            if k["label"] in (f"capture[{camera.id}]", f"patcher[{camera.id}]")
            or k["label"].startswith("scorer")
            or k["label"] == "alerter"
        ]
        e = compare_events(camera.id, rows, events, expected[clip.name], clip.frame_count, kills)
        for key in ("expected", "matched", "missed", "extra", "left open"):
            totals[key] += e[key]
        totals["unaccounted"] += unaccounted
        print(
            f"| {camera.id} ({clip.name}) | {numbered} | {len(rows)} | {lost[camera.id]} | {unaccounted} "
            f"| {soak.backpressure[camera.id]:.0f} "
            f"| {e['clean passes']} of {e['clean passes'] + e['disturbed passes']} "
            f"| {e['expected']} / {e['matched']} / {e['missed']} / {e['extra']} "
            f"| {e['disturbed expected']} / {e['disturbed got']} | {e['left open']} | {e['ended by restart']} |"
        )
    print(
        f"\nevents lost (clean passes): {totals['missed']}; extra: {totals['extra']}; "
        f"left open: {totals['left open']}; frames unaccounted: {totals['unaccounted']}"
    )

    print(
        "\n| stage | kills | restarts (supervisor) | back up after kill, max / median s "
        "| scored again after kill, max s | RSS after warm-up -> last sample (MiB) | growth |"
    )
    print("|---|---|---|---|---|---|---|")
    restarts_by_label = {
        StageRef.from_metric_labels(dict(labels)).label: value
        for (name, labels), value in soak.supervisor_metrics.items()
        if name == "vad_stage_restarts_total"
    }
    for label in [*soak.ports, "supervisor"]:
        kills = [k for k in soak.kills if k["label"] == label]
        restarts = restarts_by_label.get(label, 0.0)
        back = [k["back_up"] for k in kills if k["back_up"] is not None]
        flowing = [scored_again(k, records, cfg) for k in kills]
        flowing = [f for f in flowing if f is not None]
        back_text = f"{max(back):.1f} / {statistics.median(back):.1f}" if back else "-"
        if len(back) < len(kills):
            back_text += f" ({len(kills) - len(back)} not back)"
        rss_text, growth = rss_growth(soak, label)
        flowing_text = f"{max(flowing):.1f}" if flowing else "-"
        print(f"| {label} | {len(kills)} | {restarts:.0f} | {back_text} | {flowing_text} | {rss_text} | {growth} |")


def scored_again(kill: dict, records: list[dict], cfg) -> float | None:
    """Seconds from the kill to the first frame of an affected camera captured after it and scored."""
    label = kill["label"]
    cameras = {c.id for c in cfg.cameras if label in (f"capture[{c.id}]", f"patcher[{c.id}]")} or {
        c.id for c in cfg.cameras
    }
    after = [r["t_alert"] for r in records if r["camera"] in cameras and r["t_capture"] > kill["time"]]
    return min(after) - kill["time"] if after else None


def rss_growth(soak: Soak, label: str) -> tuple[str, str]:
    """RSS of the stage's longest-lived process after the warm-up, and at its last sample."""
    best = None
    for pid, samples in soak.rss[label].items():
        settled = [(t, rss) for t, rss in samples if t - soak.started[pid] >= soak.args.warm_up]
        if len(settled) >= 2 and (best is None or settled[-1][0] - settled[0][0] > best[-1][0] - best[0][0]):
            best = settled
    if best is None:
        return "no process lived past its warm-up", "-"
    (t0, first), (t1, last) = best[0], best[-1]
    return f"{first:.0f} -> {last:.0f} over {t1 - t0:.0f} s", f"{(last - first) / first:+.1%}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cameras", type=int, default=4)
    parser.add_argument("--duration", type=float, default=600.0, help="seconds after the warm-up")
    parser.add_argument("--kill-every", type=float, default=60.0, help="mean seconds between kills (0: none)")
    parser.add_argument("--warm-up", type=float, default=60.0, help="seconds before kills and RSS baselines")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scorers", type=int, default=1)
    parser.add_argument("--lossless", action="store_true", help="recordings, not live cameras: never drop a frame")
    parser.add_argument("--data", help="UCSDped2 folder (default: $VAD_PED2, then ../shared/datasets/UCSDped2)")
    parser.add_argument("--model", default=str(BUNDLED_MODEL), help="model .onnx (default: the bundled model)")
    parser.add_argument("--keep", action="store_true", help="keep the run folder (logs, event log, scores)")
    args = parser.parse_args()
    args.data = ped2.resolve_root(args.data)
    test_clips = ped2.test_clips(args.data)
    clips = [test_clips[k % len(test_clips)] for k in range(args.cameras)]
    load = os.getloadavg()
    model = PatchModel(args.model, device="cpu", threads=1)

    run_dir = Path(tempfile.mkdtemp(prefix="vad-soak-", dir="/tmp"))
    try:
        config = write_config(run_dir, args, clips)
        cfg = pipeline_config.load(config)
        print(f"offline run of {', '.join(sorted({c.name for c in clips}))} ...", flush=True)
        expected = {clip.name: offline_events(model, clip, cfg) for clip in clips}
        print(f"vad run with {len(cfg.cameras)} cameras; run folder {run_dir}", flush=True)
        command = [sys.executable, "-m", "streamer.cli", "--log-level", "info", "run", "--config", str(config)]
        with open(run_dir / "daemon.log", "w") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        soak = Soak(args, cfg, process)
        try:
            soak.run()
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(120)
        report(soak, run_dir, {c.id: clip for c, clip in zip(cfg.cameras, clips)}, expected, load)
    finally:
        if args.keep:
            print(f"\nkept {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
