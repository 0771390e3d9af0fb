"""Scorer memory over a long run: resident memory of a real scorer stage process, frame after frame.

  python benchmarks/scorer_memory.py --data ../shared/datasets/UCSDped2 --frames 12000
  python benchmarks/scorer_memory.py --data ../shared/datasets/UCSDped2 --frames 12000 --baseline-code 2403843

The script stands in for a camera's patch stage and for the alerter around one
scorer process (`vad stage scorer`): it sends patch messages one frame at a time
and waits for each frame's scores, so every model call holds one frame, as with a
live camera. Frame k carries as many patches as the cascade gate passes on the
k-th Ped2 test frame (the 2010 test frames looped; 12000 frames are 20 minutes
of a 10 fps camera), with random pixels: the memory a model call needs depends
on the number of patches, not on what they show. Every --sample-every frames
the scorer's resident memory is read from /proc, split into its [heap] (glibc's
main arena), anonymous mappings (large allocations, ONNX Runtime's arena blocks,
other threads' malloc arenas) and file mappings (code, libraries, the model).

With --baseline-code the same run is made with another commit's scorer, and the
table puts both side by side. With --tracemalloc this checkout's scorer loop also
runs in a thread of this process under tracemalloc, which reports what Python
itself allocates (objects, numpy arrays) as the frames go by.

With --onnxruntime, what grows is looked for in ONNX Runtime alone: a bare CPU
session makes the same calls (one per frame, the gate's count of patches) under
each of a few settings (VARIANTS: its memory arena, its per-shape memory
patterns, a new or a reused input array, a first call of a full batch), each in
a fresh process, and glibc's own figures (mallinfo2) say whether the growth is
in its heap or in separately mapped blocks such as ONNX Runtime's arena.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import onnxruntime as ort
import yaml
import zmq
from codetree import REPO, code_at, env_for

from streamer import ped2
from streamer.model import BUNDLED_MODEL, ModelCard, card_path_for
from streamer.patches import PatchExtractor, patch_boxes, to_model_input
from streamer.pipeline import config as pipeline_config
from streamer.pipeline import messages, scorer
from streamer.pipeline.runtime import make_socket, send_blocking
from streamer.scoring import gate_mask
from streamer.sources import FolderSource

REPLY_TIMEOUT_MS = 30_000
# ONNX Runtime settings tried by --onnxruntime: CPU memory arena, memory patterns, a reused input array,
# a first call of a full batch (scorer.max_batch_patches).
VARIANTS = {
    "defaults, a new input array per call (the scorer before)": (True, True, False, False),
    "memory arena off": (False, True, False, False),
    "memory patterns off": (True, False, False, False),
    "memory patterns off, reused input": (True, False, True, False),
    "reused input, full first call": (True, True, True, True),
    "memory patterns off, reused input, full first call (the scorer now)": (True, False, True, True),
}


def gate_counts(data: Path, card: ModelCard) -> list[int]:
    """Patches the card's gate passes on each Ped2 test frame, clips in order."""
    counts = []
    for clip in ped2.test_clips(data):
        extractor = PatchExtractor(card.patch)
        for frame in FolderSource(clip.path):
            counts.append(int(gate_mask(extractor.push(frame.image), card.patch, card.gate).sum()))
    return counts


def memory_mib(pid: int) -> dict[str, float]:
    """Resident memory of a process by kind of mapping, MiB, from /proc/PID/smaps."""
    totals = {"heap": 0.0, "anonymous": 0.0, "files": 0.0}
    kind = None
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if fields[0].endswith(":"):
                if fields[0] == "Rss:" and kind is not None:
                    totals[kind] += int(fields[1]) / 1024
                continue
            path = fields[5] if len(fields) > 5 else ""
            kind = "heap" if path == "[heap]" else "files" if path.startswith("/") else "anonymous"
    return {**totals, "total": sum(totals.values())}


def run_scorer(tree: Path | None, model: str, counts: list[int], args) -> list[tuple[int, dict]]:
    """Drive one scorer through --frames frames; (frames sent, memory) samples.

    The scorer is a `vad stage scorer` process of the code in `tree`; with `tree` None it is this checkout's
    stage loop (`scorer.run`) in a thread of this process instead, sampled by tracemalloc: the memory Python
    itself allocates (objects, numpy arrays), not libraries' native memory.
    """
    card = ModelCard.load(card_path_for(model))
    height, width = card.patch.frame_size or (240, 360)
    positions = len(patch_boxes(height, width, card.patch.size, card.patch.stride))
    shape = (card.patch.channels, card.patch.size, card.patch.size)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (positions, *shape), dtype=np.uint8)
    run_dir = Path(tempfile.mkdtemp(prefix="vad-mem-"))
    config = run_dir / "pipeline.yaml"
    camera = {"id": "cam", "source": "0"}  # never opened: only the scorer runs
    config.write_text(
        yaml.safe_dump({"model": model, "run_dir": str(run_dir), "cameras": [camera], "metrics": {"enabled": False}})
    )
    cfg = pipeline_config.load(config)
    samples, stop = [], threading.Event()
    with zmq.Context() as ctx:
        patches_out = make_socket(ctx, zmq.PUSH, cfg.cameras[0].patches_endpoint, bind=True, messaging=cfg.messaging)
        scores_in = make_socket(ctx, zmq.PULL, cfg.alerter.scores_endpoint, bind=True, messaging=cfg.messaging)
        if tree is None:
            tracemalloc.start()
            process = threading.Thread(target=scorer.run, args=(cfg, 0, stop))
            process.start()
            measure = lambda: {"python": tracemalloc.get_traced_memory()[0] / 2**20}  # noqa: E731
        else:
            command = [sys.executable, "-m", "streamer.cli", "--log-level", "warning", "stage", "scorer"]
            process = subprocess.Popen([*command, "--config", str(config)], cwd=tree, env=env_for(tree))
            measure = lambda: memory_mib(process.pid)  # noqa: E731
        try:
            for seq in range(args.frames):
                count = counts[seq % len(counts)]
                active = np.zeros(positions, dtype=bool)
                active[rng.choice(positions, count, replace=False)] = True
                header = {"camera": "cam", "stream": "memory", "seq": seq, "t_capture": time.time()}
                position = {"index": seq + 1, "clip": "", "reset": seq == 0}
                parts = messages.encode(
                    {**header, "kind": "patches", **position, "frame_shape": [height, width], "moving": count},
                    {"patches": pixels[:count], "active": active},
                )
                send_blocking(patches_out, parts, stop, cfg.messaging.linger_seconds)
                if not scores_in.poll(REPLY_TIMEOUT_MS):
                    raise SystemExit(f"the scorer sent nothing for frame {seq}")
                messages.receive(scores_in)
                if (seq + 1) % args.sample_every == 0 or seq == 0:
                    samples.append((seq + 1, measure()))
        finally:
            if tree is None:
                stop.set()
                process.join()
                tracemalloc.stop()
            else:
                process.terminate()
                process.wait()
            patches_out.close(linger=0)
            scores_in.close(linger=0)
    return samples


class MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
    ] + [("keepcost", ctypes.c_size_t)]


def process_memory() -> dict[str, float]:
    """This process's resident memory and glibc's view of its allocations (MiB; glibc >= 2.33 only)."""
    rss = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS:")) / 1024
    mallinfo2 = getattr(ctypes.CDLL(None), "mallinfo2", None)
    if mallinfo2 is None:
        return {"rss": rss}
    mallinfo2.restype = MallInfo2
    info = mallinfo2()
    return {"rss": rss, "heap": info.arena / 2**20, "mapped": info.hblkhd / 2**20, "in_use": info.uordblks / 2**20}


def probe(model: str, counts: list[int], variant: str, calls: int, sample_every: int) -> list[dict]:
    """A bare ONNX Runtime session making the scorer's calls under one of VARIANTS, in this process."""
    arena, patterns, reuse, full_first = VARIANTS[variant]
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.enable_cpu_mem_arena, options.enable_mem_pattern = arena, patterns
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    name, shape = session.get_inputs()[0].name, session.get_inputs()[0].shape[1:]
    largest = pipeline_config.ScorerConfig.max_batch_patches
    pixels = np.random.default_rng(0).integers(0, 256, (largest, *shape), dtype=np.uint8)
    buffer = np.empty((largest, *shape), dtype=np.float32)
    if full_first:
        session.run(None, {name: to_model_input(pixels, buffer)})
    samples = []
    for call in range(calls):
        count = counts[call % len(counts)]
        if count:  # as the scorer: no call for a frame the gate passed nothing of
            session.run(None, {name: to_model_input(pixels[:count], buffer[:count] if reuse else None)})
        if (call + 1) % sample_every == 0 or call == 0:
            samples.append({"calls": call + 1, **process_memory()})
    return samples


def onnxruntime_variants(model: str, counts: list[int], args) -> None:
    """Each of VARIANTS in a fresh process; a table of its memory after each number of calls."""
    rows = {}
    with tempfile.NamedTemporaryFile("w", suffix=".json") as counts_file:
        counts_file.write(json.dumps(counts))
        counts_file.flush()
        for variant in VARIANTS:
            command = [sys.executable, str(Path(__file__).resolve()), "--model", model, "--frames", str(args.frames)]
            command += ["--sample-every", str(args.sample_every), "--probe", variant, counts_file.name]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            rows[variant] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{variant}: {rows[variant][-1]['rss']:.1f} MiB after {args.frames} calls", file=sys.stderr)
    calls = [sample["calls"] for sample in next(iter(rows.values()))]
    print(f"\nONNX Runtime alone, one call per frame: RSS (MiB) after each number of calls; {Path(model).name}\n")
    print("| settings | " + " | ".join(str(c) for c in calls) + " | glibc heap | mapped blocks |")
    print("|---" * (len(calls) + 3) + "|")
    for variant, samples in rows.items():
        first, last = samples[0], samples[-1]
        glibc = " | ".join(f"{first[k]:.1f} -> {last[k]:.1f}" if k in first else "-" for k in ("heap", "mapped"))
        print(f"| {variant} | " + " | ".join(f"{s['rss']:.1f}" for s in samples) + f" | {glibc} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="UCSDped2 folder (default: $VAD_PED2, then ../shared/datasets/UCSDped2)")
    parser.add_argument("--model", default=str(BUNDLED_MODEL), help="model .onnx (default: the bundled model)")
    parser.add_argument("--frames", type=int, default=12000, help="frames sent (12000: 20 minutes at 10 fps)")
    parser.add_argument("--sample-every", type=int, default=1000, help="frames between memory readings")
    parser.add_argument("--baseline-code", help="git revision whose scorer runs the same frames first")
    parser.add_argument("--baseline-model", help="model for the baseline scorer (default: --model)")
    parser.add_argument(
        "--tracemalloc", action="store_true", help="also run this checkout's scorer loop in-process under tracemalloc"
    )
    parser.add_argument(
        "--onnxruntime", action="store_true", help="instead: ONNX Runtime alone under each of VARIANTS, --frames calls"
    )
    parser.add_argument("--probe", nargs=2, metavar=("VARIANT", "COUNTS_JSON"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    model = str(Path(args.model).resolve())
    if args.probe:
        variant, counts_file = args.probe
        print(
            json.dumps(probe(model, json.loads(Path(counts_file).read_text()), variant, args.frames, args.sample_every))
        )
        return
    data = ped2.resolve_root(args.data)
    baseline_model = str(Path(args.baseline_model or model).resolve())
    counts = gate_counts(data, ModelCard.load(card_path_for(model)))
    print(f"{len(counts)} test frames, {np.mean(counts):.0f} patches per frame through the gate on average")
    if args.onnxruntime:
        onnxruntime_variants(model, counts, args)
        return

    runs = {}
    with code_at(args.baseline_code) if args.baseline_code else nullcontext() as old_tree:
        arms = ([("baseline", old_tree, baseline_model)] if old_tree else []) + [("current", REPO, model)]
        for name, tree, path in arms:
            runs[name] = run_scorer(tree, path, counts, args)
            print(f"{name}: {runs[name][-1][1]['total']:.1f} MiB after {args.frames} frames", file=sys.stderr)

    if args.tracemalloc:
        traced = run_scorer(None, model, counts, args)
        print(
            "Python allocations of this checkout's scorer loop (tracemalloc, in this process), MiB: "
            + ", ".join(f"{m['python']:.2f} after {frames}" for frames, m in traced)
        )

    names = list(runs)
    print(f"\nscorer RSS, MiB, after each number of frames (one frame per model call); {Path(model).name}")
    if old_tree:
        print(f"baseline: streamer/ at {args.baseline_code}, {Path(baseline_model).name}; current: this checkout")
    print("\n| frames | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for row, (frames, _) in enumerate(runs[names[0]]):
        print(f"| {frames} | " + " | ".join(f"{runs[n][row][1]['total']:.1f}" for n in names) + " |")
    print("\ngrowth from the first frame to the last, by kind of mapping (MiB):\n")
    print("| run | heap | anonymous | files | total |\n|---|---|---|---|---|")
    for name in names:
        first, last = runs[name][0][1], runs[name][-1][1]
        cells = " | ".join(f"{first[k]:.1f} -> {last[k]:.1f}" for k in ("heap", "anonymous", "files", "total"))
        print(f"| {name} | {cells} |")


if __name__ == "__main__":
    main()
