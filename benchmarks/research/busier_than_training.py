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

from streamer.footage import open_footage
from streamer.model import PatchModel
from streamer.ped2 import resolve_root
from streamer.scoring import passes_gate
from training.sampling import motion_energies
from training.validation import interleaved_folds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="exported model: its card gives the patch settings and gate")
    parser.add_argument("--data", help="UCSDped2 folder (default: $VAD_PED2, then ../shared/datasets/UCSDped2)")
    parser.add_argument("--folds", type=int, default=4)
    args = parser.parse_args()

    card = PatchModel(args.model, device="cpu", threads=1).card
    energies = motion_energies(open_footage([resolve_root(args.data)]), card.patch)
    moving = {name: passes_gate(energy, card.gate).sum(axis=1) for name, energy in energies.items()}
    print(f"gate-passing patches per frame (gate {card.gate and card.gate['motion_threshold']}), mean / max per clip:")
    print(", ".join(f"{n} {m.mean():.0f}/{m.max()}" for n, m in moving.items()))
    above, total = 0, 0
    for fold in interleaved_folds(list(moving), args.folds):
        limit = max(m.max() for n, m in moving.items() if n not in fold)
        busier = sum(int((moving[n] > limit).sum()) for n in fold)
        held = sum(len(moving[n]) for n in fold)
        above, total = above + busier, total + held
        print(f"fold {'+'.join(fold)}: busiest other frame {limit}, {busier} of {held} frames above")
    print(f"all folds: {above} of {total} unseen normal frames ({above / total:.2%}) busier than every frame fitted")


if __name__ == "__main__":
    main()
