"""Training patches from normal video, cut by the same extractor the live pipeline uses."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from streamer import ped2
from streamer.patches import PatchExtractor, PatchSpec, motion_energy
from streamer.sources import FolderSource

log = logging.getLogger(__name__)


@dataclass
class ClipPatches:
    """Every patch of every frame of a set of clips, in frame order."""

    patches: np.ndarray  # (frames * P, C, S, S) uint8
    energy: np.ndarray  # (frames * P,) motion energy, 0-255 scale
    clip_ids: np.ndarray  # (frames * P,) index into `clips`
    frame_ids: np.ndarray  # (frames * P,) running frame number over all clips
    positions: int  # P, patches per frame
    clips: list[str]

    @property
    def frames(self) -> int:
        return len(self.patches) // self.positions

    @property
    def clip_of_frame(self) -> np.ndarray:
        """(frames,) index into `clips` of each frame."""
        return self.clip_ids.reshape(self.frames, self.positions)[:, 0]

    def subset(self, mask: np.ndarray) -> np.ndarray:
        return self.patches[mask]


def read_clips(
    folders: list[tuple[str, os.PathLike]], spec: PatchSpec, max_frames: int | None = None, progress: bool = True
) -> ClipPatches:
    """All patches of the (name, folder) clips, the first `max_frames` of each; the extractor restarts per clip.

    The patches go straight into one array sized for every listed frame, so peak memory is the patches once
    (not once per frame and again joined).
    """
    sources = [FolderSource(folder) for _, folder in folders]
    capacity = sum(len(s) if max_frames is None else min(len(s), max_frames) for s in sources)
    patches, energy, clip_ids, frame_ids = None, [], [], []
    frame_no = 0
    for clip_id, source in enumerate(tqdm(sources, desc="reading clips", unit="clip", disable=not progress)):
        extractor = PatchExtractor(spec)
        for n, frame in enumerate(source):
            if max_frames is not None and n >= max_frames:
                break
            p = extractor.push(frame.image)
            if patches is None:
                patches = np.empty((capacity * len(p), *p.shape[1:]), np.uint8)
            patches[frame_no * len(p) : (frame_no + 1) * len(p)] = p
            energy.append(motion_energy(p, spec))
            clip_ids.append(np.full(len(p), clip_id, np.int16))
            frame_ids.append(np.full(len(p), frame_no, np.int32))
            frame_no += 1
    if patches is None:
        raise ValueError("no frames read from the training clips")
    positions = len(energy[0])
    return ClipPatches(
        patches[: frame_no * positions],  # fewer frames than listed where some were unreadable
        np.concatenate(energy),
        np.concatenate(clip_ids),
        np.concatenate(frame_ids),
        positions,
        [name for name, _ in folders],
    )


def ped2_training_folders(root, names: list[str] | None = None) -> list[tuple[str, os.PathLike]]:
    """(name, folder) of the Ped2 training clips, all of them or those named."""
    clips = {c.name: c.path for c in ped2.training_clips(root)}
    if names is None:
        return list(clips.items())
    missing = [n for n in names if n not in clips]
    if missing:
        raise ValueError(f"unknown training clips {missing}; available: {sorted(clips)}")
    return [(n, clips[n]) for n in names]


def split_clips(folders: list, validation_clips: list[str]) -> tuple[list, list]:
    """(fitting, validation) clips of the (name, folder) pairs; ValueError unless both are possible."""
    names = [name for name, _ in folders]
    missing = [n for n in validation_clips if n not in names]
    if missing:
        raise ValueError(f"validation clips {missing} are not among the training clips {names}")
    fitting = [f for f in folders if f[0] not in validation_clips]
    if not fitting:
        raise ValueError("every training clip is a validation clip: nothing left to fit on")
    return fitting, [f for f in folders if f[0] in validation_clips]


def frame_size_of(folder: os.PathLike) -> tuple[int, int]:
    first = next(iter(FolderSource(folder)))
    return first.image.shape


def sample_patches(
    data: ClipPatches, mask: np.ndarray, motion_threshold: float, static_fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """Indices of training patches: all moving ones, a random share of static ones.

    Static background is most of every frame; without this the network would
    spend its capacity on walls and pavement that never change.
    """
    moving = mask & (data.energy >= motion_threshold)
    static = np.flatnonzero(mask & ~moving)
    keep = rng.choice(static, size=int(round(static_fraction * len(static))), replace=False)
    return np.sort(np.concatenate([np.flatnonzero(moving), keep]))


def frame_mask(data: ClipPatches, frames: list[tuple[str, int]]) -> np.ndarray:
    """Patch mask of the listed (clip name, 1-based frame number in the clip) frames."""
    unknown = sorted({clip for clip, _ in frames} - set(data.clips))
    if unknown:
        raise ValueError(f"frames listed from clips {unknown} that are not among the training clips {data.clips}")
    clip_of_frame = data.clip_of_frame
    first = {c: int(np.flatnonzero(clip_of_frame == c)[0]) for c in np.unique(clip_of_frame)}
    chosen = np.zeros(data.frames, dtype=bool)
    for clip, number in frames:
        c = data.clips.index(clip)
        running = first[c] + number - 1
        if number < 1 or running >= data.frames or clip_of_frame[running] != c:
            raise ValueError(f"{clip} has no frame {number}")
        chosen[running] = True
    return np.repeat(chosen, data.positions)
