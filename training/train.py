"""`vad train METHOD --config FILE [--source ...]`: sample normal footage, train, export, calibrate, validate.

The footage is read three times, frame by frame, and never held: a bounded
sample of patches to fit on (training/sampling.py), every frame for the
calibration and threshold (training/calibration.py), and the validation
frames for the speed proxy (training/validation.py). Peak memory is set by
the config's sample bounds, not by the length of the footage.
"""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from streamer import ped2
from streamer.footage import Clip, open_footage, recordings_beside, redact
from streamer.model import ModelCard, PatchModel, card_path_for
from streamer.patches import PatchSpec
from streamer.sources import SourceError

from . import sampling
from .autoencoder import train_autoencoder
from .config import TrainConfig
from .crossmodal import train_crossmodal
from .dec import CentroidDistance, initial_centroids, refine
from .density import density_scorer
from .export import export_model
from .ics import train_ics
from .loops import reproducible
from .nets import ReconstructionScore
from .nre import train_nre
from .sdae import SDAEEncoder, load_sdae, save_sdae, train_sdae
from .validation import speed_proxy

log = logging.getLogger(__name__)


def build_spec(cfg: TrainConfig, first_clip: Clip | None) -> PatchSpec:
    """The config's patch spec with its working frame size fixed: the configured one, else the footage's."""
    if cfg.patches.frame_size:
        return cfg.patches
    first = next(iter(first_clip.source), None)
    if first is None:
        raise SourceError(f"no readable frame in {first_clip.where}")
    return replace(cfg.patches, frame_size=first.image.shape)


def open_training_footage(cfg: TrainConfig, progress: bool) -> tuple[list[str], list[Clip]]:
    """(the footage as the card records it, its clips): data.sources, else the Ped2 training clips of data.root."""
    targets = cfg.data.sources or [str(ped2.resolve_root(cfg.data.root))]
    clips = open_footage(targets, recordings_beside(cfg.out), cfg.data.duration, progress)
    return [redact(t) for t in targets], sampling.chosen_clips(clips, cfg.data.train_clips)


@dataclass
class Trained:
    scorer: nn.Module  # patches -> raw scores, the exported graph
    encoder: nn.Module  # patches -> latents, exported beside it for `vad select`
    network: dict
    details: dict
    score_description: str
    # ONNX against PyTorch, relative to the largest score. Distances between codes magnify the encoder's float32
    # rounding (onnxruntime's and PyTorch's convolutions round differently) by the code's size over the distance.
    parity_tolerance: float = 1e-5


RECONSTRUCTION = "mean squared reconstruction error per patch"


def fit_method(
    cfg: TrainConfig, channels: int, train: np.ndarray, val: np.ndarray, rng: np.random.Generator, progress: bool
) -> Trained:
    """Train cfg.method's networks on the training patches (val: held-out normal patches)."""
    if cfg.method in ("sdae_kmeans", "dec"):
        return fit_centroid_method(cfg, channels, train, val, rng, progress)
    if cfg.method == "crossmodal":
        spec = cfg.patches
        if not spec.appearance or spec.appearance_mask or spec.motion not in ("flow", "flowbins"):
            raise ValueError("crossmodal needs patches with the plain appearance channel and flow motion channels")
        score, history = train_crossmodal(cfg.autoencoder, channels, train, val, rng, progress)
        description = "mean squared error of the motion channels predicted from the appearance channel"
        return Trained(score, score.encoder, score.network.config, {"crossmodal_history": history}, description)
    autoencoder, history = train_autoencoder(cfg.autoencoder, channels, train, val, rng, progress)
    details = {"autoencoder_history": history}
    if cfg.method == "ics":
        net, details["ics"] = train_ics(cfg.ics, autoencoder, train, val, rng, progress)
        network = {
            "splitting_autoencoder": autoencoder.config,
            "classifier": "autoencoder encoder -> z -> dense (the logit of a sigmoid classifier)",
        }
        return Trained(net, net.features, network, details, "log-odds of atypicality head(z) of the ICS classifier")
    if cfg.method == "nre":
        autoencoder, details["nre"] = train_nre(cfg.nre, autoencoder, train, val, rng, cfg.seed, progress)
    return Trained(ReconstructionScore(autoencoder), autoencoder.encoder, autoencoder.config, details, RECONSTRUCTION)


def fit_centroid_method(
    cfg: TrainConfig, channels: int, train: np.ndarray, val: np.ndarray, rng: np.random.Generator, progress: bool
) -> Trained:
    """SDAE, k-means++ on its codes, and for DEC the KL refinement; scored by distance to the nearest centroid."""
    inputs = channels * cfg.patches.size**2
    if cfg.sdae.checkpoint:
        sdae, history = load_sdae(cfg.sdae.checkpoint, inputs, cfg.sdae)
        log.info("reusing the SDAE of %s", cfg.sdae.checkpoint)
    else:
        sdae, history = train_sdae(cfg.sdae, inputs, train, val, rng, progress)
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        save_sdae(sdae, history, Path(cfg.out).with_suffix(".sdae.npz"))
    encoder = SDAEEncoder(sdae)
    centres, kmeans_details = initial_centroids(encoder, train, cfg.dec.clusters, cfg.seed)
    details = {"sdae_history": history, "sdae_checkpoint": cfg.sdae.checkpoint, "kmeans": kmeans_details}
    centroids, which = torch.from_numpy(centres), "k-means"
    if cfg.method == "dec":
        centroids, details["dec"] = refine(cfg.dec, encoder, centres, train, val, rng, progress)
        which = "DEC-refined"
    network = {"sdae": sdae.config, "clusters": len(centres)}
    description = f"Euclidean distance from the patch's SDAE bottleneck code to the nearest {which} centroid"
    return Trained(CentroidDistance(encoder, centroids), encoder, network, details, description)


def with_density(cfg: TrainConfig, trained: Trained, train: np.ndarray, val: np.ndarray, rng) -> Trained:
    """The method's networks scored by density in its encoder's space (alone, or fused with its own score)."""
    fused = cfg.density.score == "fused"
    scorer, details = density_scorer(
        trained.scorer, trained.encoder, train, val, cfg.density.bank, cfg.density.neighbours, fused, rng
    )
    density = (
        f"mean squared distance of the patch's code to its {cfg.density.neighbours} nearest "
        f"of {details['bank']} normal training codes"
    )
    description = f"{trained.score_description} / its spread + {density} / its spread" if fused else density
    return replace(
        trained,
        scorer=scorer,
        details={**trained.details, "density": details},
        score_description=description,
        parity_tolerance=1e-4,
    )


def train_model(cfg: TrainConfig, progress: bool = True) -> ModelCard:
    started = time.perf_counter()
    rng = reproducible(cfg.seed, cfg.threads)
    footage, clips = open_training_footage(cfg, progress)
    spec = build_spec(cfg, clips[0])
    log.info("footage: %d clips from %s; patches %s", len(clips), ", ".join(footage), spec)
    sample = sampling.sample_patches(clips, spec, cfg.data, cfg.seed, progress)

    trained = fit_method(cfg, spec.channels, sample.fitting, sample.validation, rng, progress)
    if cfg.density.score != "own":
        trained = with_density(cfg, trained, sample.fitting, sample.validation, rng)
    fit_seconds = time.perf_counter() - started

    roles = sampling.FrameRoles(cfg.data, [clip.name for clip in clips])
    validation_clips = sorted({clip.name for clip in clips if clip.name in cfg.data.validation_clips})
    training = {
        "footage": footage,
        "clips": [clip.name for clip in clips],
        "fitting_clips": [clip.name for clip in clips if clip.name not in validation_clips],
        "validation_clips": validation_clips,
        **sample.facts,
        "training_patches": int(len(sample.fitting)),
        "validation_patches": int(len(sample.validation)),
        "network": trained.network,
        "config": asdict(cfg),
        "seconds": round(fit_seconds, 1),
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        # what the network depends on: the same seed, threads and CPU kind give the same bytes
        "seed": cfg.seed,
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        **trained.details,
    }
    out = Path(cfg.out).with_suffix(".onnx")
    export = cfg.export
    card = export_model(
        trained.scorer,
        out,
        method=cfg.method,
        spec=spec,
        footage=clips,
        sample_patches=sample.fitting,
        settings=export.scoring,
        training=training,
        calibration_mode=export.calibration,
        calibration_quantile=export.calibration_quantile,
        threshold_quantile=export.threshold_quantile,
        gate_max_hidden=export.gate_max_hidden,
        count_bands=export.count_bands,
        calibration_frames=export.calibration_frames,
        frames_per_clip=cfg.data.max_frames,
        score_description=trained.score_description,
        encoder=trained.encoder,
        seed=cfg.seed,
        threads=torch.get_num_threads(),
        weights=export.weights,
        float16_tolerance=export.float16_tolerance,
        parity_tolerance=trained.parity_tolerance,
        progress=progress,
    )
    del sample, trained
    if card.training["validation_frames"]:
        segments = sampling.validation_segments(clips, cfg.data, roles, progress)
        proxy = speed_proxy(PatchModel(out, device="cpu", threads=torch.get_num_threads()), segments, seed=cfg.seed)
        if proxy["auc"] is None:
            log.warning("pseudo-anomaly validation skipped: nothing moves in the validation frames")
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
