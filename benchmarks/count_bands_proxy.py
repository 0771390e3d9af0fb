"""Frame scores corrected for how many patches move, on the cross-validated proxy's fold models.

    python benchmarks/count_bands_proxy.py configs/ae_ped2.yaml --models runs/cv_ae

An experiment, not yet part of the scorer (README, "The proxy's plateau"). The
mean of the 3 highest patch scores runs higher when more patches move, and on
unseen normal clips most false alarms come from crowded ones. This rescores
the fold models that `crossval_proxy.py` trained (global calibration, top-3,
frame by frame, no smoothing) three ways, each fitted on the fold's fitting
frames only: as the card scores them; minus a line in log(1 + moving
patches); and calibrated within `--bands` bands of the moving-patch count
(quantiles of the fitting frames; within a band, minus the band's median
frame score, over its 99th percentile less the median). Prints EER / AUC over
all folds and per fold.
"""

from __future__ import annotations

import argparse
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
from crossval_proxy import fold_scores, variant_cards

from streamer import config as config_io
from streamer.model import PatchModel
from streamer.scoring import aggregate, calibrated_frame, passes_gate
from training import data as training_data
from training.config import TrainConfig
from training.validation import roc_summary

WAYS = ("as the card scores", "minus a line in log(1 + moving patches)", "calibrated within count bands")


def frame_score(raw: np.ndarray, energy: np.ndarray, card) -> tuple[float, int]:
    """The card's frame score (no smoothing) and how many patches passed its gate."""
    active = passes_gate(energy, card.gate)
    return aggregate(calibrated_frame(raw[active], active, card.calibration), card.scoring), int(active.sum())


def run_fold(fold: list[str], cfg: TrainConfig, models: Path, bands: int) -> list[tuple[int, tuple[float, ...]]]:
    """(label, scores the three ways) of every proxy frame of the fold's clips."""
    model = PatchModel(models / f"{'+'.join(fold)}.onnx", device="cpu", threads=1)
    fitting, raw, samples = fold_scores(model, cfg, fold, speedup=2, draws=2)
    card = variant_cards(model.card, raw, fitting, ("global", 3, cfg.export.gate_max_hidden, 1), [0.99], cfg.export)[0]
    energy = fitting.energy.reshape(fitting.frames, -1)
    fit = np.array([frame_score(r, e, card) for r, e in zip(raw, energy)])
    slope, _ = np.polyfit(np.log1p(fit[:, 1]), fit[:, 0], 1)
    edges = np.quantile(fit[:, 1], np.arange(1, bands) / bands)
    band_of = np.digitize(fit[:, 1], edges)
    median = np.array([np.median(fit[band_of == b, 0]) for b in range(bands)])
    spread = np.array([np.quantile(fit[band_of == b, 0], 0.99) for b in range(bands)]) - median
    rows = []
    for clip in samples:
        for _, draw, sample_energy, sample_raw in clip:
            score, count = frame_score(sample_raw, sample_energy, card)
            band = np.digitize(count, edges)
            corrected = (score, score - slope * np.log1p(count), (score - median[band]) / spread[band])
            rows.append((0 if draw is None else 1, corrected))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config", help="the training config the fold models were trained with")
    parser.add_argument("--models", required=True, help="crossval_proxy.py's --out folder (its fold models)")
    parser.add_argument("--folds", type=int, default=4, help="as crossval_proxy.py was run")
    parser.add_argument("--bands", type=int, default=5, help="bands of the moving-patch count")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    cfg = config_io.load(args.config, TrainConfig)
    names = [name for name, _ in training_data.ped2_training_folders(cfg.data.root)]
    folds = [names[i :: args.folds] for i in range(args.folds)]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(partial(run_fold, cfg=cfg, models=Path(args.models), bands=args.bands), folds))
    print(f"{args.config}, fold models in {args.models}: x2 speed-up, 2 draws, frame by frame (EER / AUC)")
    for way, name in enumerate(WAYS):
        pooled_scores, pooled_labels, per_fold = [], [], []
        for rows in results:
            scores, labels = [s[way] for _, s in rows], [label for label, _ in rows]
            pooled_scores += scores
            pooled_labels += labels
            per_fold.append(f"{roc_summary(scores, labels)['eer']:.2%}")
        pooled = roc_summary(pooled_scores, pooled_labels)
        print(f"{name:<42}{pooled['eer']:>8.2%} / {pooled['auc']:.3f}   {' '.join(per_fold)}")


if __name__ == "__main__":
    main()
