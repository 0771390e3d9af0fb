"""Cross-validated speed proxy: every training clip held out once, calibrated without it; prints a table.

    python benchmarks/research/crossval_proxy.py configs/ae_ped2.yaml --out runs/cv_ae

`vad train` reports the speed proxy (training/validation.py) on two held-out
clips, scored with a card whose calibration saw every training clip, the
held-out ones included. Here the training clips are split into `--folds`
folds; for each, a model is trained with the config on the other clips,
calibrated on those clips only, and the fold's clips are scored as they are
and with one person sped up (`--speedup`), or enlarged (`--zoom`: a mover
covering more ground, as a cart or a cyclist does; `--speedup 1 --zoom 1.5`
is the README's enlarged stand-in). Every training clip is held out once, so the
proxy's normal frames are all the training frames, each unseen by the model
and its calibration, as test frames are. Besides the EER it reports the
share of those normal frames whose smoothed score passes the card's
threshold: false alarms on new normal video (the threshold aims at 1 %), or
at other training-frame quantiles (`--threshold-quantiles`), which clips
they come from, and the threshold each fold fitted: how far it moves with
the clips it is fitted on.

Folds take every `--folds`-th clip (`--split interleaved`), or group the
clips by how crowded they are (`--split crowd`: most moving patches per frame
first), so that a fold's clips are busier, or quieter, than every clip the
model and its calibration saw: a test of scenes busier than training.

Calibration modes (`--calibrations`), frame scores (`--top-k`, 1 = the max),
motion gates (`--gates`), count bands (`--count-bands`, 0 = none) and
smoothing windows (`--windows`) are tried on the same raw patch scores:
comparing them costs no training.

The EER is frame by frame, before temporal smoothing. Smoothing is judged
apart (`validation.block_pairs`): each held-out clip alternates
`--blocks` frames as they are with as many sped-up frames, and the EER of the
causally smoothed scores says how well the window trades noise against blur
at the starts and ends of events that long.
"""

from __future__ import annotations

import argparse
import itertools
import logging
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from streamer import config as config_io
from streamer.footage import open_footage
from streamer.model import PatchModel
from streamer.ped2 import resolve_root
from streamer.scoring import smooth_series
from training.calibration import calibrate, collect
from training.config import TrainConfig
from training.sampling import motion_energies
from training.train import build_spec, train_model
from training.validation import (
    block_pairs,
    interleaved_folds,
    proxy_pairs,
    proxy_samples,
    proxy_scores_with,
    roc_summary,
)


def variant_cards(card, fitting, variant, threshold_quantiles, export):
    """The card re-fitted on the fitting clips' CalibrationSample for one variant, once per threshold quantile."""
    mode, top_k, gate, bands, window = variant
    settings = replace(card.scoring, aggregation="max" if top_k == 1 else "topk", top_k=top_k, window=window)
    cards = []
    for quantile in threshold_quantiles:
        result = calibrate(fitting, settings, mode, export.calibration_quantile, quantile, gate, bands)
        scoring = replace(settings, threshold=result.threshold)
        cards.append(
            replace(
                card, calibration=result.calibration, gate=result.gate, count_bands=result.count_bands, scoring=scoring
            )
        )
    return cards


def training_clips(cfg: TrainConfig) -> dict:
    """The Ped2 training clips by name."""
    return {clip.name: clip for clip in open_footage([resolve_root(cfg.data.root)])}


def crowd_order(cfg: TrainConfig) -> list[str]:
    """Training clips, most moving patches per frame first (motion energy >= the config's data.motion_threshold)."""
    clips = list(training_clips(cfg).values())
    energies = motion_energies(clips, build_spec(cfg, clips[0]))
    per_clip = {name: (energy >= cfg.data.motion_threshold).sum(axis=1).mean() for name, energy in energies.items()}
    print("moving patches per frame: " + ", ".join(f"{n} {m:.0f}" for n, m in sorted(per_clip.items())), flush=True)
    return sorted(per_clip, key=lambda name: -per_clip[name])


def fold_scores(model: PatchModel, cfg: TrainConfig, fold: list[str], speedup: int, draws: int, zoom: float = 1.0):
    """The fold model's raw patch scores on its fitting clips (every frame), and its proxy samples.

    Fitting clips: every training clip outside the fold. Proxy samples: the
    fold's own clips as they are and with one person sped up, every patch scored.
    """
    clips = training_clips(cfg)
    card = model.card
    fitting = collect([c for n, c in clips.items() if n not in fold], card.patch, model.raw_scores, card.scoring, None)
    folders = [clips[n].where for n in fold]
    samples = [list(s) for s in proxy_samples(model, folders, speedup, 48, list(range(draws)), gate=False, zoom=zoom)]
    return fitting, samples


@dataclass(frozen=True)
class Plan:
    """What every fold computes: the stand-in, and the scoring variants to try on it."""

    variants: list[tuple]  # (calibration, top-k, gate, count bands, window)
    threshold_quantiles: list[float]
    blocks: list[int]  # event lengths for the smoothed EER, frames
    speedup: int
    zoom: float
    draws: int
    reuse: bool  # score fold models already trained rather than training again


def run_fold(cfg: TrainConfig, fold: list[str], out: Path, plan: Plan) -> dict:
    """Train without the fold's clips (or reuse that model), then score them under each variant."""
    logging.basicConfig(level=logging.WARNING)
    name = "+".join(fold)
    cfg = replace(cfg, out=str(out / name), threads=1, data=replace(cfg.data, validation_clips=list(fold)))
    if not (plan.reuse and Path(cfg.out).with_suffix(".onnx").is_file()):
        train_model(cfg, progress=False)
    model = PatchModel(Path(cfg.out).with_suffix(".onnx"), device="cpu", threads=1)
    fitting, samples = fold_scores(model, cfg, fold, plan.speedup, plan.draws, plan.zoom)
    results = {}
    for variant in plan.variants:
        cards = variant_cards(model.card, fitting, variant, plan.threshold_quantiles, cfg.export)
        card = cards[0]  # the threshold changes alarms only, not the EER
        per_draw = proxy_scores_with(card, samples, plan.draws)
        alarms = {}  # clip -> (frames passing each quantile's threshold, frames)
        for clip_name, clip in zip(fold, per_draw[0]):  # the frames as they are: the same in every draw
            plain = smooth_series(np.array([clip[t][0] for t in sorted(clip)]), card.scoring)
            alarms[clip_name] = (np.array([int((plain > c.scoring.threshold).sum()) for c in cards]), len(plain))
        smoothed = [block_pairs(per_draw, b, card.scoring) for b in plan.blocks]
        results[variant] = (*proxy_pairs(per_draw), alarms, smoothed, card.scoring.threshold)
    return {"fold": name, "results": results}


def variant_label(variant) -> str:
    mode, top_k, gate, bands, window = variant
    return f"{mode} top-{top_k} gate {gate} bands {bands} window {window}"


def summary(scores, labels) -> str:
    result = roc_summary(scores, labels)
    return f"{result['eer']:.2%} / {result['auc']:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config", help="training config (configs/*.yaml)")
    parser.add_argument("--out", required=True, help="folder for the fold models")
    parser.add_argument("--data", help="UCSDped2 folder (default: the config's, then $VAD_PED2, ../shared/...)")
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument(
        "--split", choices=["interleaved", "crowd"], default="interleaved", help="how clips are put into folds"
    )
    parser.add_argument("--jobs", type=int, default=2, help="folds trained at once (one core each)")
    parser.add_argument("--speedup", type=int, default=2)
    parser.add_argument(
        "--zoom",
        type=float,
        default=1.0,
        help="also enlarge the stand-in this much (training/validation.proxy_samples)",
    )
    parser.add_argument("--draws", type=int, default=2, help="sped-up versions of each frame")
    parser.add_argument("--calibrations", nargs="+", default=["position"], choices=["position", "global"])
    parser.add_argument("--top-k", type=int, nargs="+", default=[3], help="frame score: mean of the k highest")
    parser.add_argument(
        "--gates", nargs="+", help="motion gates to try: export.gate_max_hidden values, or none (default: the config's)"
    )
    parser.add_argument(
        "--threshold-quantiles", type=float, nargs="+", help="false alarms at these (default: the config's)"
    )
    parser.add_argument(
        "--count-bands", type=int, nargs="+", help="bands of the moving-patch count, 0 = none (default: the config's)"
    )
    parser.add_argument("--windows", type=int, nargs="+", help="causal smoothing windows (default: the config's)")
    parser.add_argument(
        "--blocks", type=int, nargs="+", default=[20, 30, 50], help="event lengths for the smoothed EER, frames"
    )
    parser.add_argument("--reuse", action="store_true", help="reuse fold models already in --out (same config)")
    args = parser.parse_args()
    overrides = {"data": {"root": args.data}} if args.data else None
    cfg = config_io.load(args.config, TrainConfig, overrides)
    if args.split == "crowd":
        names = crowd_order(cfg)
        size = -(-len(names) // args.folds)
        folds = [names[i * size : (i + 1) * size] for i in range(args.folds)]
    else:
        names = list(training_clips(cfg))
        folds = interleaved_folds(names, args.folds)
    gates = [None if g == "none" else float(g) for g in args.gates] if args.gates else [cfg.export.gate_max_hidden]
    count_bands = args.count_bands if args.count_bands is not None else [cfg.export.count_bands]
    windows = args.windows or [cfg.export.scoring.window]
    variants = list(itertools.product(args.calibrations, args.top_k, gates, count_bands, windows))
    quantiles = args.threshold_quantiles or [cfg.export.threshold_quantile]
    out = Path(args.out)
    plan = Plan(variants, quantiles, args.blocks, args.speedup, args.zoom, args.draws, args.reuse)
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        jobs = [pool.submit(run_fold, cfg, fold, out, plan) for fold in folds]
        folds_done = []
        for job in jobs:
            folds_done.append(job.result())
            print(f"fold {folds_done[-1]['fold']} done", flush=True)
    stand_in = f"x{args.speedup} speed-up" + (f", enlarged x{args.zoom:g}" if args.zoom != 1 else "")
    print(f"\n{args.config}: {stand_in}, {args.draws} draws, {args.folds} folds (EER / AUC)")
    block_heads = "".join(f"{'blocks ' + str(b):>18}" for b in args.blocks)
    alarm_heads = "".join(f"{'alarms@' + format(q, 'g'):>14}" for q in quantiles)
    heads = f"{'calibration':<12}{'top-k':>6}{'gate':>6}{'bands':>6}{'window':>7}{'all folds':>18}"
    print(f"{heads}{block_heads}{alarm_heads}   per fold")
    clip_reports, threshold_reports = [], []
    for variant in variants:
        pooled_scores, pooled_labels, clip_alarms, per_fold, fold_thresholds = [], [], {}, [], []
        pooled_blocks = [([], []) for _ in args.blocks]
        for done in folds_done:
            scores, labels, by_clip, smoothed, threshold = done["results"][variant]
            passing = sum(a[0] for a, _ in by_clip.values()) / sum(n for _, n in by_clip.values())
            fold_thresholds.append(f"{done['fold']} {threshold:.2f} ({passing:.2%})")
            pooled_scores += scores
            pooled_labels += labels
            clip_alarms.update(by_clip)
            for (all_scores, all_labels), (s, lab) in zip(pooled_blocks, smoothed):
                all_scores += s
                all_labels += lab
            per_fold.append(f"{roc_summary(scores, labels)['eer']:.2%}")
        alarms = sum(a for a, _ in clip_alarms.values())
        normal = sum(n for _, n in clip_alarms.values())
        mode, top_k, gate, bands, window = variant
        print(
            f"{mode:<12}{top_k:>6}{str(gate):>6}{bands:>6}{window:>7}{summary(pooled_scores, pooled_labels):>18}"
            + "".join(f"{summary(s, lab):>18}" for s, lab in pooled_blocks)
            + "".join(f"{a / normal:>14.2%}" for a in alarms)
            + f"   {' '.join(per_fold)}"
        )
        clip_reports.append((variant, clip_alarms))
        threshold_reports.append((variant, fold_thresholds))
    # Where the false alarms come from: a few clips can hold most of them (e.g. crowds).
    print(f"\nfalse alarms by clip at the {format(quantiles[0], 'g')} threshold (frames passing / frames)")
    for variant, clip_alarms in clip_reports:
        ranked = sorted(clip_alarms.items(), key=lambda item: -item[1][0][0] / item[1][1])
        print(f"{variant_label(variant)}: " + ", ".join(f"{c} {a[0]}/{n}" for c, (a, n) in ranked))
    # How far the threshold moves with the training clips: each fold fits its own on 3/4 of them.
    print(
        f"\nthreshold fitted on each fold's fitting clips at the {format(quantiles[0], 'g')} quantile "
        "(share of the fold's normal frames passing it)"
    )
    for variant, fold_thresholds in threshold_reports:
        print(f"{variant_label(variant)}: " + ", ".join(fold_thresholds))


if __name__ == "__main__":
    main()
