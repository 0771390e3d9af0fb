"""The UCSD Ped2 layout: Train/TrainNNN, Test/TestNNN and Test/UCSDped2.m.

UCSDped2.m lists, per test clip in order, the abnormal frames as MATLAB ranges
(1-based, inclusive), e.g. ``TestVideoFile{end+1}.gt_frame = [61:180];``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .sources import SourceError, list_image_files

DEFAULT_ROOT_ENV = "VAD_PED2"
# Where a checkout of this project finds the dataset (../shared/datasets/README.md):
# beside the repository, or beside the working directory.
DEFAULT_ROOTS = (
    Path(__file__).resolve().parent.parent.parent / "shared" / "datasets" / "UCSDped2",
    Path("..") / "shared" / "datasets" / "UCSDped2",
)

_GT_LINE = re.compile(r"gt_frame\s*=\s*\[([^\]]*)\]")


@dataclass
class Clip:
    name: str  # e.g. "Test001"
    path: Path
    frame_count: int
    labels: np.ndarray | None = None  # (frame_count,) uint8, 1 = abnormal; None for training clips


def resolve_root(path: str | os.PathLike | None = None) -> Path:
    """The dataset root from an argument, $VAD_PED2, or the checkout's ../shared copy."""
    if path or os.environ.get(DEFAULT_ROOT_ENV):
        root = Path(path or os.environ[DEFAULT_ROOT_ENV])
    else:
        root = next((r for r in DEFAULT_ROOTS if r.is_dir()), DEFAULT_ROOTS[0])
    if not (root / "Train").is_dir() or not (root / "Test").is_dir():
        raise SourceError(
            f"UCSD Ped2 not found at {root}: expected Train/ and Test/ folders there. "
            f"Pass --data DIR or set ${DEFAULT_ROOT_ENV}."
        )
    return root


def parse_ranges(text: str) -> list[tuple[int, int]]:
    """'61:180' -> [(61, 180)]; '5:90, 140:200' and single frames '7' are accepted too."""
    ranges = []
    for part in re.split(r"[,\s]+", text.strip()):
        if not part:
            continue
        bounds = part.split(":")
        try:
            if len(bounds) == 1:
                lo = hi = int(bounds[0])
            elif len(bounds) == 2:
                lo, hi = int(bounds[0]), int(bounds[1])
            else:
                raise ValueError
        except ValueError:
            raise ValueError(f"cannot parse MATLAB range {part!r}") from None
        if lo < 1 or hi < lo:
            raise ValueError(f"invalid frame range {part!r}: need 1 <= start <= end")
        ranges.append((lo, hi))
    return ranges


def parse_ground_truth(m_file: str | os.PathLike) -> list[list[tuple[int, int]]]:
    """Abnormal frame ranges for each test clip, in the file's order."""
    path = Path(m_file)
    if not path.is_file():
        raise SourceError(f"ground-truth file not found: {path}")
    try:
        entries = [parse_ranges(m.group(1)) for m in _GT_LINE.finditer(path.read_text())]
    except ValueError as e:
        raise SourceError(f"{path}: {e}") from None
    if not entries:
        raise SourceError(f"no 'gt_frame = [...]' entries in {path}")
    return entries


def labels_from_ranges(ranges: list[tuple[int, int]], frame_count: int) -> np.ndarray:
    labels = np.zeros(frame_count, dtype=np.uint8)
    for lo, hi in ranges:
        if hi > frame_count:
            raise ValueError(f"range {lo}:{hi} runs past the clip's {frame_count} frames")
        labels[lo - 1 : hi] = 1
    return labels


def _clip_folders(split_dir: Path, prefix: str) -> list[Path]:
    pattern = re.compile(rf"^{prefix}\d+$")
    folders = sorted(p for p in split_dir.iterdir() if p.is_dir() and pattern.match(p.name))
    if not folders:
        raise SourceError(f"no {prefix}NNN folders in {split_dir}")
    return folders


def training_clips(root: str | os.PathLike | None = None) -> list[Clip]:
    root = resolve_root(root)
    return [Clip(p.name, p, len(list_image_files(p))) for p in _clip_folders(root / "Train", "Train")]


def test_clips(root: str | os.PathLike | None = None) -> list[Clip]:
    """Test clips with per-frame labels from Test/UCSDped2.m."""
    root = resolve_root(root)
    folders = _clip_folders(root / "Test", "Test")
    gt = parse_ground_truth(root / "Test" / "UCSDped2.m")
    if len(gt) != len(folders):
        raise SourceError(
            f"{root / 'Test' / 'UCSDped2.m'} has {len(gt)} entries but there are {len(folders)} test clips"
        )
    clips = []
    for folder, ranges in zip(folders, gt):
        count = len(list_image_files(folder))
        try:
            labels = labels_from_ranges(ranges, count)
        except ValueError as e:
            raise SourceError(f"{root / 'Test' / 'UCSDped2.m'}, {folder.name}: {e}") from None
        clips.append(Clip(folder.name, folder, count, labels))
    return clips
