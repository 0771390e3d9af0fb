"""What `vad train` needs beyond its config's schema: checked by `vad config check` and at the start of training.

Like the pipeline's checks it only looks (nothing is created or written), and it
finds clips with the functions training itself uses, so both fail on the same
configs with the same messages.
"""

from __future__ import annotations

import os
from pathlib import Path

from streamer import config
from streamer.config import ConfigError, path_problem
from streamer.sources import SourceError

from . import data as training_data
from .config import TrainConfig
from .select import SelectionError, read_manifest


def checked_config(path: str | os.PathLike, overrides: dict | None = None) -> TrainConfig:
    """The training config at `path` (with command-line overrides), loaded and preflighted; ConfigError if not."""
    cfg = config.load(path, TrainConfig, overrides)
    try:
        preflight(cfg)
    except ConfigError as e:
        raise ConfigError(e.problems, str(path)) from None
    return cfg


def preflight(cfg: TrainConfig) -> None:
    """ConfigError listing every problem with the data, files and output folder the config names."""
    problems = []
    try:
        folders = training_data.ped2_training_folders(cfg.data.root, cfg.data.train_clips)
    except SourceError as e:
        problems.append(f"data.root: {e}")
    except ValueError as e:
        problems.append(f"data.train_clips: {e}")
    else:
        try:
            training_data.split_clips(folders, cfg.data.validation_clips)
        except ValueError as e:
            problems.append(f"data.validation_clips: {e}")
    if cfg.data.frames_file:
        try:
            read_manifest(cfg.data.frames_file)
        except SelectionError as e:
            problems.append(f"data.frames_file: {e}")
    checkpoint = cfg.sdae.checkpoint
    if checkpoint and cfg.method in ("sdae_kmeans", "dec") and not Path(checkpoint).is_file():
        problems.append(
            f"sdae.checkpoint: no such file: {checkpoint} (an sdae_kmeans or dec run writes OUT.sdae.npz: run it first)"
        )
    if problem := path_problem(Path(cfg.out).with_suffix(".onnx")):
        problems.append(f"out: {problem}")
    if problems:
        raise ConfigError(problems)
