"""Footage to learn from or to measure on: named clips from files, folders, the Ped2 layout or a live stream.

Each target (a `--source`) becomes one or more clips:

  video file                 one clip, named by the file's stem
  folder of frames           one clip, named by the folder (frames in numeric order)
  folder of videos and/or    one clip per video file and per subfolder holding frames
    frame folders
  the UCSD Ped2 layout       its training clips Train/TrainNNN (a folder holding Train/ and Test/)
  live URL or camera index   recorded to a lossless file for `duration` seconds first, then one clip

A clip reads its frames from the start each time it is iterated (training reads
footage more than once) and holds one frame at a time, so footage of any
length fits in memory. Clip names must differ: configs, labels and selection
manifests refer to frames as (clip, 1-based frame number).
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
from tqdm import tqdm

from . import ped2
from .sources import (
    IMAGE_SUFFIXES,
    FolderSource,
    SourceError,
    VideoSource,
    list_image_files,
    natural_key,
    open_capture,
    to_gray,
)

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".webm", ".wmv", ".ts"})
RECORDING_FOURCC = "FFV1"  # lossless: a recording trains on the pixels the camera sent
DEFAULT_RECORDING_FPS = 10.0  # written into a recording whose stream does not say its rate


@dataclass
class Clip:
    name: str
    source: FolderSource | VideoSource

    @property
    def where(self) -> str:
        return str(self.source.folder if isinstance(self.source, FolderSource) else self.source.target)

    @property
    def frame_count(self) -> int | None:
        """Frames in the clip as the folder or the video's header says (None when the header does not)."""
        count = len(self.source.files) if isinstance(self.source, FolderSource) else self.source.frame_count
        return count if count > 0 else None

    def frames(self, limit: int | None = None):
        """The clip's frames from the start, the first `limit` of them when given."""
        for n, frame in enumerate(self.source):
            if limit is not None and n >= limit:
                return
            yield frame


def is_live(target: str | os.PathLike) -> bool:
    """A stream URL or a camera index rather than a file or folder."""
    text = str(target)
    return "://" in text or text.isdigit()


def redact(target: str | os.PathLike) -> str:
    """`target` without the user and password of a URL, for logs and model cards."""
    return re.sub(r"(://)[^/@]*@", r"\1***@", str(target))


def recordings_beside(out: str | os.PathLike) -> Path:
    """Where live footage for the model OUT(.onnx) is recorded: the folder OUT.recordings."""
    return Path(f"{Path(out).with_suffix('')}.recordings")


def total_frames(clips: list[Clip], limit: int | None = None) -> int | None:
    """Frames the clips hold (each capped at `limit`), or None when a video does not say: progress bars' totals."""
    counts = [clip.frame_count for clip in clips]
    if any(count is None for count in counts):
        return None
    return sum(min(count, limit) if limit is not None else count for count in counts)


def open_footage(
    targets: list[str | os.PathLike],
    record_dir: str | os.PathLike | None = None,
    duration: float | None = None,
    progress: bool = True,
) -> list[Clip]:
    """The clips of every target, in order; live targets are recorded into `record_dir` first."""
    if not targets:
        raise SourceError("no footage given")
    clips: list[Clip] = []
    live = 0
    for target in targets:
        if is_live(target):
            if duration is None or duration <= 0 or record_dir is None:
                raise SourceError(f"{redact(target)} is a live stream: give a recording --duration in seconds")
            live += 1
            path = Path(record_dir) / f"live{live}.mkv"
            record_live(str(target), path, duration, progress)
            clips.append(Clip(path.stem, VideoSource(str(path))))
        else:
            clips += clips_of(Path(target))
    return named_uniquely(clips)


def named_uniquely(clips: list[Clip]) -> list[Clip]:
    """`clips`, or SourceError if two share a name: configs, labels and manifests tell clips apart by name."""
    names = [clip.name for clip in clips]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise SourceError(f"clips share the names {repeated}, so their frames could not be told apart: rename them")
    return clips


def clips_of(path: Path) -> list[Clip]:
    """The clips of one file or folder (see the module docstring)."""
    if not path.exists():
        raise SourceError(f"footage not found: {path}")
    if path.is_file():
        if path.suffix.lower() in IMAGE_SUFFIXES:
            raise SourceError(f"{path} is a single image: give the folder holding the clip's frames")
        return [Clip(path.stem, VideoSource(str(path)))]
    if (path / "Train").is_dir() and (path / "Test").is_dir():
        return [Clip(c.name, FolderSource(c.path)) for c in ped2.training_clips(path)]
    entries = sorted(path.iterdir(), key=lambda p: natural_key(p.name))
    if any(p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES for p in entries):
        return [Clip(path.name, FolderSource(path))]
    clips = []
    for entry in entries:
        if entry.is_file() and entry.suffix.lower() in VIDEO_SUFFIXES:
            clips.append(Clip(entry.stem, VideoSource(str(entry))))
        elif entry.is_dir() and not entry.name.startswith(".") and _holds_frames(entry):
            clips.append(Clip(entry.name, FolderSource(entry)))
    if not clips:
        raise SourceError(f"{path} holds no frames, videos or folders of frames")
    return clips


def _holds_frames(folder: Path) -> bool:
    try:
        list_image_files(folder)
    except SourceError:
        return False
    return True


def record_live(target: str, path: Path, duration: float, progress: bool = True) -> Path:
    """Record `duration` seconds of a live stream to `path` (lossless, grayscale); SourceError if nothing came.

    Written under a temporary name and renamed when done, so an interrupted
    recording never passes for a whole one. A stream that ends early keeps what came.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.stem + ".partial" + path.suffix)
    capture = open_capture(target)
    fps = capture.get(cv2.CAP_PROP_FPS)
    fps = fps if 0 < fps <= 240 else DEFAULT_RECORDING_FPS
    writer, shape, frames, other_size = None, None, 0, 0
    started = time.monotonic()
    bar = tqdm(total=round(duration), unit="s", desc=f"recording {redact(target)}", disable=not progress)
    try:
        while True:
            ok, image = capture.read()
            elapsed = time.monotonic() - started
            if not ok:
                log.warning("%s ended after %.0f s of the %.0f s asked for", redact(target), elapsed, duration)
                break
            image = to_gray(image)
            if writer is None:
                shape = image.shape
                writer = cv2.VideoWriter(
                    str(partial), cv2.VideoWriter_fourcc(*RECORDING_FOURCC), fps, (shape[1], shape[0]), isColor=False
                )
                if not writer.isOpened():
                    raise SourceError(f"cannot write a recording to {partial} ({RECORDING_FOURCC} codec)")
            if image.shape != shape:
                other_size += 1  # a changed stream size cannot go into the same file
                continue
            writer.write(image)
            frames += 1
            bar.update(min(round(elapsed), bar.total) - bar.n)
            if elapsed >= duration:
                break
    finally:
        bar.close()
        capture.release()
        if writer is not None:
            writer.release()
    if not frames:
        partial.unlink(missing_ok=True)
        raise SourceError(f"no frame recorded from {redact(target)}")
    if other_size:
        log.warning("%d frames of another size than the first left out of the recording", other_size)
    partial.replace(path)
    log.info(
        "recorded %d frames of %s to %s: pass it as --source to use the same footage again",
        frames,
        redact(target),
        path,
    )
    return path


def frames_of(clips: list[Clip], limit: int | None = None):
    """(clip number, clip, frame, running frame number over all clips) for every frame, clip after clip."""
    running = 0
    for number, clip in enumerate(clips):
        for frame in clip.frames(limit):
            yield number, clip, frame, running
            running += 1
