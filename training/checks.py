"""What `vad train` needs beyond its config's schema: checked by `vad config check` and at the start of training.

Like the pipeline's checks it only looks (nothing is created or written), and it
finds clips with the functions training itself uses, so both fail on the same
configs with the same messages.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from streamer import config, ped2
from streamer.config import ConfigError, path_problem
from streamer.footage import Clip, clips_of, is_live, named_uniquely
from streamer.sources import SourceError

from .config import TrainConfig
from .sampling import FrameRoles, chosen_clips
from .select import SelectionError, read_manifest


@dataclass
class Footage:
    """What a config's footage holds, as far as it can be known without recording anything."""

    clips: list[Clip]  # the files and folders' clips (live sources are recorded only when training starts)
    live: list[str]  # live sources


def checked_config(path: str | os.PathLike, overrides: dict | None = None) -> tuple[TrainConfig, Footage]:
    """The training config at `path` (with command-line overrides), loaded and preflighted; ConfigError if not."""
    cfg = config.load(path, TrainConfig, overrides)
    try:
        footage = preflight(cfg)
    except ConfigError as e:
        raise ConfigError(e.problems, str(path)) from None
    return cfg, footage


def preflight(cfg: TrainConfig) -> Footage:
    """ConfigError listing every problem with the footage, files and output folder the config names."""
    problems = []
    data = cfg.data
    live = [str(t) for t in data.sources if is_live(t)]
    clips: list[Clip] = []
    try:
        if data.sources:
            clips = named_uniquely([clip for t in data.sources if not is_live(t) for clip in clips_of(Path(t))])
        else:
            clips = clips_of(ped2.resolve_root(data.root))
    except SourceError as e:
        problems.append(f"{'data.sources' if data.sources else 'data.root'}: {e}")
    if live and not data.duration:
        problems.append(f"data.duration: the live sources {live} are recorded first: give the seconds to record")
    if clips and not live:  # every clip's name is known: check the names the config gives
        try:
            clips = chosen_clips(clips, data.train_clips)
            FrameRoles(data, [clip.name for clip in clips])
        except ConfigError as e:
            problems += [f"data.{problem}" for problem in e.problems]
    if data.frames_file:
        try:
            read_manifest(data.frames_file)
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
    return Footage(clips, live)
