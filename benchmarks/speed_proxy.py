"""The training-data speed proxy at several speed-ups, for one or more models; prints a table.

    python benchmarks/speed_proxy.py streamer/models/*_ped2.onnx

The held-out training clips (Train015 and Train016 by default) are scored as they
are and with one moving person sped up (training/validation.py), `--draws` times
per frame with different people, for each `--speedups` factor. Each cell is the
frame-level EER / AUC of telling the two apart: what `vad train` reports for x2
with one draw, here with less noise and for faster movers.
"""

from __future__ import annotations

import argparse

from streamer import ped2
from streamer.model import PatchModel
from training.validation import speed_proxy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="+", help="ONNX models with their cards")
    parser.add_argument("--data", help="UCSDped2 folder (default: $VAD_PED2, then ../shared/datasets/UCSDped2)")
    parser.add_argument("--clips", nargs="+", default=["Train015", "Train016"], help="held-out training clips")
    parser.add_argument("--speedups", type=int, nargs="+", default=[2, 3, 4])
    parser.add_argument("--draws", type=int, default=5, help="sped-up versions of each frame")
    args = parser.parse_args()
    folders = [c.path for c in ped2.training_clips(args.data) if c.name in args.clips]
    if len(folders) != len(args.clips):
        parser.error(f"not all of {args.clips} are among the training clips")
    print(f"{'model':<40}" + "".join(f"{'x' + str(s):>16}" for s in args.speedups) + "   (EER / AUC)")
    for path in args.models:
        model = PatchModel(path, device="cpu", threads=1)
        cells = []
        for speedup in args.speedups:
            r = speed_proxy(model, folders, speedup, draws=args.draws)
            cells.append("n/a" if r["eer"] is None else f"{r['eer']:.2%} / {r['auc']:.3f}")
        print(f"{path:<40}" + "".join(f"{c:>16}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
