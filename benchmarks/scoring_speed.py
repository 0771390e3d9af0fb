"""Scoring speed of exported models: patches per second with onnxruntime on CPU, 1 and 2 threads, batch 4096.

    python benchmarks/scoring_speed.py streamer/models
    python benchmarks/scoring_speed.py streamer/models --threads 1 --graph-optimization all extended basic none

Scores random uint8 patches of each model's input shape (the graphs do the same
work whatever the pixels are); one warm-up batch, then batches until at least
`--seconds` have passed. Encoder graphs (*.encoder.onnx) are not scoring models
and are skipped. Sessions are the scorer's own (`create_session`: every graph
optimisation, ONNX Runtime's default); --graph-optimization also times them with
that one setting lowered. With --repeats N each figure is the best of N timings,
which other work on a shared machine disturbs less than one long timing.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from streamer.model import ModelCard, card_path_for, create_session, session_scores

LEVELS = {
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
}


def cpu_session(path: Path, threads: int, level: str):
    """The scorer's CPU session, or the same with another graph optimisation level."""
    session, _ = create_session(path, device="cpu", threads=threads)
    if level == "all":
        return session
    options = session.get_session_options()
    options.graph_optimization_level = LEVELS[level]
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def patches_per_second(
    path: Path, threads: int, batch: int, seconds: float, level: str = "all", repeats: int = 1
) -> float:
    """The best of `repeats` timings of at least `seconds` each (other work on the machine only slows one down)."""
    card = ModelCard.load(card_path_for(path))
    session = cpu_session(path, threads, level)
    spec = card.patch
    patches = np.random.default_rng(0).integers(0, 256, (batch, spec.channels, spec.size, spec.size), dtype=np.uint8)
    session_scores(session, patches, batch)  # warm-up
    rates = []
    for _ in range(repeats):
        runs, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            session_scores(session, patches, batch)
            runs += 1
        rates.append(runs * batch / (time.perf_counter() - started))
    return max(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path, help="folder of exported models (.onnx with .json cards)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--seconds", type=float, default=5.0, help="minimum timing per model and thread count")
    parser.add_argument("--graph-optimization", choices=LEVELS, nargs="+", default=["all"], help="levels to time")
    parser.add_argument("--repeats", type=int, default=1, help="timings per figure, the best one shown")
    args = parser.parse_args()
    models = sorted(p for p in args.folder.glob("*.onnx") if not p.name.endswith(".encoder.onnx"))
    if not models:
        raise SystemExit(f"no .onnx models in {args.folder}")
    columns = [(level, t) for level in args.graph_optimization for t in args.threads]
    named = len(args.graph_optimization) > 1 or args.graph_optimization != ["all"]
    headers = [f"{f'{level}, ' if named else ''}{t} thread(s)" for level, t in columns]
    print(f"{'model':<22}" + "".join(f"{h:>24}" for h in headers) + "   (patches/s on CPU)")
    for path in models:
        rates = [patches_per_second(path, t, args.batch, args.seconds, level, args.repeats) for level, t in columns]
        print(f"{path.stem:<22}" + "".join(f"{r:>24,.0f}" for r in rates), flush=True)


if __name__ == "__main__":
    main()
