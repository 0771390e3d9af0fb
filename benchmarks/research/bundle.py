"""Bundle a selected candidate: copy its graph, encoder and card into streamer/models/ under a new name.

    python benchmarks/research/bundle.py runs/rounds/dec_mask_density/model.onnx dec_ped2 --float16

A candidate is trained by `vad train` (benchmarks/research/run_round.py); the
one the nested selection keeps is copied here as it is, so the bundled file is
the scored one. `--float16` stores its large weights as float16 (as `export:
weights: float16` would have at training time, `training.export.halve_weights`)
and checks the scores of the float16 graph against the float32 one on patches of
Ped2 training frames, in units of the card's calibration scale (the spread its
threshold is measured in); the card records the check. Score the bundled file
again with `vad eval ped2 --model streamer/models/NAME.onnx`: that is its figure.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np

from streamer.model import ModelCard, card_path_for, create_session, sha256_of
from streamer.patches import PatchExtractor
from streamer.sources import list_image_files
from training.export import FLOAT16_MIN_ELEMENTS, ExportError, halve_weights, store_weights_as_float16

MODELS = Path(__file__).resolve().parents[2] / "streamer" / "models"


def training_patches(card: ModelCard, data: Path, frames: int) -> np.ndarray:
    """Patches of the first `frames` frames of each Ped2 training clip, cut as the daemon cuts them."""
    extractor = PatchExtractor(card.patch)
    patches = []
    for clip in sorted((data / "Train").glob("Train[0-9][0-9][0-9]")):
        extractor.reset()
        for path in list_image_files(clip)[:frames]:
            patches.append(extractor.push(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)))
    return np.concatenate(patches)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="the candidate's .onnx (its .json card beside it)")
    parser.add_argument("name", help="bundled name: streamer/models/NAME.onnx")
    parser.add_argument("--float16", action="store_true", help="store large weights as float16")
    parser.add_argument(
        "--float16-prefix",
        default="",
        help="float16: only weights whose name starts with this (e.g. encoder.: the network, not a density bank, "
        "whose nearby codes' distances are differences of large squared norms)",
    )
    parser.add_argument("--tolerance", type=float, default=0.01, help="float16: largest score change, in scale units")
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/UCSDped2"), help="UCSDped2 folder")
    parser.add_argument("--frames", type=int, default=20, help="float16 check: frames per training clip")
    args = parser.parse_args(argv)

    card_data = json.loads(card_path_for(args.model).read_text())
    card = ModelCard.load(card_path_for(args.model))
    target = MODELS / f"{args.name}.onnx"
    shutil.copyfile(args.model, target)
    patches = training_patches(card, args.data, args.frames) if args.float16 else None
    if args.float16:
        scale = float(card.calibration.scale.min())  # "position" calibration: the tightest position
        session = create_session(target, device="cpu")[0]
        try:
            _, check = halve_weights(
                target,
                session,
                patches,
                card.calibration.quantile,
                args.tolerance,
                prefix=args.float16_prefix,
                spread=scale,
            )
        except ExportError as e:
            raise SystemExit(str(e)) from None
        card_data["parity"]["float16"] = {**check, "min_elements": FLOAT16_MIN_ELEMENTS, "prefix": args.float16_prefix}
    card_data["onnx_sha256"] = sha256_of(target)
    if card_data.get("encoder"):
        encoder = target.with_suffix(".encoder.onnx")
        shutil.copyfile(args.model.parent / card_data["encoder"]["file"], encoder)
        if args.float16:
            store_weights_as_float16(encoder)  # patches -> codes: no bank in it
        card_data["encoder"] = {**card_data["encoder"], "file": encoder.name, "sha256": sha256_of(encoder)}
    card_data["bundled_from"] = str(args.model)
    card_path_for(target).write_text(json.dumps(card_data, indent=1) + "\n")
    ModelCard.load(card_path_for(target))  # the card still reads
    print(f"bundled {args.model} as {target} ({target.stat().st_size / 1e6:.1f} MB)")
    if args.float16:
        check = card_data["parity"]["float16"]
        print(f"float16: {check['tensors']} tensors, max score change {check['max_calibrated_diff']:.2g} of the scale")
    return 0


if __name__ == "__main__":
    sys.exit(main())
