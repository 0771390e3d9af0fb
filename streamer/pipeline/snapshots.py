"""Pictures of an event: a snapshot with the flagged patches marked, and the marks on each clip frame.

A snapshot is the scored frame with a translucent heat overlay of the calibrated
patch scores (patches from half the flagging level up: faint yellow there, turning
red and more opaque towards twice the level), the flagged patches' boxes (the
highest labelled with its score), and a caption bar with the camera, the capture
time and the score against the threshold. Small frames are enlarged first so
the marks and the caption stay legible.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import cv2
import numpy as np

SNAPSHOT_MIN_WIDTH = 720  # snapshots of smaller previews are enlarged to this width
HEAT_FROM = 0.5  # patches from this fraction of the flagging level up are tinted
HEAT_FULL = 2.0  # ... fully red and most opaque from this fraction up
HEAT_OPACITY = (0.15, 0.45)  # at HEAT_FROM, at HEAT_FULL
HEAT_COLORS = ((0, 215, 255), (0, 0, 255))  # BGR: yellow at HEAT_FROM, red at HEAT_FULL
BOX_COLOR = (40, 40, 255)  # BGR red
CAPTION_COLOR = (255, 255, 255)
FONT = cv2.FONT_HERSHEY_SIMPLEX


def local_time(t: float) -> str:
    """Capture time as the operator reads it: local date and time to a tenth of a second, with the zone."""
    tenths = int((t % 1) * 10)
    return time.strftime(f"%Y-%m-%d %H:%M:%S.{tenths} %Z", time.localtime(t))


def to_bgr(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image


def _scale_boxes(boxes: np.ndarray, frame_shape: tuple[int, int], image_shape: tuple[int, ...]) -> np.ndarray:
    """Boxes (x, y, w, h) in frame pixels -> (x0, y0, x1, y1) in the image's pixels."""
    sx, sy = image_shape[1] / frame_shape[1], image_shape[0] / frame_shape[0]
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    corners = np.stack(
        [boxes[:, 0] * sx, boxes[:, 1] * sy, (boxes[:, 0] + boxes[:, 2]) * sx, (boxes[:, 1] + boxes[:, 3]) * sy], 1
    )
    return np.rint(corners).astype(np.int32)


def heat_overlay(image: np.ndarray, patch_scores: np.ndarray, boxes: np.ndarray, frame_shape, level: float) -> None:
    """Tint patches by their score relative to the flagging `level`, in place."""
    relative = np.asarray(patch_scores, dtype=np.float32) / max(level, 1e-6)
    hot = np.flatnonzero(relative >= HEAT_FROM)
    if not len(hot):
        return
    corners = _scale_boxes(boxes[hot], frame_shape, image.shape)
    heat = np.zeros(image.shape[:2], np.float32)
    covered = np.zeros(image.shape[:2], np.float32)
    for (x0, y0, x1, y1), value in zip(corners, relative[hot]):
        region = heat[y0:y1, x0:x1]
        np.maximum(region, value, out=region)
        covered[y0:y1, x0:x1] = 1
    softness = max(1.0, float(np.median(corners[:, 2] - corners[:, 0])) / 6)  # soft edges, a sixth of a patch
    covered = cv2.GaussianBlur(covered, (0, 0), softness)
    heat = cv2.GaussianBlur(heat, (0, 0), softness)
    strength = np.clip((heat - HEAT_FROM) / (HEAT_FULL - HEAT_FROM), 0, 1)[..., None]
    low, high = (np.array(c, np.float32) for c in HEAT_COLORS)
    colour = low + (high - low) * strength
    alpha = covered[..., None] * (HEAT_OPACITY[0] + (HEAT_OPACITY[1] - HEAT_OPACITY[0]) * strength)
    image[:] = (image.astype(np.float32) * (1 - alpha) + colour * alpha).astype(np.uint8)


def draw_boxes(image: np.ndarray, flagged: list[dict], frame_shape, label: bool = True) -> None:
    """The flagged patches' boxes (event box dicts, frame pixels, highest first), in place; `label`: the
    highest one's score beside it."""
    if not flagged:
        return
    thickness = max(1, round(image.shape[1] / 400))
    scale = max(0.4, image.shape[1] / 1400)
    corners = _scale_boxes([[b["x"], b["y"], b["w"], b["h"]] for b in flagged], frame_shape, image.shape)
    for x0, y0, x1, y1 in corners:
        cv2.rectangle(image, (int(x0), int(y0)), (int(x1) - 1, int(y1) - 1), BOX_COLOR, thickness, cv2.LINE_AA)
    if label:
        x0, y0 = int(corners[0][0]), int(corners[0][1])
        text = f"{flagged[0]['score']:.2f}"
        (width, height), base = cv2.getTextSize(text, FONT, scale, 1)
        y = y0 - 4 if y0 - 4 - height > 0 else int(corners[0][3]) + height + 4
        cv2.rectangle(image, (x0, y - height - 2), (x0 + width + 4, y + base), BOX_COLOR, -1)
        cv2.putText(image, text, (x0 + 2, y), FONT, scale, CAPTION_COLOR, 1, cv2.LINE_AA)


def caption_height(width: int) -> int:
    """Pixels of the caption bar of an image this wide (even, as video frames need)."""
    (_, height), base = cv2.getTextSize("Ag", FONT, _caption_scale(width), 1)
    return (height + base + 9) // 2 * 2


def _caption_scale(width: int) -> float:
    return max(0.35, width / 1600)


def with_caption(image: np.ndarray, text: str, at_top: bool = True) -> np.ndarray:
    """The image with a dark bar of white text added above (or below) it, hiding nothing; the text shrinks
    to fit a narrow image."""
    width = image.shape[1]
    bar = np.full((caption_height(width), width, 3), 24, np.uint8)
    scale = _caption_scale(width)
    scale *= min(1.0, (width - 12) / cv2.getTextSize(text, FONT, scale, 1)[0][0])
    (_, height), _ = cv2.getTextSize(text, FONT, scale, 1)
    cv2.putText(bar, text, (6, (bar.shape[0] + height) // 2 - 1), FONT, scale, CAPTION_COLOR, 1, cv2.LINE_AA)
    return np.vstack([bar, image] if at_top else [image, bar])


def render_snapshot(
    preview: np.ndarray,
    patch_scores: np.ndarray,
    boxes: np.ndarray,
    frame_shape: tuple[int, int],
    level: float,
    flagged: list[dict],
    text: str,
) -> np.ndarray:
    """The annotated snapshot (BGR) of a preview image; `boxes` are every patch position's, in frame pixels."""
    image = to_bgr(preview)
    if image.shape[1] < SNAPSHOT_MIN_WIDTH:
        factor = SNAPSHOT_MIN_WIDTH / image.shape[1]
        image = cv2.resize(image, (SNAPSHOT_MIN_WIDTH, round(image.shape[0] * factor)), interpolation=cv2.INTER_CUBIC)
    else:
        image = image.copy()
    heat_overlay(image, patch_scores, boxes, frame_shape, level)
    draw_boxes(image, flagged, frame_shape)
    return with_caption(image, text)


def write_jpeg(path: Path, image: np.ndarray, quality: int) -> int:
    """Write atomically (a reader never sees half a file); returns the bytes written."""
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise OSError(f"cannot encode {path.name}")
    write_atomic(path, data.tobytes())
    return data.nbytes


def write_atomic(path: Path, data: bytes) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(data)
    os.replace(partial, path)
