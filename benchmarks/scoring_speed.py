"""Scoring speed of exported models: patches per second with onnxruntime on CPU, 1 and 2 threads, batch 4096.

    python benchmarks/scoring_speed.py streamer/models

Scores random uint8 patches of each model's input shape (the graphs do the same
work whatever the pixels are); one warm-up batch, then batches until at least
`--seconds` have passed. Encoder graphs (*.encoder.onnx) are not scoring models
and are skipped.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from streamer.model import ModelCard, card_path_for, create_session, session_scores


def patches_per_second(path: Path, threads: int, batch: int, seconds: float) -> float:
    card = ModelCard.load(card_path_for(path))
    session, _ = create_session(path, device="cpu", threads=threads)
    spec = card.patch
    patches = np.random.default_rng(0).integers(0, 256, (batch, spec.channels, spec.size, spec.size), dtype=np.uint8)
    session_scores(session, patches, batch)  # warm-up
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        session_scores(session, patches, batch)
        runs += 1
    return runs * batch / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path, help="folder of exported models (.onnx with .json cards)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--seconds", type=float, default=5.0, help="minimum timing per model and thread count")
    args = parser.parse_args()
    models = sorted(p for p in args.folder.glob("*.onnx") if not p.name.endswith(".encoder.onnx"))
    if not models:
        raise SystemExit(f"no .onnx models in {args.folder}")
    print(f"{'model':<22}" + "".join(f"{f'{t} thread(s)':>16}" for t in args.threads) + "   (patches/s on CPU)")
    for path in models:
        rates = [patches_per_second(path, t, args.batch, args.seconds) for t in args.threads]
        print(f"{path.stem:<22}" + "".join(f"{r:>16,.0f}" for r in rates), flush=True)


if __name__ == "__main__":
    main()
