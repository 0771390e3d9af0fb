"""A bounded, reproducible sample of training patches from footage of any length, read frame by frame.

One pass over the footage (streamer/footage.py) cuts frames into the live
pipeline's patches (streamer/patches.py) and keeps no frame. Each frame fits
the networks, validates them (held out: early stopping and the speed proxy),
or only serves as the past of the next one (`data.frame_step`,
`data.frames_file`); `FrameRoles` decides, the same way in every pass.

Patches of fitting and validation frames go, by motion energy, to a moving
(>= data.motion_threshold) or a static reservoir. Static background is most
of every frame; without a cut the network would spend its capacity on walls
and pavement that never change, so only a seeded share of static patches
(data.static_fraction) is offered. A reservoir keeps at most its cap
(data.max_moving_patches, data.max_static_patches) as a uniform sample of all
it was offered: every patch draws a random key from a generator seeded by the
config's seed, and the smallest keys stay. Footage with fewer patches than the
caps is kept whole (Ped2 with its configs: every moving patch and 5 % of the
static ones); longer footage is sampled evenly over its whole length, and
memory stays at the caps whatever the length.
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from streamer.config import ConfigError
from streamer.footage import Clip, frames_of, total_frames
from streamer.patches import PatchExtractor, PatchSpec, motion_energy
from streamer.sources import SourceError

from .config import DataConfig
from .select import read_manifest

log = logging.getLogger(__name__)

SAMPLING_STREAM = 1  # the training sample's random stream, apart from the networks' (seeded alike)
FIT, VALIDATE = "fitting", "validation"


class FrameRoles:
    """Which frames fit the networks and which validate them: the same answer in every pass over the footage.

    Validation frames are the `data.validation_clips`, or, when none are named,
    blocks of `data.validation_block` frames making up `data.validation_share`
    of the footage, spread over it (running frame numbers over all clips).
    """

    def __init__(self, data: DataConfig, clip_names: list[str]):
        unknown = [n for n in data.validation_clips if n not in clip_names]
        if unknown:
            problem = f"validation_clips: validation clips {unknown} are not among the footage's clips {clip_names}"
            raise ConfigError([problem], "data")
        if data.validation_clips and set(clip_names) <= set(data.validation_clips):
            raise ConfigError(["validation_clips: every clip is a validation clip: nothing left to fit on"], "data")
        self.data = data
        self.listed: set[tuple[str, int]] | None = None
        self.found: set[tuple[str, int]] = set()
        if data.frames_file:
            self.listed = set(read_manifest(data.frames_file))
            strangers = sorted({clip for clip, _ in self.listed} - set(clip_names))
            if strangers:
                problem = f"frames_file: {data.frames_file} lists frames of clips {strangers} not among the footage's"
                raise ConfigError([problem], "data")

    def validates(self, clip: str, running: int) -> bool:
        if self.data.validation_clips:
            return clip in self.data.validation_clips
        share, block = self.data.validation_share, running // self.data.validation_block
        return math.floor((block + 1) * share + 0.5) > math.floor(block * share + 0.5)

    def role(self, clip: str, index: int, running: int) -> str | None:
        """FIT, VALIDATE, or None for a frame whose patches are not sampled (`index`: 1-based in its clip)."""
        on_step = running % self.data.frame_step == 0
        if self.validates(clip, running):
            return VALIDATE if on_step else None
        if self.listed is None:
            return FIT if on_step else None
        if (clip, index) in self.listed:
            self.found.add((clip, index))
            return FIT
        return None

    def check_listed_found(self) -> None:
        """After a pass: every frame of the manifest was read."""
        missing = sorted((self.listed or set()) - self.found)
        if missing:
            shown = ", ".join(f"{clip} frame {n}" for clip, n in missing[:5])
            problem = f"frames_file: {self.data.frames_file} lists {len(missing)} frames the footage has not: {shown}"
            raise ConfigError([problem], "data")


def chosen_clips(clips: list[Clip], names: list[str] | None) -> list[Clip]:
    """The clips named in data.train_clips (all of them for None); ConfigError for a name the footage lacks."""
    if names is None:
        return clips
    missing = [n for n in names if n not in [clip.name for clip in clips]]
    if missing:
        problem = f"train_clips: {missing} are not among the footage's clips {[clip.name for clip in clips]}"
        raise ConfigError([problem], "data")
    return [clip for clip in clips if clip.name in names]


class Reservoir:
    """At most `capacity` rows: a uniform sample of all rows offered, those with the smallest keys, in bounded memory.

    Rows go into spare room past the capacity; when that fills, the rows with
    the largest keys are dropped. Past the capacity a row whose key is not
    below every kept one is refused at once.
    """

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.offered = 0
        self._keys = np.empty(capacity + max(1024, capacity // 16), np.float64)
        self._rows: np.ndarray | None = None  # allocated with the first rows: their shape and type
        self._count = 0
        self._bound = np.inf  # keys at or above it can no longer get in

    def offer(self, rows: np.ndarray, keys: np.ndarray) -> None:
        self.offered += len(rows)
        if not self.capacity:
            return
        chosen = keys < self._bound
        rows, keys = rows[chosen], keys[chosen]
        if self._rows is None:
            self._rows = np.empty((len(self._keys), *rows.shape[1:]), rows.dtype)  # pages are used as rows come
        while len(rows):
            n = min(len(rows), len(self._keys) - self._count)
            self._rows[self._count : self._count + n] = rows[:n]
            self._keys[self._count : self._count + n] = keys[:n]
            self._count += n
            rows, keys = rows[n:], keys[n:]
            if self._count == len(self._keys):
                self._shrink()

    def _shrink(self) -> None:
        if self._count <= self.capacity:
            return
        keep = np.argpartition(self._keys[: self._count], self.capacity - 1)[: self.capacity]
        holes = np.setdiff1d(np.arange(self.capacity), keep, assume_unique=True)  # slots whose rows go
        movers = keep[keep >= self.capacity]  # rows that stay, from past the capacity
        self._rows[holes] = self._rows[movers]
        self._keys[holes] = self._keys[movers]
        self._count = self.capacity
        self._bound = self._keys[: self.capacity].max()

    @property
    def kept(self) -> int:
        return min(self._count, self.capacity)

    def rows(self) -> np.ndarray | None:
        """The sample (a view), or None when nothing was offered."""
        if self._rows is None:
            return None
        self._shrink()
        return self._rows[: self._count]


@dataclass
class PatchSample:
    fitting: np.ndarray  # (N, C, S, S) uint8
    validation: np.ndarray  # (M, C, S, S) uint8, possibly empty
    facts: dict  # for the card: frames read and used, patches offered and kept


def sample_patches(
    clips: list[Clip], spec: PatchSpec, data: DataConfig, seed: int, progress: bool = True
) -> PatchSample:
    """One pass over the footage: the bounded fitting and validation samples (see the module docstring)."""
    roles = FrameRoles(data, [clip.name for clip in clips])
    rng = np.random.default_rng([SAMPLING_STREAM, seed])
    reservoirs = {
        role: {"moving": Reservoir(data.max_moving_patches), "static": Reservoir(data.max_static_patches)}
        for role in (FIT, VALIDATE)
    }
    frames = {FIT: 0, VALIDATE: 0}
    read, current = 0, None
    bar = tqdm(total=total_frames(clips, data.max_frames), unit="frame", desc="sampling patches", disable=not progress)
    for number, clip, frame, running in frames_of(clips, data.max_frames):
        if number != current:
            extractor, current = PatchExtractor(spec), number
        role = roles.role(clip.name, frame.index, running)
        read += 1
        bar.update()
        if role is None:
            extractor.observe(frame.image)
            continue
        patches = extractor.push(frame.image)
        keys = rng.random(len(patches))
        moving = motion_energy(patches, spec) >= data.motion_threshold
        static = ~moving & (keys < data.static_fraction)
        reservoirs[role]["moving"].offer(patches[moving], keys[moving])
        reservoirs[role]["static"].offer(patches[static], keys[static])
        frames[role] += 1
        if frames[role] % 25 == 1:
            bar.set_postfix(kept=sum(r.kept for level in reservoirs.values() for r in level.values()))
    bar.close()
    roles.check_listed_found()
    if not read:
        raise SourceError("no frames read from the footage")
    facts = {
        "frames": read,
        "fitting_frames": frames[FIT],
        "validation_frames": frames[VALIDATE],
        "sample": {
            role: {level: {"kept": r.kept, "offered": r.offered} for level, r in reservoirs[role].items()}
            for role in reservoirs
        },
    }
    if not facts["sample"][FIT]["moving"]["kept"] + facts["sample"][FIT]["static"]["kept"]:
        raise ConfigError(["no fitting patches: every frame read was a validation frame or left out"], "data")
    # One role at a time, its reservoirs freed as soon as joined: the peak holds one copy, not two.
    samples = {role: _joined(reservoirs.pop(role).values(), spec) for role in (FIT, VALIDATE)}
    fit = facts["sample"][FIT]
    log.info(
        "read %d frames: fitting on %d patches (moving %d of %d, static %d of %d offered), validating on %d",
        read,
        len(samples[FIT]),
        fit["moving"]["kept"],
        fit["moving"]["offered"],
        fit["static"]["kept"],
        fit["static"]["offered"],
        len(samples[VALIDATE]),
    )
    return PatchSample(samples[FIT], samples[VALIDATE], facts)


def _joined(reservoirs, spec: PatchSpec) -> np.ndarray:
    parts = [rows for rows in (r.rows() for r in reservoirs) if rows is not None]
    if not parts:
        return np.empty((0, spec.channels, spec.size, spec.size), np.uint8)
    return np.concatenate(parts)


def validation_segments(clips: list[Clip], data: DataConfig, roles: FrameRoles, progress: bool = True):
    """The validation frames' images, lazily, as runs of consecutive frames: a validation clip, or a block.

    Each run is an iterator to be read to its end before the next one is asked for.
    """

    def run_of(number: int, running: int):
        return number if data.validation_clips else (number, running // data.validation_block)

    every_frame = tqdm(
        frames_of(clips, data.max_frames),
        total=total_frames(clips, data.max_frames),
        unit="frame",
        desc="validating",
        leave=False,
        disable=not progress,
    )
    frames = (
        (run_of(number, running), frame.image)
        for number, clip, frame, running in every_frame
        if roles.validates(clip.name, running)
    )
    for _, run in itertools.groupby(frames, key=lambda item: item[0]):
        yield (image for _, image in run)


def motion_energies(clips: list[Clip], spec: PatchSpec) -> dict[str, np.ndarray]:
    """(frames, P) motion energy of every patch of every frame, by clip: for research scripts on short clips."""
    energies = {}
    for clip in clips:
        extractor = PatchExtractor(spec)
        energies[clip.name] = np.stack([motion_energy(extractor.push(f.image), spec) for f in clip.source])
    return energies
