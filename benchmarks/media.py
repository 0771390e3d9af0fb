"""What event media cost, piece by piece, on UCSD Ped2 frames; prints a table.

  python benchmarks/media.py --data ../shared/datasets/UCSDped2

1. Capture: downscale and JPEG-encode each frame as a preview (Ped2's 360x240, and
   the same frames enlarged to 1920x1080 as a stand-in for a real camera).
2. Alerter, per event: render and write a snapshot (heat overlay, boxes, caption).
3. Alerter, per event frame: decode the preview, box it, encode it into the clip,
   for each codec this OpenCV build writes; and the clip's bytes per second of video.
4. Retention: a pass over 10 000 ended events that prunes nothing, and one that
   prunes 1 000 of them (files and log rows).

CPU milliseconds (process time: every thread) per item, one thread, on whatever
else the machine runs: the table says the CPU count and load average.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import cv2
import numpy as np

from streamer import ped2
from streamer.patches import PatchExtractor, PatchSpec
from streamer.pipeline.events import EventLog, top_boxes
from streamer.pipeline.media import CLIP_CODECS, can_write, open_writer
from streamer.pipeline.preview import decode_preview, downscale, encode_jpeg
from streamer.pipeline.retention import Retention
from streamer.pipeline.review_config import MediaConfig, RetentionConfig
from streamer.pipeline.snapshots import draw_boxes, render_snapshot, to_bgr, with_caption, write_jpeg

CONFIG = MediaConfig()


def cpu_ms(work, items: int) -> float:
    started = time.process_time()
    work()
    return (time.process_time() - started) * 1000 / items


def preview_rows(frames: list[np.ndarray]) -> list[tuple]:
    rows = []
    for label, images in (
        ("360x240 (Ped2)", frames),
        ("1920x1080 (Ped2 enlarged)", [cv2.resize(f, (1920, 1080)) for f in frames[:40]]),
    ):
        jpegs = []
        ms = cpu_ms(
            lambda: jpegs.extend(encode_jpeg(downscale(f, CONFIG.max_width), CONFIG.jpeg_quality) for f in images),
            len(images),
        )
        size = np.mean([len(j) for j in jpegs]) / 1024
        rows.append((f"capture: preview of a {label} frame", f"{ms:.2f} ms CPU, {size:.1f} KiB", "per frame"))
    return rows


def snapshot_rows(frames: list[np.ndarray], folder: Path) -> list[tuple]:
    shape = frames[0].shape
    boxes = PatchExtractor(PatchSpec()).boxes(shape)
    rng = np.random.default_rng(0)
    scores = rng.gamma(1.0, 0.4, len(boxes)).astype(np.float32)
    scores[rng.choice(len(boxes), 12, replace=False)] = 3.0  # a dozen flagged patches
    flagged = top_boxes(scores, boxes, 2.0, 10)
    previews = [encode_jpeg(f, CONFIG.jpeg_quality).tobytes() for f in frames[:50]]

    def snapshots():
        for i, jpeg in enumerate(previews):
            picture = render_snapshot(decode_preview(jpeg), scores, boxes, shape, 2.0, flagged, "cam  time  score")
            write_jpeg(folder / f"{i}.jpg", picture, CONFIG.jpeg_quality)

    ms = cpu_ms(snapshots, len(previews))
    size = np.mean([p.stat().st_size for p in folder.glob("*.jpg")]) / 1024
    return [("alerter: render and write a snapshot", f"{ms:.1f} ms CPU, {size:.0f} KiB", "twice or more per event")]


def clip_rows(frames: list[np.ndarray], folder: Path, fps: float = 10.0) -> list[tuple]:
    shape = frames[0].shape
    boxes = PatchExtractor(PatchSpec()).boxes(shape)
    flagged = [{"x": int(x), "y": int(y), "w": int(w), "h": int(h), "score": 3.0} for x, y, w, h in boxes[40:46]]
    rows = []
    for width in (360, 640):
        previews = [encode_jpeg(cv2.resize(f, (width, width * 2 // 3)), CONFIG.jpeg_quality).tobytes() for f in frames]
        for codec, (_, suffix) in CLIP_CODECS.items():
            if not can_write(codec):
                rows.append((f"alerter: clip frame {width} px wide, {codec}", "not written by this OpenCV build", ""))
                continue
            path = folder / f"clip-{codec}-{width}{suffix}"

            def encode():
                writer = None
                for jpeg in previews:
                    image = to_bgr(decode_preview(jpeg))
                    draw_boxes(image, flagged, shape, label=False)
                    image = with_caption(image, "cam  time  score", at_top=False)
                    if writer is None:
                        size = (image.shape[1], image.shape[0])
                        writer = open_writer(path, codec, fps, size)
                    writer.write(image)
                writer.release()

            ms = cpu_ms(encode, len(previews))
            rate = path.stat().st_size / (len(previews) / fps) / 1024
            rows.append(
                (
                    f"alerter: clip frame {width} px wide, {codec} ({suffix[1:]})",
                    f"{ms:.1f} ms CPU; {rate:.0f} KiB per second of video",
                    f"{ms * fps / 10:.0f} % of a core at {fps:.0f} fps",
                )
            )
    return rows


def retention_rows(folder: Path, events: int = 10_000, pruned: int = 1_000) -> list[tuple]:
    now = 1_700_000_000.0
    log = EventLog(folder / "events.sqlite")
    log._connection().execute("PRAGMA synchronous=OFF")  # building the fixture only
    for i in range(events):
        event_id = uuid.uuid4().hex
        at = now - (events - i) * 60.0  # one a minute, the oldest first
        for kind in ("start", "update", "end"):
            log.append({"event_id": event_id, "camera": "cam1", "type": kind, "time": at, "boxes": []})
        media = folder / "snapshots" / event_id
        media.mkdir(parents=True)
        for name in ("start.jpg", "peak.jpg", "scores.json", "clip.mp4"):
            (media / name).write_bytes(b"x" * 100)
    log.close()
    keep_all = Retention(folder, folder / "events.sqlite", RetentionConfig(days=None, max_mb=None), lambda: now)
    prune = Retention(
        folder, folder / "events.sqlite", RetentionConfig(days=(events - pruned) * 60 / 86400, max_mb=None), lambda: now
    )
    started = time.perf_counter()
    keep_all.prune()
    idle = time.perf_counter() - started
    started = time.perf_counter()
    result = prune.prune()
    busy = time.perf_counter() - started
    assert result.events == pruned, result
    return [
        (f"retention: a pass over {events} events pruning none", f"{idle * 1000:.0f} ms", "once a minute"),
        (f"retention: a pass pruning {pruned} of them (folders and rows)", f"{busy * 1000:.0f} ms", ""),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="UCSDped2 folder (default: $VAD_PED2, then ../shared/datasets/UCSDped2)")
    parser.add_argument("--clip", default="Test002", help="test clip whose frames are used")
    args = parser.parse_args()
    clip = next(c for c in ped2.test_clips(ped2.resolve_root(args.data)) if c.name == args.clip)
    frames = [
        cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in sorted(clip.path.iterdir()) if p.suffix in (".png", ".tif")
    ][:100]
    load_before = os.getloadavg()
    folder = Path(tempfile.mkdtemp(prefix="vad-media-bench-"))
    try:
        (folder / "snapshots").mkdir()
        rows = preview_rows(frames) + snapshot_rows(frames, folder / "snapshots") + clip_rows(frames, folder)
        shutil.rmtree(folder / "snapshots")
        rows += retention_rows(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(
        f"\n{len(frames)} frames of {args.clip}; {os.cpu_count()} CPUs, load average {load_before[0]:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after\n"
    )
    width = max(len(r[0]) for r in rows)
    print(f"| {'measure':<{width}} | result | note |")
    print(f"|{'-' * (width + 2)}|--------|------|")
    for measure, value, note in rows:
        print(f"| {measure:<{width}} | {value} | {note} |")


if __name__ == "__main__":
    main()
