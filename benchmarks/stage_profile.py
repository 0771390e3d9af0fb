"""Where a frame's CPU time goes: decode, resize, flow, patch cut, gate, network, calibration, messaging, alerting.

  python benchmarks/stage_profile.py --data ../shared/datasets/UCSDped2
  python benchmarks/stage_profile.py --data ../shared/datasets/UCSDped2 --baseline-code 2403843 \
      --baseline-model benchmarks/baseline/nre_ped2.onnx

The Ped2 test clips go frame by frame through every stage's calls, in one thread:
the capture's source, the patch stage's `PatchExtractor.push` and `gate_mask`, the
scorer's `raw_scores`, `calibrated_frame` and `frame_score`, and the alert stage's
`Alerter` (event log included); each message between stages is encoded, sent over
a ZeroMQ ipc socket, received and checked as in the pipeline. Each stage's CPU
time (this thread's, so other processes on the machine distort it less than wall
time) is summed; resizes and optical flow inside `push` are timed apart through
a timing wrapper around the OpenCV module the patch code calls.

Each round runs in a fresh process; each stage's figure is its least over the
rounds, since other work on the machine only ever adds to it. With
--baseline-code another commit's `streamer` package runs the same steps (its own
default batch size), alternating with this checkout round by round, and the
table puts both side by side.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import cv2
import numpy as np
import yaml
from codetree import REPO, code_at, env_for

STAGES = ("decode", "resize", "flow", "patch cut", "gate", "network", "calibration", "messaging", "alerting")


class Clock:
    """CPU seconds of this thread per stage; a stage timed inside another is taken out of the outer one."""

    def __init__(self):
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self._nested: list[float] = []

    @contextmanager
    def __call__(self, stage: str):
        started = time.thread_time()
        self._nested.append(0.0)
        try:
            yield
        finally:
            spent = time.thread_time() - started
            self.seconds[stage] += spent - self._nested.pop()
            if self._nested:
                self._nested[-1] += spent


class TimedCv2:
    """OpenCV as the patch module sees it, with resizes and optical flow timed as stages of their own."""

    def __init__(self, clock: Clock):
        self._clock = clock

    def __getattr__(self, name):
        return getattr(cv2, name)

    def resize(self, *args, **kwargs):
        with self._clock("resize"):
            return cv2.resize(*args, **kwargs)

    def calcOpticalFlowFarneback(self, *args, **kwargs):
        with self._clock("flow"):
            return cv2.calcOpticalFlowFarneback(*args, **kwargs)

    def DISOpticalFlow_create(self, *args, **kwargs):
        return TimedFlow(cv2.DISOpticalFlow_create(*args, **kwargs), self._clock)


class TimedFlow:
    def __init__(self, flow, clock: Clock):
        self._flow, self._clock = flow, clock

    def calc(self, *args, **kwargs):
        with self._clock("flow"):
            return self._flow.calc(*args, **kwargs)


def profile(data: str, model_path: str, frames: int, batch_frames: int) -> dict:
    """One round in this process with whatever `streamer` it imports; CPU seconds per stage."""
    import zmq

    from streamer import patches as patch_module
    from streamer import ped2
    from streamer.model import PatchModel
    from streamer.patches import PatchExtractor
    from streamer.pipeline import config as pipeline_config
    from streamer.pipeline import messages, runtime
    from streamer.pipeline.alerter import Alerter
    from streamer.pipeline.checkpoint import Checkpoint, state_path
    from streamer.pipeline.events import EventLog
    from streamer.pipeline.outbox import Outbox
    from streamer.pipeline.runtime import make_socket
    from streamer.scoring import calibrated_frame, frame_score, gate_mask
    from streamer.sources import FolderSource

    clock = Clock()
    if hasattr(runtime, "tune_allocator"):  # set up this process as the code's stage processes set themselves up
        runtime.tune_allocator()
    patch_module.cv2 = TimedCv2(clock)
    cv2.setNumThreads(1)  # as the patch stage (patcher.threads)
    run_dir = Path(tempfile.mkdtemp(prefix="vad-profile-"))
    config = run_dir / "pipeline.yaml"
    camera = {"id": "ped2", "kind": "ped2", "source": "test", "data": data}
    config.write_text(yaml.safe_dump({"model": model_path, "run_dir": str(run_dir), "cameras": [camera]}))
    cfg = pipeline_config.load(config)
    model = PatchModel(model_path, device="cpu", threads=1, batch_size=cfg.scorer.max_batch_patches)
    card, settings = model.card, pipeline_config.scoring_settings(cfg, model.card)
    extractor = PatchExtractor(card.patch)
    with zmq.Context() as ctx:
        sender = make_socket(ctx, zmq.PUSH, f"ipc://{run_dir}/link", bind=True, messaging=cfg.messaging)
        receiver = make_socket(ctx, zmq.PULL, f"ipc://{run_dir}/link", bind=False, messaging=cfg.messaging)
        publisher = make_socket(ctx, zmq.PUB, f"ipc://{run_dir}/events", bind=True, messaging=cfg.messaging)
        outbox = Outbox(
            EventLog(cfg.alerter.event_log),
            publisher.send_multipart,
            cfg.alerter.log_retry_seconds,
            cfg.alerter.max_held_events,
        )
        alerter = Alerter(cfg, outbox, Checkpoint(state_path(run_dir, "alerter")))

        def transfer(parts: list) -> messages.Message:
            messages.send(sender, parts)
            return messages.decode(messages.receive(receiver), cfg.messaging.max_message_bytes)

        def score(batch: list[messages.Message]) -> None:
            with clock("network"):
                raw = model.raw_scores(np.concatenate([m.arrays["patches"] for m in batch]))
            offset = 0
            for message in batch:
                with clock("calibration"):
                    active = message.arrays["active"]
                    count = int(active.sum())
                    calibrated = calibrated_frame(raw[offset : offset + count], active, card.calibration)
                    offset += count
                    value = frame_score(calibrated, message.header["moving"], settings, card.count_bands)
                with clock("messaging"):
                    scored = transfer(
                        messages.derive(
                            message,
                            "scores",
                            {"patch_scores": calibrated},
                            frame_shape=message.header["frame_shape"],
                            score=value,
                            active=count,
                            moving=message.header["moving"],
                            t_scored=time.time(),
                            model=card.onnx_sha256,
                        )
                    )
                with clock("alerting"):
                    alerter.accept(scored)
                    alerter.expire()

        seq, batch, patches_scored, started = 0, [], 0, time.perf_counter()
        for clip in ped2.test_clips(data):
            source, reset = iter(FolderSource(clip.path)), True
            while seq < frames:
                with clock("decode"):
                    frame = next(source, None)
                if frame is None:
                    break
                header = {"kind": "frame", "t_capture": frame.timestamp, "index": frame.index, "clip": clip.name}
                with clock("messaging"):
                    received = transfer(
                        messages.encode(
                            {"camera": "ped2", "stream": "profile", "seq": seq, **header, "reset": reset},
                            {"image": frame.image},
                        )
                    )
                image = received.arrays["image"]
                with clock("patch cut"):
                    if received.header["reset"]:
                        extractor.reset()
                    patches = extractor.push(image)
                with clock("gate"):
                    active = gate_mask(patches, card.patch, card.gate)
                    passed = patches[active]
                with clock("messaging"):
                    batch.append(
                        transfer(
                            messages.derive(
                                received,
                                "patches",
                                {"patches": passed, "active": active},
                                frame_shape=list(image.shape),
                                moving=int(active.sum()),
                            )
                        )
                    )
                patches_scored += len(passed)
                if len(batch) == batch_frames:
                    score(batch)
                    batch = []
                seq, reset = seq + 1, False
            if seq >= frames:
                break
        if batch:
            score(batch)
        wall = time.perf_counter() - started
        for socket in (sender, receiver, publisher):
            socket.close(linger=0)
    return {"frames": seq, "patches": patches_scored, "wall": wall, "seconds": clock.seconds}


def run_round(tree: Path, model: str, args) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", "--data", str(args.data), "--model", model]
    command += ["--frames", str(args.frames), "--batch-frames", str(args.batch_frames)]
    done = subprocess.run(command, cwd=tree, env=env_for(tree), capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"profiling round in {tree} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="UCSDped2 folder (default: $VAD_PED2, then ../shared/datasets/UCSDped2)")
    parser.add_argument("--model", help="model .onnx (default: the bundled model)")
    parser.add_argument("--frames", type=int, default=2010, help="test frames per round, clips in order")
    parser.add_argument("--batch-frames", type=int, default=1, help="frames per model call (1: a live 10 fps camera)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per code tree; the table shows the least")
    parser.add_argument("--baseline-code", help="git revision whose streamer/ is profiled too, alternating")
    parser.add_argument("--baseline-model", help="model for the baseline rounds (default: --model)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    from streamer import ped2
    from streamer.model import BUNDLED_MODEL

    args.data = str(ped2.resolve_root(args.data).resolve())
    model = str(Path(args.model or BUNDLED_MODEL).resolve())
    if args.worker:
        print(json.dumps(profile(args.data, model, args.frames, args.batch_frames)))
        return
    baseline_model = str(Path(args.baseline_model or model).resolve())
    arms = {}
    with code_at(args.baseline_code) if args.baseline_code else nullcontext() as old_tree:
        plan = ([("baseline", old_tree, baseline_model)] if old_tree else []) + [("current", REPO, model)]
        for round_number in range(args.rounds):
            for name, tree, path in plan:
                result = run_round(tree, path, args)
                arms.setdefault(name, []).append(result)
                total = sum(result["seconds"].values()) / result["frames"] * 1000
                print(f"round {round_number + 1}: {name} {total:.2f} ms CPU per frame", file=sys.stderr, flush=True)
    print_table(arms, args, model, baseline_model)


def print_table(arms: dict, args, model: str, baseline_model: str) -> None:
    import os

    def per_frame(name: str, stage: str | None) -> float:
        rounds = arms[name]
        values = [
            (sum(r["seconds"].values()) if stage is None else r["seconds"][stage]) / r["frames"] * 1000 for r in rounds
        ]
        return min(values)  # other work on the machine only ever adds CPU time (caches, memory bandwidth)

    names = list(arms)
    current = arms["current"][0]
    print(
        f"\n{current['frames']} Ped2 test frames per round, {args.batch_frames} frame(s) per model call, "
        f"{current['patches'] / current['frames']:.0f} patches/frame to the network; CPU ms per frame, the least of "
        f"{args.rounds} round(s); {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end"
    )
    if "baseline" in arms:
        print(
            f"baseline: streamer/ at {args.baseline_code}, {Path(baseline_model).name}; current: this checkout, "
            f"{Path(model).name}"
        )
    header = " | ".join(f"{n} ms" for n in names)
    extra = " | current / baseline" if "baseline" in arms else ""
    print(f"\n| stage | {header} | share of current{extra} |")
    print("|---" * (len(names) + 2 + bool(extra)) + "|")
    total = per_frame("current", None)
    for stage in (*STAGES, None):
        values = [per_frame(n, stage) for n in names]
        cells = " | ".join(f"{v:.3f}" for v in values)
        share = f"{per_frame('current', stage) / total:.0%}"
        ratio = ""
        if "baseline" in arms:
            before = per_frame("baseline", stage)
            ratio = f" | {per_frame('current', stage) / before:.2f}" if before > 0 else " | -"
        print(f"| {stage or '**total**'} | {cells} | {share}{ratio} |")


if __name__ == "__main__":
    main()
