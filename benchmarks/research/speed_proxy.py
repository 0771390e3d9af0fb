"""The training-data speed proxy at several speed-ups, for one or more models; prints a table.

    python benchmarks/research/speed_proxy.py streamer/models/*_ped2.onnx

The held-out training clips (Train015 and Train016 by default) are scored as they
are and with one moving person sped up (training/validation.py), `--draws` times
per frame with different people, for each `--speedups` factor. Each cell is the
frame-level EER / AUC of telling the two apart: what `vad train` reports for x2
with one draw, here with less noise and for faster movers.

`--flow-statistic` adds a baseline with no training: a patch scores its mean
optical-flow speed, a frame the mean of its 3 fastest patches.
"""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import numpy as np

from streamer import ped2
from streamer.model import PatchModel
from streamer.patches import PatchSpec
from streamer.scoring import Calibration, ScoringSettings
from training.validation import speed_proxy


class FlowSpeedStatistic:
    """Stands in for a model in the proxy: raw score = mean flow speed of the patch (0-255 = 0-8 px/frame)."""

    name = "flow speed statistic (no training)"

    def __init__(self, flow_scale: float = 0.75):
        self.card = SimpleNamespace(
            patch=PatchSpec(motion="flow", appearance=False, flow_scale=flow_scale),
            gate=None,
            count_bands=None,
            calibration=Calibration("global", [0.0], [1.0]),
            scoring=ScoringSettings(aggregation="topk", top_k=3, smoothing="none"),
        )

    def raw_scores(self, patches: np.ndarray) -> np.ndarray:
        return patches.reshape(len(patches), -1).mean(axis=1, dtype=np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="*", help="ONNX models with their cards")
    parser.add_argument("--data", help="UCSDped2 folder (default: $VAD_PED2, then ../shared/datasets/UCSDped2)")
    parser.add_argument("--clips", nargs="+", default=["Train015", "Train016"], help="held-out training clips")
    parser.add_argument("--speedups", type=int, nargs="+", default=[2, 3, 4])
    parser.add_argument("--draws", type=int, default=5, help="sped-up versions of each frame")
    parser.add_argument("--flow-statistic", action="store_true", help="add the untrained flow-speed baseline")
    args = parser.parse_args()
    if not args.models and not args.flow_statistic:
        parser.error("give at least one model, or --flow-statistic")
    folders = [c.path for c in ped2.training_clips(args.data) if c.name in args.clips]
    if len(folders) != len(args.clips):
        parser.error(f"not all of {args.clips} are among the training clips")
    print(f"{'model':<40}" + "".join(f"{'x' + str(s):>16}" for s in args.speedups) + "   (EER / AUC)")
    models = [(path, PatchModel(path, device="cpu", threads=1)) for path in args.models]
    if args.flow_statistic:
        models.append((FlowSpeedStatistic.name, FlowSpeedStatistic()))
    for name, model in models:
        cells = []
        for speedup in args.speedups:
            r = speed_proxy(model, folders, speedup, draws=args.draws)
            cells.append("n/a" if r["eer"] is None else f"{r['eer']:.2%} / {r['auc']:.3f}")
        print(f"{name:<40}" + "".join(f"{c:>16}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
