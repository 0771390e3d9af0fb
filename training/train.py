"""`vad train METHOD --config FILE`: read normal clips, train, export, calibrate, validate."""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from streamer.model import ModelCard, PatchModel, card_path_for
from streamer.patches import PatchSpec

from . import data as training_data
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
from .select import read_manifest
from .validation import speed_proxy

log = logging.getLogger(__name__)


def build_spec(cfg: TrainConfig, first_folder) -> PatchSpec:
    """The config's patch spec with its working frame size fixed: the configured one, else the training frames'."""
    return replace(cfg.patches, frame_size=cfg.patches.frame_size or training_data.frame_size_of(first_folder))


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
    folders = training_data.ped2_training_folders(cfg.data.root, cfg.data.train_clips)
    fitting, validation = training_data.split_clips(folders, cfg.data.validation_clips)
    spec = build_spec(cfg, folders[0][1])
    log.info("reading %d training clips (%d held out for validation), patches %s", len(folders), len(validation), spec)
    clips = training_data.read_clips(folders, spec, cfg.data.max_frames, progress)
    is_val = np.isin(np.array(clips.clips)[clips.clip_ids], [name for name, _ in validation])
    on_step = clips.frame_ids % cfg.data.frame_step == 0  # calibration still sees every frame

    def pick(mask):
        return training_data.sample_patches(clips, mask, cfg.data.motion_threshold, cfg.data.static_fraction, rng)

    fitting_mask = ~is_val & on_step
    if cfg.data.frames_file:
        fitting_mask = ~is_val & training_data.frame_mask(clips, read_manifest(cfg.data.frames_file))
        log.info(
            "fitting on the %d frames listed in %s", len(np.unique(clips.frame_ids[fitting_mask])), cfg.data.frames_file
        )
    train_idx, val_idx = pick(fitting_mask), pick(is_val & on_step)
    train, val = clips.patches[train_idx], clips.patches[val_idx]
    log.info("training on %d patches, validating on %d", len(train), len(val))

    trained = fit_method(cfg, spec.channels, train, val, rng, progress)
    if cfg.density.score != "own":
        trained = with_density(cfg, trained, train, val, rng)
    fit_seconds = time.perf_counter() - started

    training = {
        "dataset": "UCSD Ped2 training clips (normal only)",
        "fitting_clips": [name for name, _ in fitting],
        "validation_clips": [name for name, _ in validation],
        "frames": clips.frames,
        "fitting_frames": int(len(np.unique(clips.frame_ids[fitting_mask]))),
        "training_patches": int(len(train)),
        "validation_patches": int(len(val)),
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
        calibration_data=clips,
        settings=export.scoring,
        training=training,
        calibration_mode=export.calibration,
        calibration_quantile=export.calibration_quantile,
        threshold_quantile=export.threshold_quantile,
        gate_max_hidden=export.gate_max_hidden,
        count_bands=export.count_bands,
        score_description=trained.score_description,
        encoder=trained.encoder,
        seed=cfg.seed,
        threads=torch.get_num_threads(),
        weights=export.weights,
        float16_tolerance=export.float16_tolerance,
        parity_tolerance=trained.parity_tolerance,
    )
    if validation:
        model = PatchModel(out, device="cpu", threads=torch.get_num_threads())
        proxy = speed_proxy(model, [path for _, path in validation], seed=cfg.seed)
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
