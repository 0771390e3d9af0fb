"""Does `vad select` build a better small training set than chance? (README, "Representative frame selection")

    python benchmarks/research/selection_experiment.py --model streamer/models/ae_ped2.onnx --k 200 --seeds 0 1 2

For each seed, two arms choose k frames of the fitting clips (the training clips
less the config's validation clips):
  selected  k-means on the model's encoder latents, the frame nearest each centroid (`vad select`)
  random    k frames drawn uniformly (`vad select --random`)
and NRE is trained on each choice with the same config and seed (data.frames_file;
calibration and the speed proxy still use all training clips, in both arms
alike). Each model's proxy EER/AUC comes from its card; with --eval it is also
scored on the Ped2 test set (`vad eval ped2`). Nothing here picks anything by a
test result: the arms, k and seeds are fixed beforehand.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from streamer import config, ped2
from streamer.evaluation import evaluate_ped2
from streamer.footage import open_footage
from training.config import TrainConfig
from training.select import (
    cluster_choice,
    frame_descriptors,
    load_encoder,
    random_choice,
    write_selection,
)
from training.train import train_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="exported model whose encoder graph describes frames")
    parser.add_argument("--config", default="configs/nre_ped2.yaml", help="NRE training config, both arms")
    parser.add_argument("--data", help="UCSDped2 folder (default: $VAD_PED2, then ../shared/datasets/UCSDped2)")
    parser.add_argument("--k", type=int, default=200)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads")
    parser.add_argument("--eval", action="store_true", help="also score each model on the Ped2 test set")
    parser.add_argument("--out", type=Path, default=Path("runs/selection"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    base = config.load(args.config, TrainConfig, {"threads": args.threads, "data": {"root": args.data}})
    fitting = [c.path for c in ped2.training_clips(base.data.root) if c.name not in base.data.validation_clips]
    clips = open_footage(fitting)
    session, card = load_encoder(args.model, "cpu", args.threads)
    descriptors, refs = frame_descriptors(clips, session, card, progress=False)

    results = []
    for seed in args.seeds:
        for arm in ("selected", "random"):
            folder = args.out / f"{arm}_seed{seed}"
            if arm == "selected":
                chosen, labels = cluster_choice(descriptors, args.k, seed)
            else:
                chosen, labels = random_choice(len(refs), args.k, seed), None
            write_selection(
                refs, chosen, labels, folder, args.model if arm == "selected" else None, fitting, args.k, seed, 1
            )
            # the selection replaces the config's every-k-th-frame choice
            data = {"root": args.data, "frames_file": str(folder / "manifest.json"), "frame_step": 1}
            overrides = {"threads": args.threads, "seed": seed, "out": str(folder / "nre"), "data": data}
            cfg = config.load(args.config, TrainConfig, overrides)
            card_out = train_model(cfg, progress=False)
            row = {"arm": arm, "seed": seed, "proxy_eer": card_out.training["validation"]["eer"]}
            row["proxy_auc"] = card_out.training["validation"]["auc"]
            row["training_patches"] = card_out.training["training_patches"]
            if args.eval:
                report = evaluate_ped2(
                    folder / "nre.onnx", args.data, folder / "eval", "cpu", args.threads, progress=False
                )
                row.update(eer=report["eer"], auc=report["auc"], eer_normalized=report["eer_normalized"])
            results.append(row)
            logging.info("%s", row)
            (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")

    keys = (
        ["proxy_eer", "eer", "eer_normalized", "training_patches"] if args.eval else ["proxy_eer", "training_patches"]
    )
    print(f"k = {args.k} frames, seeds {args.seeds}: mean ± standard deviation (min-max)")
    print(f"{'arm':<10}" + "".join(f"{k:>36}" for k in keys))
    for arm in ("selected", "random"):
        rows = [r for r in results if r["arm"] == arm]
        cells = []
        for key in keys:
            v = np.array([r[key] for r in rows], float)
            cells.append(f"  {v.mean():.4g} ± {v.std():.2g} ({v.min():.4g}-{v.max():.4g})")
        print(f"{arm:<10}" + "".join(f"{c:>36}" for c in cells))


if __name__ == "__main__":
    main()
