"""Shared fixtures: a small synthetic dataset in the Ped2 layout and a tiny model trained on it."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from streamer import ped2

REPO = Path(__file__).resolve().parent.parent


def ped2_root() -> Path | None:
    """The real UCSD Ped2, or None (tests that need it skip with the reason)."""
    try:
        return ped2.resolve_root(os.environ.get(ped2.DEFAULT_ROOT_ENV))
    except Exception:
        return None


needs_ped2 = pytest.mark.skipif(
    ped2_root() is None,
    reason="UCSD Ped2 not found (set $VAD_PED2 or put it at ../shared/datasets/UCSDped2)",
)


def synthetic_frames(count: int, speed: int, seed: int, size=(60, 90)) -> list[np.ndarray]:
    """A textured static background with two squares moving right: 2 px/frame, and `speed` px/frame."""
    rng = np.random.default_rng(seed)
    h, w = size
    background = cv2.GaussianBlur(rng.integers(60, 200, size, dtype=np.uint8), (5, 5), 0)
    frames = []
    for t in range(count):
        frame = background.copy()
        x1 = (5 + 2 * t) % (w - 12)
        x2 = (20 + speed * t) % (w - 12)
        frame[10:22, x1 : x1 + 12] = 30
        frame[35:47, x2 : x2 + 12] = 230
        frames.append(frame)
    return frames


def write_clip(folder: Path, frames: list[np.ndarray], suffix: str = ".png") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames, start=1):
        cv2.imwrite(str(folder / f"{i:03d}{suffix}"), frame)


@pytest.fixture(scope="session")
def synthetic_ped2(tmp_path_factory) -> Path:
    """Ped2-shaped data: 3 normal training clips; 2 test clips whose second half has a fast mover."""
    root = tmp_path_factory.mktemp("ped2") / "UCSDped2"
    for n in range(1, 4):
        write_clip(root / "Train" / f"Train{n:03d}", synthetic_frames(20, speed=2, seed=n))
    for n in range(1, 3):
        frames = synthetic_frames(10, speed=2, seed=10 + n) + synthetic_frames(10, speed=5, seed=10 + n)
        write_clip(root / "Test" / f"Test{n:03d}", frames)
    (root / "Test" / "UCSDped2.m").write_text(
        "TestVideoFile = {};\nTestVideoFile{end+1}.gt_frame = [11:20];\nTestVideoFile{end+1}.gt_frame = [11:20];\n"
    )
    return root


TINY_CONFIG = """
method: ae
seed: 0
threads: 1
data:
  validation_clips: [Train003]
  motion_threshold: 4.0
  static_fraction: 0.5
autoencoder: {widths: [8, 16, 16], latent: 8, epochs: 6, batch_size: 64, lr: 0.003}
nre: {clusters: 3, epochs: 1, batch_size: 64}
export:
  gate_max_hidden: null
  scoring: {smoothing: mean, window: 2}
"""


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "tiny.yaml"
    path.write_text(TINY_CONFIG)
    return path


@pytest.fixture(scope="session")
def tiny_model(synthetic_ped2, tiny_config, tmp_path_factory) -> Path:
    """A tiny autoencoder trained on the synthetic clips and exported with its card."""
    from streamer import config
    from training.config import TrainConfig
    from training.train import train_model

    out = tmp_path_factory.mktemp("model") / "tiny"
    cfg = config.load(tiny_config, TrainConfig, {"data": {"root": str(synthetic_ped2)}, "out": str(out)})
    train_model(cfg, progress=False)
    return out.with_suffix(".onnx")


@pytest.fixture(scope="session")
def banded_model(tiny_model, tmp_path_factory) -> Path:
    """The tiny model behind a motion gate, with frame scores calibrated in two bands of the gate-passing count.

    Its card also claims no training frame had more than 10 gate-passing patches.
    """
    import json
    import shutil

    from streamer.model import card_path_for

    out = tmp_path_factory.mktemp("banded") / "banded.onnx"
    shutil.copy(tiny_model, out)
    card = json.loads(card_path_for(tiny_model).read_text())
    card["gate"] = {"motion_threshold": 1.0}
    card["count_bands"] = {"quantile": 0.99, "edges": [10.0], "loc": [0.2, 0.6], "scale": [0.5, 1.5]}
    card["training_moving_max"] = 10  # test frames with more moving patches count as busier than training
    card_path_for(out).write_text(json.dumps(card))
    return out
