"""GPU check: does the scorer really run on CUDA, do its scores match the CPU's, and how fast is it.

  pip install -e '.[cuda]'
  python benchmarks/gpu_check.py --data ../shared/datasets/UCSDped2            # a machine with an NVIDIA GPU
  python benchmarks/gpu_check.py --data ../shared/datasets/UCSDped2 --cpu-only # the same steps on the CPU

Five steps, each a part of one table (also written as JSON, --out):

1. provider: every bundled model is loaded as the scorer loads it with
   `scorer.device: cuda` and must run on CUDAExecutionProvider. Where the wheel
   falls back to the CPU (no driver, CUDA or cuDNN libraries missing) the script
   stops at once with status 2 and says why. A profile of one batch says which
   provider ran each node (ONNX Runtime may keep shape arithmetic on the CPU).
2. agreement: patches of --frames Ped2 test frames, evenly spaced over the 12
   clips, scored on the device and by a reference session on the CPU with graph
   optimisations off; the largest differences of raw and calibrated patch scores
   and of frame scores (before smoothing), and on how many frames the two fall on
   different sides of the threshold. A calibrated difference over --tolerance
   fails the check (status 1, after the table).
3. patches/s at each of --batch-sizes: the scorer's own call (uint8 patches in,
   scores out: conversion, copies and the network) with a plain `run`, and with
   IOBinding (the input kept in device memory and refreshed in place each call,
   the output written straight into a host buffer), so the table says whether
   IOBinding pays.
4. live calls: one call per frame with the patches the gate passes, as a live
   camera's scorer makes them, over the same frames twice; the first pass meets
   each batch size for the first time (CUDA chooses convolution algorithms per
   input shape), the second shows the steady state.
5. end-to-end frames/s: `vad run` with each number of --cameras, camera k playing
   the first --camera-frames frames of test clip k (clips reused past 12) as fast
   as the pipeline takes them, one scorer process on the device.

With --cpu-only the device is the CPU (`scorer.device: cpu`); the steps are the
same, so CI runs them on a few frames and the script cannot rot.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import yaml
from codetree import REPO
from pipeline import read_scores

from streamer import ped2
from streamer.model import BUNDLED_MODEL, ModelCard, ModelError, PatchModel, card_path_for, session_scores
from streamer.patches import PatchExtractor, PatchSpec, to_model_input
from streamer.pipeline.config import ScorerConfig
from streamer.scoring import calibrated_frame, frame_score, gate_mask
from streamer.sources import list_image_files, to_gray

MODELS = BUNDLED_MODEL.parent
PROVIDERS = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}
END_TO_END_TIMEOUT = 600.0


class CheckFailed(SystemExit):
    """The device is not what it should be: stop now, with status 2."""

    def __init__(self, message: str):
        super().__init__(2)
        self.message = message


def bundled_models() -> list[Path]:
    return sorted(p for p in MODELS.glob("*.onnx") if not p.name.endswith(".encoder.onnx"))


def environment(device: str) -> dict:
    info = {
        "device": device,
        "onnxruntime": ort.__version__,
        "providers_available": ort.get_available_providers(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
    }
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
        done = subprocess.run(query, capture_output=True, text=True)
        info["gpus"] = done.stdout.strip().splitlines() if done.returncode == 0 else [done.stderr.strip()]
    return info


def check_provider(path: Path, device: str, spec: PatchSpec) -> dict:
    """The scorer's own loading with `device`; CheckFailed unless that device's provider runs the model."""
    try:
        model = PatchModel(path, device=device, threads=1)
    except ModelError as e:
        raise CheckFailed(f"{path.name}: {e}") from None
    if model.provider != PROVIDERS[device]:
        raise CheckFailed(f"{path.name}: runs on {model.provider}, not {PROVIDERS[device]}")
    batch = np.zeros((64, spec.channels, spec.size, spec.size), dtype=np.float32)
    nodes = node_providers(path, model.session.get_providers(), batch)
    if not nodes.get(PROVIDERS[device]):
        raise CheckFailed(f"{path.name}: no node ran on {PROVIDERS[device]} ({dict(nodes)})")
    return {"model": path.stem, "provider": model.provider, "nodes": dict(nodes)}


def node_providers(path: Path, providers: list[str], batch: np.ndarray) -> Counter:
    """How many of the graph's nodes each provider ran on one batch, from ONNX Runtime's profile."""
    folder = Path(tempfile.mkdtemp(prefix="vad-gpu-profile-"))
    try:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.enable_profiling = True
        options.profile_file_prefix = str(folder / "ort")
        session = ort.InferenceSession(str(path), options, providers=providers)
        session.run(None, {session.get_inputs()[0].name: batch})
        trace = json.loads(Path(session.end_profiling()).read_text())
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return Counter(
        event["args"]["provider"]
        for event in trace
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time")
    )


def read_gray(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise SystemExit(f"cannot read {path}")
    return to_gray(image)


def test_frame_patches(data: Path, spec: PatchSpec, count: int) -> np.ndarray:
    """(frames, positions, C, S, S) patches of `count` test frames evenly spaced over the clips, each frame's
    motion channels from its own previous frame."""
    files = [(clip.name, path) for clip in ped2.test_clips(data) for path in list_image_files(clip.path)]
    picked = np.unique(np.linspace(0, len(files) - 1, count).round().astype(int))
    patches = []
    for index in picked:
        extractor = PatchExtractor(spec)
        clip, path = files[index]
        if index > 0 and files[index - 1][0] == clip:
            extractor.push(read_gray(files[index - 1][1]))
        patches.append(extractor.push(read_gray(path)))
    return np.stack(patches)


def reference_session(path: Path):
    """Plain CPU scoring: one thread, no graph optimisations, the network as exported."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def agreement(path: Path, device: str, frames: np.ndarray, tolerance: float) -> dict:
    """Device against reference CPU scores of every patch of `frames`: largest differences, threshold decisions."""
    model = PatchModel(path, device=device, threads=1)
    card = model.card
    flat = frames.reshape(-1, *frames.shape[2:])
    device_raw = model.raw_scores(flat).reshape(frames.shape[:2])
    reference_raw = session_scores(reference_session(path), flat).reshape(frames.shape[:2])
    everywhere = np.ones(frames.shape[1], dtype=bool)
    calibrated = {
        name: np.stack([calibrated_frame(row, everywhere, card.calibration) for row in raw])
        for name, raw in (("device", device_raw), ("reference", reference_raw))
    }
    scores = {}
    for name, raw in (("device", device_raw), ("reference", reference_raw)):
        values = []
        for patches, row in zip(frames, raw):
            active = gate_mask(patches, card.patch, card.gate)  # as the pipeline scores: gated patches count 0
            kept = calibrated_frame(row[active], active, card.calibration)
            values.append(frame_score(kept, int(active.sum()), card.scoring, card.count_bands))
        scores[name] = np.array(values)
    threshold = card.scoring.threshold
    calibrated_diff = float(np.abs(calibrated["device"] - calibrated["reference"]).max())
    return {
        "model": path.stem,
        "frames": len(frames),
        "patches": int(flat.shape[0]),
        "raw": float(np.abs(device_raw - reference_raw).max()),
        "calibrated": calibrated_diff,
        "frame_score": float(np.abs(scores["device"] - scores["reference"]).max()),
        "decisions_differ": int(((scores["device"] >= threshold) != (scores["reference"] >= threshold)).sum()),
        "threshold": threshold,
        "passed": calibrated_diff <= tolerance,
    }


def patches_per_second(path: Path, device: str, patches: np.ndarray, batch: int, seconds: float) -> dict:
    """The scorer's call at one batch size, plainly and with IOBinding; patches/s of each."""
    model = PatchModel(path, device=device, threads=1, batch_size=batch)
    batch_patches = np.resize(patches, (batch, *patches.shape[1:]))  # the real patches, repeated to fill the batch

    session = model.session
    host_input = to_model_input(batch_patches)
    ort_device = "cuda" if device == "cuda" else "cpu"
    device_input = ort.OrtValue.ortvalue_from_numpy(host_input, ort_device, 0)
    host_output = ort.OrtValue.ortvalue_from_shape_and_type([batch], np.float32, "cpu", 0)  # a few bytes back
    binding = session.io_binding()
    binding.bind_ortvalue_input(session.get_inputs()[0].name, device_input)
    binding.bind_ortvalue_output(session.get_outputs()[0].name, host_output)

    def bound() -> np.ndarray:
        to_model_input(batch_patches, host_input)
        device_input.update_inplace(host_input)
        session.run_with_iobinding(binding)
        return host_output.numpy()

    plain = timed(lambda: model.raw_scores(batch_patches), seconds) * batch
    with_binding = timed(bound, seconds) * batch
    if not np.allclose(bound(), model.raw_scores(batch_patches), rtol=1e-4, atol=1e-6):
        raise CheckFailed(f"{path.name}: IOBinding and plain runs disagree at batch {batch}")
    return {"model": path.stem, "batch": batch, "run": plain, "iobinding": with_binding}


def live_calls(path: Path, device: str, frames: np.ndarray) -> dict:
    """One call per frame with the patches its gate passes, as a live camera's scorer makes them, twice over:
    a first pass meets every batch size for the first time (CUDA then chooses convolution algorithms for it)."""
    model = PatchModel(path, device=device, threads=1, batch_size=ScorerConfig.max_batch_patches)
    model.warm_up()
    card = model.card
    batches = [patches[gate_mask(patches, card.patch, card.gate)] for patches in frames]
    passes = []
    for _ in range(2):
        times = []
        for batch in batches:
            started = time.perf_counter()
            model.raw_scores(batch)
            times.append(time.perf_counter() - started)
        passes.append({"mean_ms": float(np.mean(times)) * 1000, "max_ms": float(np.max(times)) * 1000})
    sizes = [len(b) for b in batches]
    return {
        "model": path.stem,
        "calls": len(batches),
        "sizes": [min(sizes), max(sizes)],
        "first": passes[0],
        "second": passes[1],
    }


def timed(call, seconds: float) -> float:
    """Calls per second: one warm-up call (CUDA picks its convolution algorithms there), then at least
    3 calls and `seconds`."""
    call()
    calls, started = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - started < seconds:
        call()
        calls += 1
    return calls / (time.perf_counter() - started)


def end_to_end(data: Path, device: str, cameras: int, frames: int, max_batch_patches: int) -> dict:
    """`vad run` with `cameras` lossless cameras of `frames` frames each; frames/s from first capture to last alert."""
    clips = ped2.test_clips(data)
    run_dir = Path(tempfile.mkdtemp(prefix="vad-gpu-"))
    try:
        sources = []
        for k in range(cameras):
            folder = run_dir / f"cam{k + 1}"
            folder.mkdir()
            for path in list_image_files(clips[k % len(clips)].path)[:frames]:
                (folder / path.name).symlink_to(path.resolve())
            sources.append({"id": f"cam{k + 1}", "kind": "folder", "source": str(folder), "live": False})
        config = run_dir / "pipeline.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "model": str(BUNDLED_MODEL),
                    "run_dir": str(run_dir),
                    "cameras": sources,
                    "scorer": {"processes": 1, "device": device, "threads": 1, "max_batch_patches": max_batch_patches},
                    "alerter": {
                        "events_endpoint": f"ipc://{run_dir}/events",
                        "score_log": str(run_dir / "scores.jsonl"),
                        "exit_at_end": True,
                        "media": {"enabled": False},  # the scoring path; what media cost is in docs/review.md
                    },
                    "metrics": {"enabled": False},
                    "supervisor": {"restart": False},
                }
            )
        )
        command = [sys.executable, "-m", "streamer.cli", "--log-level", "warning", "run", "--config", str(config)]
        done = subprocess.run(command, cwd=REPO, timeout=END_TO_END_TIMEOUT)
        if done.returncode != 0:
            raise SystemExit(f"end-to-end run with {cameras} camera(s) failed (status {done.returncode})")
        scores = read_scores(run_dir)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    seconds = max(s["t_alert"] for s in scores) - min(s["t_capture"] for s in scores)
    return {
        "cameras": cameras,
        "frames": len(scores),
        "seconds": seconds,
        "fps": len(scores) / seconds,
        "patches_per_frame": float(np.mean([s["active"] for s in scores])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="UCSDped2 folder (default: $VAD_PED2, then ../shared/datasets/UCSDped2)")
    parser.add_argument("--cpu-only", action="store_true", help="run every step on the CPU (no GPU needed)")
    parser.add_argument("--frames", type=int, default=200, help="test frames whose patches are compared")
    parser.add_argument("--tolerance", type=float, default=0.01, help="largest calibrated patch-score difference")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 1024, 4096, 16384])
    parser.add_argument("--seconds", type=float, default=2.0, help="timing per model, batch size and way of calling")
    parser.add_argument("--cameras", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--camera-frames", type=int, default=150, help="frames each camera plays end-to-end")
    parser.add_argument(
        "--max-batch-patches",
        type=int,
        default=ScorerConfig.max_batch_patches,
        help="end-to-end: scorer.max_batch_patches (default: the config's, %(default)s)",
    )
    parser.add_argument("--out", default="runs/gpu_check.json", help="JSON of the table (default %(default)s)")
    args = parser.parse_args()
    data = ped2.resolve_root(args.data).resolve()
    device = "cpu" if args.cpu_only else "cuda"
    started = time.monotonic()
    report: dict = {"environment": environment(device), "arguments": vars(args)}
    models = bundled_models()
    specs = {path: ModelCard.load(card_path_for(path)).patch for path in models}
    try:
        step("provider")
        report["provider"] = [check_provider(path, device, specs[path]) for path in models]  # fail fast
        step(f"patches of {args.frames} test frames")
        frames = {spec: test_frame_patches(data, spec, args.frames) for spec in set(specs.values())}
        step("agreement")
        report["agreement"] = [agreement(path, device, frames[specs[path]], args.tolerance) for path in models]
        step("patches/s")
        report["speed"] = [
            patches_per_second(
                path, device, frames[specs[path]].reshape(-1, *frames[specs[path]].shape[2:]), b, args.seconds
            )
            for path in models
            for b in args.batch_sizes
        ]
        step("live calls")
        report["live_calls"] = [live_calls(path, device, frames[specs[path]]) for path in models]
        step("end to end")
        report["end_to_end"] = [
            end_to_end(data, device, n, args.camera_frames, args.max_batch_patches) for n in args.cameras
        ]
    except CheckFailed as failure:
        env = report["environment"]
        print(f"\nGPU CHECK FAILED: {failure.message}", file=sys.stderr)
        print(
            f"onnxruntime {env['onnxruntime']}, providers {', '.join(env['providers_available'])}; "
            f"GPUs: {'; '.join(env.get('gpus', [])) or 'nvidia-smi not found'}",
            file=sys.stderr,
        )
        report["failure"] = failure.message
        write(report, args.out, started)
        raise
    report["passed"] = all(a["passed"] for a in report["agreement"])
    write(report, args.out, started)
    print_table(report)
    if not report["passed"]:
        raise SystemExit(1)


def step(name: str) -> None:
    print(f"gpu_check: {name} ({time.strftime('%H:%M:%S')})", file=sys.stderr, flush=True)


def write(report: dict, out: str, started: float) -> None:
    report["seconds"] = time.monotonic() - started
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(report, indent=1) + "\n")


def print_table(report: dict) -> None:
    env = report["environment"]
    gpus = "; ".join(env.get("gpus", [])) or "no nvidia-smi"
    print(
        f"\ndevice {env['device']} ({gpus}); onnxruntime {env['onnxruntime']}; {env['cpus']} CPUs; "
        f"{report['seconds']:.0f} s in all\n"
    )
    print("| step | model / setting | result |\n|---|---|---|")
    for row in report["provider"]:
        nodes = ", ".join(f"{count} on {name}" for name, count in row["nodes"].items())
        print(f"| provider | {row['model']} | {row['provider']} ({nodes}) |")
    for row in report["agreement"]:
        print(
            f"| agreement with CPU reference | {row['model']} | max abs difference: raw {row['raw']:.2e}, "
            f"calibrated {row['calibrated']:.2e}, frame score {row['frame_score']:.2e}; threshold decisions differ "
            f"on {row['decisions_differ']} of {row['frames']} frames; {'ok' if row['passed'] else 'OVER TOLERANCE'} |"
        )
    for row in report["speed"]:
        print(
            f"| patches/s | {row['model']}, batch {row['batch']} | {row['run']:,.0f} plain run, "
            f"{row['iobinding']:,.0f} with IOBinding |"
        )
    for row in report["live_calls"]:
        first, second = row["first"], row["second"]
        print(
            f"| live calls | {row['model']}, {row['calls']} calls of {row['sizes'][0]}-{row['sizes'][1]} patches | "
            f"ms per call, mean / max: first pass {first['mean_ms']:.2f} / {first['max_ms']:.1f}, second pass "
            f"{second['mean_ms']:.2f} / {second['max_ms']:.1f} |"
        )
    for row in report["end_to_end"]:
        print(
            f"| end-to-end | {row['cameras']} camera(s) | {row['fps']:.1f} frames/s ({row['frames']} frames in "
            f"{row['seconds']:.1f} s; {row['patches_per_frame']:.0f} patches/frame to the network) |"
        )


if __name__ == "__main__":
    main()
