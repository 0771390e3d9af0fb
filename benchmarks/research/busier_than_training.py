"""How often is new normal video busier than every training frame? (README, "Scenes busier than training")

    python benchmarks/research/busier_than_training.py --model streamer/models/nre_ped2.onnx

The scorer counts a frame as busier than training (`vad_frames_busier_than_training_total`)
when more of its patches pass the motion gate than in any training frame (the
card's `training_moving_max`). This reads the Ped2 training clips with the
card's patch settings and gate, splits them into folds as
benchmarks/research/crossval_proxy.py does (every `--folds`-th clip), and for each fold
counts its frames with more gate-passing patches than the busiest frame of the
other clips: how often the counter runs on normal video of the same scene that
the model has not seen. `vad eval ped2` reports the same count for the test set.
"""

from __future__ import annotations

import argparse

import numpy as np

from streamer.model import PatchModel
from streamer.scoring import passes_gate
from training import data as training_data
from training.validation import interleaved_folds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="exported model: its card gives the patch settings and gate")
    parser.add_argument("--data", help="UCSDped2 folder (default: $VAD_PED2, then ../shared/datasets/UCSDped2)")
    parser.add_argument("--folds", type=int, default=4)
    args = parser.parse_args()

    card = PatchModel(args.model, device="cpu", threads=1).card
    folders = training_data.ped2_training_folders(args.data)
    clips = training_data.read_clips(folders, card.patch)
    moving = passes_gate(clips.energy, card.gate).reshape(clips.frames, clips.positions).sum(axis=1)
    clip_of_frame = clips.clip_of_frame
    print(f"gate-passing patches per frame (gate {card.gate and card.gate['motion_threshold']}), mean / max per clip:")
    print(
        ", ".join(
            f"{n} {moving[clip_of_frame == i].mean():.0f}/{moving[clip_of_frame == i].max()}"
            for i, n in enumerate(clips.clips)
        )
    )
    names = [name for name, _ in folders]
    above, total = 0, 0
    for fold in interleaved_folds(names, args.folds):
        held = np.isin(clip_of_frame, [names.index(n) for n in fold])
        limit = moving[~held].max()
        busier = int((moving[held] > limit).sum())
        above, total = above + busier, total + int(held.sum())
        print(f"fold {'+'.join(fold)}: busiest other frame {limit}, {busier} of {held.sum()} frames above")
    print(f"all folds: {above} of {total} unseen normal frames ({above / total:.2%}) busier than every frame fitted")


if __name__ == "__main__":
    main()
