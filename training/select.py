"""`vad select`: representative frames of long recordings (after Singh et al.).

Every frame is cut into the model's patches and each patch encoded by the
model's encoder graph (OUT.encoder.onnx, written by `vad train` beside every
model, checksum in its card). A frame's descriptor is its patch latents in grid
order, concatenated, so two frames are close when the same things happen in the
same places. k-means (training/clustering.py) groups the frames into k clusters,
and the frame nearest each centroid is kept: k frames that cover the recording's
variety instead of its most common scene. `--random` keeps k frames drawn
uniformly instead, the baseline the selection is measured against (README).

Output in --out: a copy of every chosen frame and manifest.json (sources, k,
chosen frames with their clusters, cluster sizes). A manifest is also what
`data.frames_file` in a training config takes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from streamer.footage import Clip, open_footage
from streamer.model import ModelCard, ModelError, card_path_for, create_session, sha256_of
from streamer.patches import PatchExtractor, to_model_input
from streamer.sources import FolderSource, SourceError, VideoSource

from .clustering import kmeans, nearest_members

log = logging.getLogger(__name__)


class SelectionError(ValueError):
    pass


@dataclass
class FrameRef:
    clip: str  # the source's name: its folder name or video file stem
    source: str
    frame: int  # 1-based position in the source
    name: str  # file name in a frame folder, empty for video


def load_encoder(model_path: str | os.PathLike, device: str = "auto", threads: int = 0):
    """(session, card) of the encoder graph recorded in a model's card."""
    card = ModelCard.load(card_path_for(model_path))
    if not card.encoder:
        raise ModelError(f"{model_path}'s card names no encoder graph: export the model again with `vad train`")
    path = Path(model_path).parent / card.encoder["file"]
    if not path.is_file():
        raise ModelError(f"encoder graph {path} named by the card is missing")
    if sha256_of(path) != card.encoder["sha256"]:
        raise ModelError(f"{path} does not match the checksum in its card")
    session, _ = create_session(path, device, threads)
    return session, card


def frame_descriptors(
    clips: list[Clip], session, card: ModelCard, every: int = 1, progress: bool = True
) -> tuple[np.ndarray, list[FrameRef]]:
    """(F, P * L) concatenated patch latents of every `every`-th frame, and which frames they are."""
    name = session.get_inputs()[0].name
    descriptors, refs = [], []
    for clip in clips:
        extractor = PatchExtractor(card.patch)  # motion channels need the frames in between too
        for frame in tqdm(clip.source, desc=f"encoding {clip.name}", unit="frame", leave=False, disable=not progress):
            if (frame.index - 1) % every:
                extractor.observe(frame.image)
                continue
            latents = session.run(None, {name: to_model_input(extractor.push(frame.image))})[0]
            descriptors.append(latents.reshape(-1))
            refs.append(FrameRef(clip.name, clip.where, frame.index, frame.name))
    if not refs:
        raise SourceError("no frames read from the sources")
    return np.stack(descriptors), refs


def list_frames(clips: list[Clip], every: int = 1) -> list[FrameRef]:
    """Every `every`-th frame of the sources, without reading pixels where a folder lists its files."""
    refs = []
    for clip in clips:
        if isinstance(clip.source, FolderSource):
            refs += [FrameRef(clip.name, clip.where, n, p.name) for n, p in enumerate(clip.source.files, 1)]
        else:
            refs += [FrameRef(clip.name, clip.where, f.index, "") for f in clip.source]
    return [r for r in refs if (r.frame - 1) % every == 0]


def cluster_choice(descriptors: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the member nearest each of k k-means centroids, and every frame's cluster."""
    labels, centres = kmeans(descriptors, k, seed)
    return nearest_members(descriptors, labels, centres), labels


def random_choice(frames: int, k: int, seed: int) -> np.ndarray:
    """k distinct frame indices drawn uniformly, in frame order: the baseline."""
    return np.sort(np.random.default_rng(seed).choice(frames, size=k, replace=False))


def select(
    sources: list[str | os.PathLike],
    k: int,
    out: str | os.PathLike,
    model: str | os.PathLike | None = None,
    random: bool = False,
    seed: int = 0,
    every: int = 1,
    device: str = "auto",
    threads: int = 0,
    progress: bool = True,
) -> dict:
    """Choose k frames, copy them to `out` and write out/manifest.json; returns the manifest."""
    if k < 1 or every < 1:
        raise SelectionError(f"k and every must be >= 1, got {k} and {every}")
    if not random and model is None:
        raise SelectionError("selection needs --model (a model exported by `vad train`), or --random")
    clips = open_footage(sources)
    if random:
        refs = list_frames(clips, every)
        _check_count(k, len(refs))
        chosen = random_choice(len(refs), k, seed)
        labels = None
    else:
        session, card = load_encoder(model, device, threads)
        descriptors, refs = frame_descriptors(clips, session, card, every, progress)
        _check_count(k, len(refs))
        log.info(
            "clustering %d frame descriptors of %d dimensions into %d clusters", len(refs), descriptors.shape[1], k
        )
        chosen, labels = cluster_choice(descriptors, k, seed)
    return write_selection(refs, chosen, labels, out, model, sources, k, seed, every)


def _check_count(k: int, frames: int) -> None:
    if k > frames:
        raise SelectionError(f"cannot choose {k} frames out of {frames}")


def write_selection(refs, chosen, labels, out, model, sources, k, seed, every) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sizes = None if labels is None else np.bincount(labels, minlength=k)
    entries = []
    videos = {}
    for cluster, i in enumerate(chosen):
        ref = refs[i]
        file = f"{ref.clip}_{ref.name or f'{ref.frame:06d}.png'}"
        if ref.name:
            shutil.copy2(Path(ref.source) / ref.name, out / file)
        else:
            videos.setdefault(ref.source, {})[ref.frame] = out / file
        entry = {"clip": ref.clip, "source": ref.source, "frame": ref.frame, "name": ref.name, "file": file}
        if sizes is not None:
            entry.update(cluster=cluster, cluster_size=int(sizes[cluster]))
        entries.append(entry)
    for source, wanted in videos.items():  # one more pass over each video for its chosen frames
        for frame in VideoSource(source):
            if frame.index in wanted:
                cv2.imwrite(str(wanted[frame.index]), frame.image)
    manifest = {
        "method": "random" if labels is None else "kmeans",
        "model": None if model is None else str(model),
        "sources": [str(s) for s in sources],
        "k": k,
        "seed": seed,
        "every": every,
        "frames_considered": len(refs),
        "descriptor": None if labels is None else "concatenated patch latents of the model's encoder graph",
        "cluster_sizes": None if sizes is None else sizes.tolist(),
        "chosen": entries,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    log.info("chose %d of %d frames: %s", k, len(refs), out)
    return manifest


def read_manifest(path: str | os.PathLike) -> list[tuple[str, int]]:
    """(clip, frame) of every frame a selection manifest lists."""
    try:
        manifest = json.loads(Path(path).read_text())
        return [(str(c["clip"]), int(c["frame"])) for c in manifest["chosen"]]
    except OSError as e:
        raise SelectionError(f"cannot read selection manifest {path}: {e.strerror or e}") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise SelectionError(f"{path} is not a `vad select` manifest: {e!r}") from None
