"""An exported patch model: the ONNX graph plus the JSON model card beside it.

The graph maps a float32 batch of patches [N, C, S, S] in [0, 1] to raw patch
anomaly scores [N]. The card says how patches were made, how raw scores are
calibrated, and the default operating point. Anything missing, corrupt or
inconsistent is a `ModelError` at load time, never a crash later.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .patches import PatchSpec, patch_boxes, to_model_input
from .scoring import Calibration, CountBands, ScoringSettings

log = logging.getLogger(__name__)

CARD_FORMAT = 1
# The default model shipped inside the package (see README "Results").
BUNDLED_MODEL = Path(__file__).resolve().parent / "models" / "dec_ped2.onnx"


class ModelError(RuntimeError):
    """The model or its card is missing, corrupt or inconsistent."""


def card_path_for(onnx_path: str | os.PathLike) -> Path:
    return Path(onnx_path).with_suffix(".json")


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _optional_count(value) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ValueError(f"training_moving_max must be a count >= 0, got {value!r}")
    return value


def _gate(value) -> dict | None:
    """The card's cascade gate: None, or a mapping whose motion_threshold is a finite number."""
    if value is None:
        return None
    threshold = value.get("motion_threshold") if isinstance(value, dict) else None
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
        raise ValueError(f"gate must be null or have a finite motion_threshold, got {value!r}")
    return value


@dataclass
class ModelCard:
    method: str
    patch: PatchSpec
    calibration: Calibration
    scoring: ScoringSettings
    onnx_sha256: str
    score_description: str = "mean squared reconstruction error per patch"
    score_percentiles: dict = field(default_factory=dict)  # raw training-patch scores
    gate: dict | None = None  # {"motion_threshold": float, ...}: cascade first stage
    threshold_rule: str = ""
    training: dict = field(default_factory=dict)
    # What calibration, gate and threshold were fitted on (footage, frames, the share passing the threshold).
    calibrated_on: dict = field(default_factory=dict)
    parity: dict = field(default_factory=dict)
    commit: str = ""
    created: str = ""
    # {"file": "X.encoder.onnx", "sha256": ..., "latent": L}: patches -> latents, for `vad select`.
    encoder: dict | None = None
    count_bands: CountBands | None = None  # frame-score calibration by moving-patch count; older cards lack it
    # Most gate-passing patches in any training frame: busier live frames are beyond what the model was fitted on.
    training_moving_max: int | None = None  # older cards lack it

    def busier_than_training(self, moving: int) -> bool:
        """More gate-passing patches than any training frame had (False where the card does not record it)."""
        return self.training_moving_max is not None and moving > self.training_moving_max

    def to_dict(self) -> dict:
        return {
            "format": CARD_FORMAT,
            "method": self.method,
            "onnx_sha256": self.onnx_sha256,
            "input": "float32 patches [N, C, S, S] = uint8 pixels / 255",
            "output": "float32 raw patch scores [N], higher = more abnormal",
            "score_description": self.score_description,
            "patch": self.patch.to_dict(),
            "calibration": self.calibration.to_dict(),
            "score_percentiles": self.score_percentiles,
            "gate": self.gate,
            "count_bands": None if self.count_bands is None else self.count_bands.to_dict(),
            "training_moving_max": self.training_moving_max,
            "scoring": self.scoring.to_dict(),
            "threshold_rule": self.threshold_rule,
            "training": self.training,
            "calibrated_on": self.calibrated_on,
            "parity": self.parity,
            "commit": self.commit,
            "created": self.created,
            "encoder": self.encoder,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "ModelCard":
        if d.get("format") != CARD_FORMAT:
            raise ModelError(f"unsupported model card format {d.get('format')!r} (expected {CARD_FORMAT})")
        try:
            return cls(
                method=d["method"],
                patch=PatchSpec.from_dict(d["patch"]),
                calibration=Calibration.from_dict(d["calibration"]),
                scoring=ScoringSettings.from_dict(d["scoring"]),
                onnx_sha256=d["onnx_sha256"],
                score_description=d.get("score_description", ""),
                score_percentiles=d.get("score_percentiles", {}),
                gate=_gate(d.get("gate")),
                threshold_rule=d.get("threshold_rule", ""),
                training=d.get("training", {}),
                calibrated_on=d.get("calibrated_on", {}),
                parity=d.get("parity", {}),
                commit=d.get("commit", ""),
                created=d.get("created", ""),
                encoder=d.get("encoder"),
                count_bands=None if d.get("count_bands") is None else CountBands.from_dict(d["count_bands"]),
                training_moving_max=_optional_count(d.get("training_moving_max")),
            )
        except KeyError as e:
            raise ModelError(f"model card lacks the field {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            raise ModelError(f"invalid model card: {e}") from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ModelCard":
        path = Path(path)
        if not path.is_file():
            raise ModelError(f"model card not found: {path} (every model.onnx needs its model.json beside it)")
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ModelError(f"cannot read model card {path}: {e}") from None
        if not isinstance(data, dict):
            raise ModelError(f"model card {path} is not a JSON object")
        return cls.from_dict(data)

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    def check_geometry(self) -> None:
        """Per-position calibration must have one entry per grid position of the card's frame size."""
        if self.calibration.mode != "position":
            return
        if self.patch.frame_size is None:
            raise ModelError("per-position calibration needs patch.frame_size in the card")
        h, w = self.patch.frame_size
        positions = len(patch_boxes(h, w, self.patch.size, self.patch.stride))
        if len(self.calibration.loc) != positions:
            raise ModelError(
                f"card calibrates {len(self.calibration.loc)} positions but a {h}x{w} frame "
                f"has {positions} patches of {self.patch.size}px at stride {self.patch.stride}"
            )


def _import_onnxruntime():
    import onnxruntime as ort

    return ort


def nvidia_driver_present() -> bool:
    """Whether an NVIDIA driver is loaded (Linux); elsewhere onnxruntime is left to find out."""
    if sys.platform.startswith("linux"):
        return os.path.exists("/dev/nvidiactl") or os.path.exists("/proc/driver/nvidia/version")
    return True


def create_session(path: Path, device: str = "auto", threads: int = 0):
    """An onnxruntime session on CUDA when asked for or available and working, else on CPU.

    'auto' tries CUDA only where the CUDA provider is installed and a driver is
    present, so CPU machines with the GPU wheel start quietly. Returns
    (session, provider actually running).
    """
    ort = _import_onnxruntime()
    if device not in ("auto", "cuda", "cpu"):
        raise ModelError(f"device must be auto, cuda or cpu, got {device!r}")
    has_provider = "CUDAExecutionProvider" in ort.get_available_providers()
    if device == "cuda" and not has_provider:
        raise ModelError("device 'cuda' asked for, but this onnxruntime has no CUDA provider (install onnxruntime-gpu)")
    want_cuda = device == "cuda" or (device == "auto" and has_provider and nvidia_driver_present())
    if want_cuda and hasattr(ort, "preload_dlls") and importlib.util.find_spec("nvidia") is not None:
        ort.preload_dlls()  # CUDA/cuDNN from the nvidia-* wheels: pip install 'vad-stream[cuda]'
    options = ort.SessionOptions()
    options.log_severity_level = 3  # our own log line below says which provider runs
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Memory patterns are planned per input shape; with a batch size that changes from call to call they
    # fragment the memory arena, which then keeps growing for minutes (docs/benchmarks.md, "Scorer memory").
    options.enable_mem_pattern = False
    providers = (["CUDAExecutionProvider"] if want_cuda else []) + ["CPUExecutionProvider"]
    try:
        session = ort.InferenceSession(str(path), options, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types for bad files
        raise ModelError(f"cannot load ONNX model {path}: {e}") from None
    active = session.get_providers()[0]
    if want_cuda and active != "CUDAExecutionProvider":
        if device == "cuda":
            raise ModelError(
                "CUDA provider failed to start (needs CUDA and cuDNN libraries: pip install 'vad-stream[cuda]')"
            )
        log.info("CUDA provider present but failed to start (no GPU or libraries); scoring on CPU")
    return session, active


class PatchModel:
    """Raw patch scores from an exported model; batches big inputs to bound memory.

    Every batch is converted into one reused input buffer of `batch_size` patches, so
    scoring allocates no input arrays; `warm_up` scores a full batch once, so the
    runtime's memory arena takes the size of the largest batch up front rather than
    growing towards it as larger batches turn up.
    """

    def __init__(
        self,
        path: str | os.PathLike = BUNDLED_MODEL,
        device: str = "auto",
        threads: int = 0,
        batch_size: int = 4096,
    ):
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelError(f"model not found: {self.path}")
        self.card = ModelCard.load(card_path_for(self.path))
        digest = sha256_of(self.path)
        if digest != self.card.onnx_sha256:
            raise ModelError(
                f"{self.path} does not match its card (sha256 {digest[:12]}… vs {self.card.onnx_sha256[:12]}…): "
                "a corrupt file or a card from another export"
            )
        self.card.check_geometry()
        self.session, self.provider = create_session(self.path, device, threads)
        self.batch_size = batch_size
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelError(f"expected one input and one output, found {len(inputs)} and {len(outputs)}")
        spec = self.card.patch
        expected = [spec.channels, spec.size, spec.size]
        if list(inputs[0].shape[1:]) != expected:
            raise ModelError(f"model input shape {inputs[0].shape} does not fit the card's patches [N, {expected}]")
        self._shape = tuple(expected)
        self._input = np.empty((0, *self._shape), dtype=np.float32)
        log.info("loaded %s (%s) on %s", self.path.name, self.card.method, self.provider)

    def raw_scores(self, patches: np.ndarray) -> np.ndarray:
        """(N,) float32 raw scores of (N, C, S, S) uint8 patches."""
        if len(self._input) < self.batch_size:  # first use, or a larger batch_size set since
            self._input = np.empty((self.batch_size, *self._shape), dtype=np.float32)
        return session_scores(self.session, patches, self.batch_size, self._input)

    def warm_up(self) -> None:
        """Score one full batch (of zeros), so the memory a full batch needs is taken now."""
        self.raw_scores(np.zeros((self.batch_size, *self._shape), dtype=np.uint8))


def session_scores(
    session, patches: np.ndarray, batch_size: int = 4096, buffer: np.ndarray | None = None
) -> np.ndarray:
    """Run a scoring graph over uint8 patches in batches; (N,) float32.

    `buffer`: float32, room for `batch_size` patches; the model input is converted into it (reused from call
    to call) rather than into a new array per batch.
    """
    name = session.get_inputs()[0].name
    out = np.empty(len(patches), dtype=np.float32)
    for start in range(0, len(patches), batch_size):
        chunk = patches[start : start + batch_size]
        batch = to_model_input(chunk, None if buffer is None else buffer[: len(chunk)])
        out[start : start + len(chunk)] = session.run(None, {name: batch})[0].reshape(-1)
    return out
