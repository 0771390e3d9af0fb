"""`vad train METHOD --config FILE`: read normal clips, train, export, calibrate, validate."""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from streamer.model import ModelCard, PatchModel, card_path_for
from streamer.patches import PatchSpec

from . import data as training_data
from .autoencoder import train_autoencoder
from .config import TrainConfig
from .export import export_model
from .loops import seed_everything
from .nets import ReconstructionScore
from .nre import train_nre
from .validation import speed_proxy

log = logging.getLogger(__name__)


def build_spec(cfg: TrainConfig, first_folder) -> PatchSpec:
    """The patch spec, with the working frame size fixed to the training frames' size."""
    p = cfg.patches
    return PatchSpec(
        size=p.size,
        stride=p.stride,
        motion=p.motion,
        depth=p.depth,
        flow_scale=p.flow_scale,
        flow_max=p.flow_max,
        flow_bins=p.flow_bins,
        appearance=p.appearance,
        frame_size=training_data.frame_size_of(first_folder),
    )


def split_clips(cfg: TrainConfig, folders: list) -> tuple[list, list]:
    names = [name for name, _ in folders]
    missing = [n for n in cfg.data.validation_clips if n not in names]
    if missing:
        raise ValueError(f"validation clips {missing} are not among the training clips {names}")
    fitting = [f for f in folders if f[0] not in cfg.data.validation_clips]
    if not fitting:
        raise ValueError("every training clip is a validation clip: nothing left to fit on")
    return fitting, [f for f in folders if f[0] in cfg.data.validation_clips]


def train_model(cfg: TrainConfig, progress: bool = True) -> ModelCard:
    started = time.perf_counter()
    rng = seed_everything(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    folders = training_data.ped2_training_folders(cfg.data.root, cfg.data.train_clips)
    fitting, validation = split_clips(cfg, folders)
    spec = build_spec(cfg, folders[0][1])
    log.info("reading %d training clips (%d held out for validation), patches %s", len(folders), len(validation), spec)
    clips = training_data.read_clips(folders, spec, cfg.data.max_frames, progress)
    is_val = np.isin(np.array(clips.clips)[clips.clip_ids], [name for name, _ in validation])
    if cfg.data.frame_step < 1:
        raise ValueError(f"data.frame_step must be >= 1, got {cfg.data.frame_step}")
    on_step = clips.frame_ids % cfg.data.frame_step == 0  # calibration still sees every frame

    def pick(mask):
        return training_data.sample_patches(clips, mask, cfg.data.motion_threshold, cfg.data.static_fraction, rng)

    train_idx, val_idx = pick(~is_val & on_step), pick(is_val & on_step)
    train, val = clips.patches[train_idx], clips.patches[val_idx]
    log.info("training on %d patches, validating on %d", len(train), len(val))

    autoencoder, history = train_autoencoder(cfg.autoencoder, spec.channels, train, val, rng, progress)
    details = {"autoencoder_history": history}
    if cfg.method == "nre":
        autoencoder, nre_details = train_nre(cfg.nre, autoencoder, train, val, rng, cfg.seed, progress)
        details["nre"] = nre_details
    fit_seconds = time.perf_counter() - started

    training = {
        "dataset": "UCSD Ped2 training clips (normal only)",
        "fitting_clips": [name for name, _ in fitting],
        "validation_clips": [name for name, _ in validation],
        "frames": clips.frames,
        "training_patches": int(len(train)),
        "validation_patches": int(len(val)),
        "network": autoencoder.config,
        "config": asdict(cfg),
        "seconds": round(fit_seconds, 1),
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        **details,
    }
    out = Path(cfg.out).with_suffix(".onnx")
    export = cfg.export
    card = export_model(
        ReconstructionScore(autoencoder),
        out,
        method=cfg.method,
        spec=spec,
        calibration_data=clips,
        settings=export.scoring,
        training=training,
        calibration_mode=export.calibration,
        calibration_quantile=export.calibration_quantile,
        threshold_quantile=export.threshold_quantile,
        gate_max_hidden=export.gate_max_hidden,
        seed=cfg.seed,
    )
    if validation:
        proxy = speed_proxy(PatchModel(out, device="cpu"), [path for _, path in validation], seed=cfg.seed)
        if proxy["auc"] is None:
            log.warning("pseudo-anomaly validation skipped: nothing moves in the validation clips")
        else:
            log.info(
                "pseudo-anomaly validation (x%d speed-up): EER %.3f, AUC %.3f",
                proxy["speedup"],
                proxy["eer"],
                proxy["auc"],
            )
        card.training["validation"] = proxy
        card.save(card_path_for(out))
    log.info("done in %.0f s: %s", time.perf_counter() - started, out)
    return card
