"""Frame sources: a folder of images, a video file, a stream URL or a camera.

Every source yields `Frame`s holding an 8-bit grayscale image. Problems with the
source as a whole (missing path, empty folder, unopenable video) raise
`SourceError` at construction; a bad single frame in a folder is logged, counted
in `skipped` and left out, so one corrupt file never stops a long run.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp", ".pgm", ".ppm", ".webp", ".jp2"})


class SourceError(RuntimeError):
    """The source as a whole cannot be read (missing, empty, unopenable)."""


@dataclass
class Frame:
    index: int  # 1-based position in the source (matches Ped2's frame numbering)
    image: np.ndarray  # (H, W) uint8
    timestamp: float  # capture time, seconds since the epoch
    name: str = ""  # file name, or empty for video frames


def natural_key(name: str) -> list:
    """Sort key that orders '2.png' before '10.png'."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def to_gray(image: np.ndarray) -> np.ndarray:
    """Any OpenCV image (gray, BGR, BGRA; 8 or 16 bit) as 2-D uint8 grayscale."""
    if image.ndim == 3:
        code = cv2.COLOR_BGRA2GRAY if image.shape[2] == 4 else cv2.COLOR_BGR2GRAY
        image = cv2.cvtColor(image, code)
    if image.dtype != np.uint8:
        image = cv2.convertScaleAbs(image, alpha=255.0 / max(float(image.max()), 1.0))
    return image


def list_image_files(folder: str | os.PathLike) -> list[Path]:
    folder = Path(folder)
    if not folder.exists():
        raise SourceError(f"frame folder does not exist: {folder}")
    if not folder.is_dir():
        raise SourceError(f"not a folder: {folder}")
    files = [
        p
        for p in folder.iterdir()
        # '._name' files are macOS resource forks shipped inside some dataset archives.
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    ]
    if not files:
        raise SourceError(f"no image files in {folder} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return sorted(files, key=lambda p: natural_key(p.name))


class FolderSource:
    """Frames from image files in numeric order, each at its own size.

    Frames are not held to the size of the first one: the patch extractor resizes
    every frame to the model card's working size (`patch.frame_size`), as it does
    for a camera, so one odd first frame cannot disqualify the rest of a clip.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.files = list_image_files(self.folder)
        self.skipped = 0

    def __len__(self) -> int:
        return len(self.files)

    def __iter__(self) -> Iterator[Frame]:
        for index, path in enumerate(self.files, start=1):
            image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if image is None or image.size == 0:
                self._skip(path, "unreadable or corrupt image")
                continue
            yield Frame(index=index, image=to_gray(image), timestamp=time.time(), name=path.name)

    def _skip(self, path: Path, why: str) -> None:
        self.skipped += 1
        log.warning("skipping frame %s: %s", path, why)


def open_capture(target: str | int) -> cv2.VideoCapture:
    """cv2.VideoCapture for a camera index, a file or a URL; SourceError if it will not open."""
    if isinstance(target, str) and "://" not in target and not target.isdigit():
        if not Path(target).exists():
            raise SourceError(f"video file does not exist: {target}")
    capture = cv2.VideoCapture(int(target) if isinstance(target, str) and target.isdigit() else target)
    if not capture.isOpened():
        capture.release()
        raise SourceError(f"cannot open video source: {target}")
    return capture


class VideoSource:
    """Frames from a video file, a stream URL or a camera index, read once to the end."""

    def __init__(self, target: str | int):
        self.target = target
        capture = open_capture(target)
        self.fps = capture.get(cv2.CAP_PROP_FPS) or 0.0
        self.frame_count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        capture.release()
        self.skipped = 0

    def __len__(self) -> int:
        return self.frame_count

    def __iter__(self) -> Iterator[Frame]:
        capture = open_capture(self.target)
        try:
            index = 0
            while True:
                ok, image = capture.read()
                if not ok:
                    return
                index += 1
                yield Frame(index=index, image=to_gray(image), timestamp=time.time())
        finally:
            capture.release()


def open_source(target: str | int | os.PathLike):
    """A folder becomes a FolderSource; anything else (file, URL, camera index) a VideoSource."""
    if isinstance(target, (str, os.PathLike)) and Path(target).is_dir():
        return FolderSource(target)
    return VideoSource(str(target) if isinstance(target, os.PathLike) else target)
