"""Causal smoothing window chosen on training data: the speed proxy in alternating blocks; prints a table.

    python benchmarks/smoothing_window.py --model streamer/models/nre_ped2.onnx

The held-out training clips (the config's validation clips, Train015 and Train016)
alternate `--block` frames as they are with `--block` frames in which one moving
person is sped up x2 (training/validation.py). Each causal moving-mean window is
scored by the frame-level EER/AUC of telling the blocks apart: longer windows
average out noise but blur the starts and ends of the sped-up blocks.
"""

from __future__ import annotations

import argparse

from streamer import ped2
from streamer.model import PatchModel
from training.validation import smoothing_proxy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", help="UCSDped2 folder (default: $VAD_PED2, then ../shared/datasets/UCSDped2)")
    parser.add_argument("--clips", nargs="+", default=["Train015", "Train016"], help="held-out training clips")
    parser.add_argument("--blocks", type=int, nargs="+", default=[20, 30, 50], help="block lengths, frames")
    parser.add_argument("--windows", type=int, nargs="+", default=[1, 3, 5, 8, 10, 15, 20, 30])
    args = parser.parse_args()
    folders = [c.path for c in ped2.training_clips(args.data) if c.name in args.clips]
    model = PatchModel(args.model, device="cpu", threads=1)
    print(f"{'block':>6}" + "".join(f"{'w' + str(w):>14}" for w in args.windows) + "   (EER / AUC)")
    for block in args.blocks:
        results = smoothing_proxy(model, folders, args.windows, block=block)
        print(f"{block:>6}" + "".join(f"{r['eer']:>8.3f}/{r['auc']:.3f}" for r in results.values()))


if __name__ == "__main__":
    main()
