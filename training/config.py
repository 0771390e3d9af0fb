"""Training configuration (configs/*.yaml), validated by streamer.config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from streamer.patches import PatchSpec
from streamer.scoring import ScoringSettings


@dataclass
class DataConfig:
    # The footage (training/sampling.py, streamer/footage.py): video files, folders of frames or of videos, the Ped2
    # layout, live URLs (recorded for `duration` seconds first). Empty: the Ped2 training clips of `root`.
    sources: list[str] = field(default_factory=list)
    duration: float | None = None  # seconds recorded from each live source
    root: str | None = None  # Ped2 folder when no sources; None: $VAD_PED2, then ../shared/datasets/UCSDped2
    train_clips: list[str] | None = None  # None: every clip
    # Held out from fitting: early stopping and pseudo-anomaly validation look only at these clips ...
    validation_clips: list[str] = field(default_factory=list)
    # ... or, when none are named, at this share of the footage: blocks of `validation_block` frames spread over it.
    validation_share: float = 0.1
    validation_block: int = 200
    motion_threshold: float = 12.0  # mean motion channel (0-255) marking a patch as "moving"
    static_fraction: float = 0.05  # share of the static patches offered to the sample
    # The sample's bound: at most this many moving and this many static patches are kept for fitting, as many
    # again for validation; longer footage is sampled evenly (seeded). About 2.7 kB per patch of 3 channels.
    max_moving_patches: int = 250_000
    max_static_patches: int = 50_000
    frame_step: int = 1  # train on every k-th frame (neighbouring frames at 10 fps are near-duplicates)
    max_frames: int | None = None  # per clip; for quick runs and tests
    # A `vad select` manifest: fit on the patches of the frames it lists only (validation frames stay whole).
    frames_file: str | None = None

    def __post_init__(self):
        if self.frame_step < 1 or self.validation_block < 1 or (self.max_frames is not None and self.max_frames < 1):
            raise ValueError(
                f"frame_step, validation_block and max_frames must be >= 1, got {self.frame_step}, "
                f"{self.validation_block}, {self.max_frames}"
            )
        if not 0 <= self.validation_share < 1 or not 0 <= self.static_fraction <= 1 or self.motion_threshold < 0:
            raise ValueError("validation_share must be in [0, 1), static_fraction in [0, 1] and motion_threshold >= 0")
        if self.max_moving_patches < 1 or self.max_static_patches < 0:
            raise ValueError("max_moving_patches must be >= 1 and max_static_patches >= 0")
        if self.duration is not None and self.duration <= 0:
            raise ValueError(f"duration must be > 0 seconds, got {self.duration}")
        if self.frames_file and self.frame_step != 1:
            raise ValueError("frames_file and frame_step both choose the training frames: set only one")


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
class SDAEConfig:
    """Stacked denoising autoencoder d-h1-h2-h3-b (Xie et al.: d-500-500-2000-10), fully connected."""

    hidden: tuple[int, int, int] = (500, 500, 2000)
    bottleneck: int = 10  # b
    dropout: float = 0.2  # input corruption in pre-training and fine-tuning
    pretrain_epochs: int = 2  # per layer, greedy layer-wise
    finetune_epochs: int = 4  # end to end
    batch_size: int = 256
    lr: float = 1e-3  # Adam, both stages
    # OUT.sdae.npz of an earlier sdae_kmeans or dec run with the same data and layers: reuse that SDAE
    # instead of training one (DEC then refines exactly the baseline's network).
    checkpoint: str | None = None

    def __post_init__(self):
        if min(self.hidden) < 1 or self.bottleneck < 1:
            raise ValueError(f"layer widths must be >= 1, got {list(self.hidden)} and bottleneck {self.bottleneck}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


@dataclass
class DECConfig:
    """DEC refinement of the SDAE bottleneck (also K of the SDAE + k-means baseline)."""

    clusters: int = 10  # K
    lr: float = 0.01  # SGD
    momentum: float = 0.9
    batch_size: int = 256
    update_interval: int = 200  # iterations between target refreshes
    tol: float = 0.001  # stop when fewer than this share of assignments change between refreshes
    max_epochs: int = 3

    def __post_init__(self):
        if self.clusters < 2:
            raise ValueError(f"DEC needs at least 2 clusters, got {self.clusters}")
        if self.update_interval < 1 or self.max_epochs < 1:
            raise ValueError("update_interval and max_epochs must be >= 1")


@dataclass
class ICSConfig:
    """Intra-class splitting: the autoencoder section trains the splitting AE."""

    atypical_fraction: float = 0.1  # rho: lowest-SSIM share labelled atypical
    ssim_window: int = 7  # gaussian window (sigma 1.5) of the SSIM
    epochs: int = 5  # each batch trains the pair step or the classification step, in turn
    batch_size: int = 256
    lr: float = 1e-4  # Adam

    def __post_init__(self):
        if not 0 < self.atypical_fraction < 1:
            raise ValueError(f"atypical_fraction must be in (0, 1), got {self.atypical_fraction}")
        if self.ssim_window < 3 or self.ssim_window % 2 == 0:
            raise ValueError(f"ssim_window must be odd and >= 3, got {self.ssim_window}")


@dataclass
class DensityConfig:
    """The exported score: the method's own, or the distance of a patch's code to normal codes (training/density.py)."""

    score: Literal["own", "density", "fused"] = "own"  # fused: own and density, each over its spread, summed
    bank: int = 4096  # training codes kept (greedy k-centre coreset), a constant in the graph
    neighbours: int = 1  # the density is the mean distance to this many nearest bank codes

    def __post_init__(self):
        if self.bank < 1 or not 1 <= self.neighbours <= self.bank:
            raise ValueError(f"density needs bank >= 1 and 1 <= neighbours <= bank, got {self.bank}, {self.neighbours}")


@dataclass
class ExportConfig:
    calibration: Literal["position", "global"] = "position"
    calibration_quantile: float = 0.99
    threshold_quantile: float = 0.99
    gate_max_hidden: float | None = None  # None: no motion gate; else see training.export.fit_gate
    count_bands: int = 0  # 0: none; else frame scores calibrated in up to this many bands of the moving-patch count
    # The calibration sample's bound: patch scores of at most this many frames (8 bytes per patch); longer
    # footage is sampled evenly in runs of consecutive frames (seeded).
    calibration_frames: int = 20_000
    scoring: ScoringSettings = field(default_factory=ScoringSettings)
    # float16: the graphs store their weights at half the size, cast back to float32 inside the graph. The export
    # fails if a patch score on real patches moves by more than float16_tolerance of the normal score spread.
    weights: Literal["float32", "float16"] = "float32"
    float16_tolerance: float = 0.01

    def __post_init__(self):
        if self.count_bands < 0:
            raise ValueError(f"count_bands must be >= 0, got {self.count_bands}")
        if self.calibration_frames < 1000:
            raise ValueError(f"calibration_frames must be >= 1000, got {self.calibration_frames}")
        if not (0 < self.calibration_quantile < 1 and 0 < self.threshold_quantile < 1):
            raise ValueError("calibration_quantile and threshold_quantile must be in (0, 1)")
        if self.gate_max_hidden is not None and not 0 < self.gate_max_hidden < 1:
            raise ValueError(f"gate_max_hidden must be null or in (0, 1), got {self.gate_max_hidden}")
        if not self.float16_tolerance > 0:
            raise ValueError(f"float16_tolerance must be > 0, got {self.float16_tolerance}")


@dataclass
class TrainConfig:
    method: Literal["ae", "nre", "sdae_kmeans", "dec", "ics", "crossmodal"]
    out: str = "runs/model"  # writes OUT.onnx and OUT.json
    seed: int = 0
    # Torch threads. Fixed, so that a seed gives the same network on every machine with the same kind of
    # CPU; 0 = all cores (faster on big machines, but the network then depends on their count).
    threads: int = 1
    data: DataConfig = field(default_factory=DataConfig)
    patches: PatchSpec = field(default_factory=PatchSpec)  # frame_size: null takes the training frames' size
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    nre: NREConfig = field(default_factory=NREConfig)
    sdae: SDAEConfig = field(default_factory=SDAEConfig)
    dec: DECConfig = field(default_factory=DECConfig)
    ics: ICSConfig = field(default_factory=ICSConfig)
    density: DensityConfig = field(default_factory=DensityConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
