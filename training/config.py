"""Training configuration (configs/*.yaml), validated by streamer.config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from streamer.scoring import ScoringSettings


@dataclass
class DataConfig:
    root: str | None = None  # Ped2 folder; None: $VAD_PED2, then ../shared/datasets/UCSDped2
    train_clips: list[str] | None = None  # None: every Train clip
    # Held out from fitting: early stopping and pseudo-anomaly validation look only at these.
    validation_clips: list[str] = field(default_factory=lambda: ["Train015", "Train016"])
    motion_threshold: float = 12.0  # mean motion channel (0-255) marking a patch as "moving"
    static_fraction: float = 0.05  # share of the static patches kept for training
    frame_step: int = 1  # train on every k-th frame (neighbouring frames at 10 fps are near-duplicates)
    max_frames: int | None = None  # per clip; for quick runs and tests


@dataclass
class PatchConfig:
    size: int = 30
    stride: int = 15
    motion: Literal["none", "diff", "flow", "flowbins", "stack"] = "flow"
    depth: int = 2
    flow_scale: float = 0.75
    flow_max: float = 8.0
    flow_bins: tuple[float, ...] = (0.5, 1.5, 3.0)
    appearance: bool = True


@dataclass
class AutoencoderConfig:
    widths: tuple[int, int, int] = (16, 32, 64)
    latent: int = 64
    epochs: int = 10
    batch_size: int = 256
    lr: float = 1e-3


@dataclass
class NREConfig:
    clusters: int = 32  # k-means clusters of A's latents; bounds the neighbour search
    neighbours: int = 1  # T: nearest neighbours X0 and far samples X_inf per patch
    far_fraction: float = 0.5  # "far" clusters: this share of clusters whose centres are least similar
    lambdas: tuple[float, float, float] = (0.6, 0.4, 0.0)  # paper presets: (0.6, 0.4, 0) and (0.6, 0.2, 0.2)
    epochs: int = 5
    batch_size: int = 256
    lr: float = 1e-4


@dataclass
class ExportConfig:
    calibration: Literal["position", "global"] = "position"
    calibration_quantile: float = 0.99
    threshold_quantile: float = 0.99
    gate_max_hidden: float | None = None  # None: no motion gate; else see training.export.fit_gate
    scoring: ScoringSettings = field(default_factory=ScoringSettings)


@dataclass
class TrainConfig:
    method: Literal["ae", "nre"]
    out: str = "runs/model"  # writes OUT.onnx and OUT.json
    seed: int = 0
    threads: int = 0  # torch threads; 0 = all cores
    data: DataConfig = field(default_factory=DataConfig)
    patches: PatchConfig = field(default_factory=PatchConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    nre: NREConfig = field(default_factory=NREConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
