"""Hostile-peer soak: the daemon on live cameras while another process attacks every socket it can reach.

  python benchmarks/hostile_soak.py --cameras 2 --duration 300 --warm-up 60

Camera k plays Ped2 test clip k on a loop at 10 fps as a live camera under `vad
run` (the soak's config, benchmarks/soak.py). After --warm-up seconds a second
process starts sending, at about --rate messages a second, a random mix (--seed) of:

  to the alerter's scores socket (a PULL anyone on the host can connect to):
    malformed     every kind tests/test_hostile_peers.py checks (garbage, NaN, huge shapes, 100 000 parts, ...)
    oversized     a part over messaging.max_message_bytes (libzmq drops the connection; ours reconnects)
    foreign       well-formed scores for a real camera under a stream id of its own, at seq 0, 10**12 or
                  anywhere, scoring high or low (the model's sha256 is public, in its card)
    replayed      the last foreign message again
    unknown       scores for a camera that is not configured, or from another model
  to the events socket:
    big prefix    a subscription with a 2 MB prefix
    prefix flood  hundreds of distinct 200-byte prefixes
    (and a few subscribers that subscribe and never read, all along)
  to every other endpoint a stage binds (frames, patches), and the scores socket:
    garbage       a broken greeting (0xFF, then random bytes)
    wrong peer    a ZeroMQ peer of the wrong socket type

The patch stages' and scorers' own inputs connect out and are not reachable by a
peer. A peer that connects to a PUSH socket as a PULL is dealt frames (steals
them), and so is one that opens with anything but 0xFF: libzmq takes it for a
ZeroMQ 1.0 peer, which declares no socket type. Only CURVE or the ipc sockets'
file permissions prevent that; it is not tried here.

At the end the script prints, and main() exits non-zero unless all hold:
- every event in the log reached a live subscriber (connected from the start);
- every event of a clean pass of a clip (every frame scored) is the offline run's,
  start and end frame: none missed, none extra (an attacker's event would be extra);
- no stage process restarted, and none's RSS grew past 2x its value after the warm-up;
- what each stage rejected, by reason, and what the attacker sent, by kind.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket as pysocket
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))  # soak.py beside this file, however this one is loaded
import soak  # noqa: E402

from streamer import ped2  # noqa: E402
from streamer.model import BUNDLED_MODEL, ModelCard, PatchModel, card_path_for  # noqa: E402
from streamer.patches import PatchExtractor  # noqa: E402
from streamer.pipeline import config as pipeline_config  # noqa: E402
from streamer.pipeline import messages  # noqa: E402
from streamer.pipeline.events import read_events  # noqa: E402

SAMPLE_SECONDS = 5.0
MAX_RSS_GROWTH = 2.0
KINDS = {  # relative frequency
    "malformed": 30,
    "foreign": 30,
    "replayed": 10,
    "unknown": 10,
    "garbage": 5,
    "wrong peer": 5,
    "prefix flood": 2,
    "big prefix": 1,
    "oversized": 1,
}


def hostile_variants(good: list) -> dict[str, list]:
    """Messages every stage must count as malformed and drop, made from a good one."""
    header = json.loads(bytes(good[0]))
    buffers = [bytes(memoryview(b)) for b in good[1:]]

    def with_header(text: str | None = None, **changes) -> list:
        return [(text or json.dumps({**header, **changes})).encode(), *buffers]

    first = header["arrays"][0]
    variants = {
        "garbage": [b"\x00\xff\xfe not a header"],
        "nesting bomb": [b"[" * 4000],
        "NaN": with_header(t_capture=float("nan")),
        "infinite number": with_header(json.dumps({**header, "t_capture": 4321.5}).replace("4321.5", "1e999")),
        "unknown kind": with_header(kind="video"),
        "huge claimed shape": with_header(
            arrays=[{**first, "shape": [2**40] * len(first["shape"])}, *header["arrays"][1:]]
        ),
        "wrong dtype": with_header(arrays=[{**first, "dtype": "float64"}, *header["arrays"][1:]]),
        "too many parts": [good[0], *[b""] * 100_000],
    }
    if "frame_shape" in header:
        variants["absurd frame shape"] = with_header(frame_shape=[1_000_000, 1_000_000])
    if "moving" in header:
        variants["impossible moving count"] = with_header(moving=-5)
    return variants


def scores_message(card: ModelCard, camera: str, stream: str, seq: int, score: float, model: str | None = None):
    """A well-formed scores message, as a scorer would send it."""
    shape = tuple(card.patch.frame_size)
    positions = len(PatchExtractor(card.patch).boxes(shape))
    header = {
        "kind": "scores",
        "camera": camera,
        "stream": stream,
        "seq": seq,
        "t_capture": time.time(),
        "index": seq + 1,
        "clip": "",
        "reset": seq == 0,
        "frame_shape": list(shape),
        "score": score,
        "active": positions,
        "moving": positions,
        "t_scored": time.time(),
        "model": model or card.onnx_sha256,
    }
    return messages.encode(header, {"patch_scores": np.full(positions, score, np.float32)})


def _zmtp_frame(body: bytes, command: bool = False) -> bytes:
    flags = 0x04 if command else 0x00
    if len(body) > 255:
        return bytes([flags | 0x02]) + struct.pack(">Q", len(body)) + body
    return bytes([flags, len(body)]) + body


class RawPeer:
    """A ZeroMQ peer spoken by hand (ZMTP 3.0, NULL security), which keeps nothing of what it sends.

    libzmq's own SUB keeps every prefix it subscribes to (and recurses through them:
    a 2 MB one overflows its stack), so a flood of subscriptions needs this.
    """

    def __init__(self, endpoint: str, socket_type: bytes | None = b"SUB", timeout: float = 2.0):
        """Connect and greet as `socket_type`; None: connect only (for sending garbage)."""
        kind, address = endpoint.split("://", 1)
        if kind == "tcp":
            host, port = address.rsplit(":", 1)
            self.sock = pysocket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
        else:
            self.sock = pysocket.socket(pysocket.AF_UNIX)
            self.sock.settimeout(timeout)
            self.sock.connect(address)
        if socket_type is None:
            return
        greeting = b"\xff" + b"\x00" * 8 + b"\x7f\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" * 32
        ready = b"\x05READY\x0bSocket-Type" + struct.pack(">I", len(socket_type)) + socket_type
        self.sock.sendall(greeting + _zmtp_frame(ready, command=True))
        # Messages only after the other side's greeting and READY: sent during its handshake, they fail it.
        self._read(64)
        flags, size = self._read(2)
        self._read(struct.unpack(">Q", bytes([size]) + self._read(7))[0] if flags & 0x02 else size)

    def _read(self, count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = self.sock.recv(count - len(data))
            if not chunk:
                raise ConnectionError("the other side closed the connection during the handshake")
            data += chunk
        return data

    def send(self, body: bytes) -> bool:
        """False once the other side has cut the connection."""
        try:
            self.sock.sendall(_zmtp_frame(body))
            return True
        except OSError:
            return False

    def subscribe(self, prefix: bytes) -> bool:
        return self.send(b"\x01" + prefix)

    def cut(self, wait: float) -> bool:
        """Whether the other side closes the connection within `wait` seconds."""
        deadline = time.monotonic() + wait
        try:
            while (left := deadline - time.monotonic()) > 0:
                self.sock.settimeout(left)
                if not self.sock.recv(65536):
                    return True
        except TimeoutError:
            pass
        except OSError:
            return True
        return False

    def close(self) -> None:
        self.sock.close()


class Attacker:
    """One hostile peer: each step sends one thing of a random kind; counts what it sent."""

    def __init__(self, cfg: pipeline_config.PipelineConfig, seed: int):
        self.cfg = cfg
        self.card = ModelCard.load(card_path_for(cfg.model))
        self.rng = random.Random(seed)
        self.cameras = [c.id for c in cfg.cameras]
        self.sent: Counter[str] = Counter()
        self.cut: Counter[str] = Counter()  # connections the daemon closed on us, by kind
        self.ctx = zmq.Context()
        self.scores = self.ctx.socket(zmq.PUSH)
        self.scores.setsockopt(zmq.LINGER, 0)
        self.scores.setsockopt(zmq.SNDTIMEO, 100)
        self.scores.connect(cfg.alerter.scores_endpoint)
        self.silent = []  # subscribers that never read
        for _ in range(3):
            sub = self.ctx.socket(zmq.SUB)
            sub.setsockopt(zmq.LINGER, 0)
            sub.connect(cfg.alerter.events_endpoint)
            sub.subscribe(b"event")
            self.silent.append(sub)
        good = scores_message(self.card, self.cameras[0], "hostile", 0, 0.0)
        self.malformed = list(hostile_variants(good).values())
        self.last_foreign = good
        self.huge = b"\0" * (cfg.messaging.max_message_bytes + 1)
        self.bound = [c.frames_endpoint for c in cfg.cameras] + [c.patches_endpoint for c in cfg.cameras]

    def step(self) -> None:
        kind = self.rng.choices(list(KINDS), weights=list(KINDS.values()))[0]
        getattr(self, "_" + kind.replace(" ", "_"))()
        self.sent[kind] += 1

    def _push(self, parts: list) -> None:
        try:
            self.scores.send_multipart(parts)
        except zmq.Again:  # the alerter's queue for us is full: it reads at its pace
            pass

    def _malformed(self) -> None:
        self._push(self.rng.choice(self.malformed))

    def _foreign(self) -> None:
        seq = self.rng.choice([0, 10**12, self.rng.randrange(10**6)])
        score = self.rng.choice([0.0, self.card.scoring.threshold * 5])
        stream = f"{self.rng.getrandbits(48):012x}"
        self.last_foreign = scores_message(self.card, self.rng.choice(self.cameras), stream, seq, score)
        self._push(self.last_foreign)

    def _replayed(self) -> None:
        self._push(self.last_foreign)

    def _unknown(self) -> None:
        if self.rng.random() < 0.5:
            self._push(scores_message(self.card, "intruder", "hostile", 0, 9.0))
        else:
            self._push(scores_message(self.card, self.rng.choice(self.cameras), "hostile", 0, 9.0, model="0" * 64))

    def _oversized(self) -> None:
        self._push([self.huge])

    def _raw(self, kind: str, endpoint: str, action) -> None:
        try:
            peer = RawPeer(endpoint, socket_type={"garbage": None, "wrong peer": b"PUSH"}.get(kind, b"SUB"))
        except OSError:  # refused at the handshake (or the stage is restarting)
            self.cut[kind] += 1
            return
        try:
            action(peer)
            if peer.cut(0.5):
                self.cut[kind] += 1
        finally:
            peer.close()

    def _garbage(self) -> None:
        endpoint = self.rng.choice(self.bound + [self.cfg.alerter.scores_endpoint])
        self._raw("garbage", endpoint, lambda peer: peer.sock.sendall(b"\xff" + self.rng.randbytes(1023)))

    def _wrong_peer(self) -> None:
        self._raw("wrong peer", self.rng.choice(self.bound), lambda peer: peer.send(b"hello"))

    def _big_prefix(self) -> None:
        self._raw("big prefix", self.cfg.alerter.events_endpoint, lambda peer: peer.subscribe(b"A" * (2 << 20)))

    def _prefix_flood(self) -> None:
        def flood(peer: RawPeer) -> None:
            for _ in range(500):
                if not peer.subscribe(self.rng.randbytes(200)):
                    return

        self._raw("prefix flood", self.cfg.alerter.events_endpoint, flood)

    def close(self) -> None:
        for sub in self.silent:
            sub.close()
        self.scores.close()
        self.ctx.term()


def attack(config: str, seed: int, rate: float) -> None:
    """The attacking process: until SIGTERM, then prints what it sent as JSON."""
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    attacker = Attacker(pipeline_config.load(config), seed)
    started = time.monotonic()
    while not stop:
        attacker.step()
        time.sleep(max(0.0, started + sum(attacker.sent.values()) / rate - time.monotonic()))
    attacker.close()
    print(json.dumps({"sent": attacker.sent, "cut": attacker.cut}), flush=True)


def stop_attacker(attacker: subprocess.Popen) -> dict:
    """What the attacker sent; it is killed if it does not stop in time."""
    attacker.send_signal(signal.SIGTERM)
    try:
        out, _ = attacker.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        attacker.kill()
        out, _ = attacker.communicate()
    return json.loads(out) if out.strip() else {}


class Run:
    """The daemon, a live subscriber from the start, RSS samples, and the attacker after the warm-up."""

    def __init__(self, args, cfg: pipeline_config.PipelineConfig, config: Path, run_dir: Path):
        self.args, self.cfg, self.config, self.run_dir = args, cfg, config, run_dir
        self.ports = {ref.label: pipeline_config.metrics_port(cfg, ref) for ref in pipeline_config.stage_refs(cfg)}
        self.received: list[dict] = []
        self.baseline: dict[str, tuple[int, float]] = {}  # label -> (pid, RSS MiB) at the end of the warm-up
        self.peak: dict[str, float] = {}
        self.replaced: set[str] = set()  # stages whose process changed during the attack
        self.attack_report: dict = {}

    def run(self) -> None:
        command = [sys.executable, "-m", "streamer.cli", "--log-level", "info", "run", "--config", str(self.config)]
        with zmq.Context() as ctx, ctx.socket(zmq.SUB) as live:
            live.setsockopt(zmq.LINGER, 0)
            live.connect(self.cfg.alerter.events_endpoint)
            live.subscribe(b"event")
            with open(self.run_dir / "daemon.log", "w") as log:
                daemon = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
            attacker = None
            try:
                start = time.monotonic()
                self._until(daemon, live, start + self.args.warm_up)
                self.baseline = {
                    label: (pid, soak.rss_mib(pid)) for label, pid in soak.stage_processes(daemon.pid).items()
                }
                attacker = subprocess.Popen(
                    [sys.executable, __file__, "--attack", str(self.config), "--seed", str(self.args.seed)]
                    + ["--rate", str(self.args.rate)],
                    stdout=subprocess.PIPE,
                    text=True,
                )
                self._until(daemon, live, start + self.args.warm_up + self.args.duration)
            finally:
                if attacker is not None:
                    self.attack_report = stop_attacker(attacker)
                self.metrics = {label: soak.scrape(port) or {} for label, port in self.ports.items()}
                daemon.send_signal(signal.SIGTERM)
                daemon.wait(120)
            self._receive(live, quiet=1.0)

    def _until(self, daemon: subprocess.Popen, live: zmq.Socket, deadline: float) -> None:
        next_sample = time.monotonic()
        while time.monotonic() < deadline:
            if daemon.poll() is not None:
                raise SystemExit(f"vad run exited with status {daemon.returncode}")
            self._receive(live, quiet=0.1)
            if time.monotonic() >= next_sample and self.baseline:
                self._sample(daemon.pid)
                next_sample = time.monotonic() + SAMPLE_SECONDS

    def _receive(self, live: zmq.Socket, quiet: float) -> None:
        while live.poll(int(quiet * 1000)):
            _topic, body = live.recv_multipart()
            self.received.append(json.loads(body))

    def _sample(self, supervisor: int) -> None:
        for label, pid in soak.stage_processes(supervisor).items():
            if pid != self.baseline.get(label, (pid,))[0]:
                self.replaced.add(label)
            rss = soak.rss_mib(pid)
            if rss is not None:
                self.peak[label] = max(self.peak.get(label, 0.0), rss)


def evaluate(run: Run, clips: dict, expected: dict) -> dict:
    """The figures main() prints and checks."""
    cfg = run.cfg
    logged = read_events(cfg.alerter.event_log)
    key = lambda e: (e["event_id"], e["type"], e["seq"])  # noqa: E731
    heard = {key(e) for e in run.received}
    records = [json.loads(line) for line in (run.run_dir / "scores.jsonl").read_text().splitlines()]
    cameras = {}
    for camera in cfg.cameras:
        rows = [r for r in records if r["camera"] == camera.id]
        clip = clips[camera.id]
        cameras[camera.id] = soak.compare_events(camera.id, rows, logged, expected[clip.name], clip.frame_count, [])
    rejected = Counter()
    for label, metrics in run.metrics.items():
        for (name, labels), value in metrics.items():
            if name == "vad_messages_rejected_total" and value:
                rejected[(dict(labels)["stage"], dict(labels)["reason"])] += value
    growth = {
        label: (rss, run.peak.get(label, rss), run.peak.get(label, rss) / rss)
        for label, (_pid, rss) in run.baseline.items()
        if rss
    }
    return {
        "events logged": len(logged),
        "missing at the live subscriber": sum(key(e) not in heard for e in logged),
        "events from unknown cameras": sum(e["camera"] not in clips for e in logged),
        "cameras": cameras,
        "missed": sum(c["missed"] for c in cameras.values()),
        "extra": sum(c["extra"] for c in cameras.values()),
        "left open": sum(c["left open"] for c in cameras.values()),
        "rejected": rejected,
        "rss": growth,
        "restarted": sorted(run.replaced),
        "attack": run.attack_report,
    }


def passed(result: dict) -> bool:
    return (
        result["missing at the live subscriber"] == 0
        and result["events from unknown cameras"] == 0
        and result["missed"] == result["extra"] == result["left open"] == 0
        and not result["restarted"]
        and all(ratio <= MAX_RSS_GROWTH for _, _, ratio in result["rss"].values())
    )


def report(args, result: dict, load: tuple) -> None:
    sent = result["attack"].get("sent", {})
    print(
        f"\nhostile soak: {args.cameras} live cameras at 10 fps, {args.duration:.0f} s of attack after "
        f"{args.warm_up:.0f} s warm-up, {sum(sent.values())} hostile sends (~{args.rate:g}/s, seed {args.seed}); "
        f"{os.cpu_count()} CPUs, load average {load[0]:.1f} before, {os.getloadavg()[0]:.1f} after\n"
    )
    print(
        f"events logged: {result['events logged']}; missing at the live subscriber: "
        f"{result['missing at the live subscriber']}; from unknown cameras: {result['events from unknown cameras']}"
    )
    print(
        f"clean passes against the offline run: missed {result['missed']}, extra {result['extra']}, "
        f"left open {result['left open']}"
    )
    print("\n| camera | clean passes | events expected / matched / missed / extra | disturbed passes |")
    print("|---|---|---|---|")
    for camera, c in result["cameras"].items():
        print(
            f"| {camera} | {c['clean passes']} | {c['expected']} / {c['matched']} / {c['missed']} / {c['extra']} "
            f"| {c['disturbed passes']} |"
        )
    print("\n| stage | RSS after warm-up (MiB) | peak during the attack | ratio |")
    print("|---|---|---|---|")
    for label, (first, peak, ratio) in result["rss"].items():
        print(f"| {label} | {first:.0f} | {peak:.0f} | {ratio:.2f} |")
    print(f"stages restarted during the attack: {', '.join(result['restarted']) or 'none'}")
    print("\n| sent by the attacker | count | connections the daemon cut |")
    print("|---|---|---|")
    for kind in KINDS:
        print(f"| {kind} | {sent.get(kind, 0)} | {result['attack'].get('cut', {}).get(kind, '-')} |")
    print("\n| rejected by stage, reason | count |")
    print("|---|---|")
    for (stage, reason), count in sorted(result["rejected"].items()):
        print(f"| {stage}, {reason} | {count:.0f} |")
    print(f"\n{'PASS' if passed(result) else 'FAIL'}")


def run(args) -> dict:
    """The whole soak; returns the figures (tests call this with a short duration)."""
    args.data = ped2.resolve_root(args.data)
    test_clips = ped2.test_clips(args.data)
    clips = [test_clips[k % len(test_clips)] for k in range(args.cameras)]
    args.lossless, args.scorers = False, 1
    model = PatchModel(args.model, device="cpu", threads=1)
    run_dir = Path(tempfile.mkdtemp(prefix="vad-hostile-", dir="/tmp"))
    try:
        config = soak.write_config(run_dir, args, clips)
        cfg = pipeline_config.load(config)
        expected = {clip.name: soak.offline_events(model, clip, cfg) for clip in clips}
        daemon = Run(args, cfg, config, run_dir)
        daemon.run()
        return evaluate(daemon, {c.id: clip for c, clip in zip(cfg.cameras, clips)}, expected)
    finally:
        if args.keep:
            print(f"kept {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cameras", type=int, default=2)
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of attack, after the warm-up")
    parser.add_argument("--warm-up", type=float, default=60.0, help="seconds before the attack and the RSS baseline")
    parser.add_argument("--rate", type=float, default=50.0, help="hostile sends per second")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", help="UCSDped2 folder (default: $VAD_PED2, then ../shared/datasets/UCSDped2)")
    parser.add_argument("--model", default=str(BUNDLED_MODEL), help="model .onnx (default: the bundled model)")
    parser.add_argument("--keep", action="store_true", help="keep the run folder (logs, event log, scores)")
    parser.add_argument("--attack", metavar="CONFIG", help=argparse.SUPPRESS)  # the attacking process
    return parser.parse_args(argv)


def main() -> None:
    args = parse()
    if args.attack:
        attack(args.attack, args.seed, args.rate)
        return
    load = os.getloadavg()
    result = run(args)
    report(args, result, load)
    sys.exit(0 if passed(result) else 1)


if __name__ == "__main__":
    main()
