"""30x30 patches over a frame, with optional motion channels.

The one patch module: trainers and the live pipeline both call it, so a model
sees at run time exactly what it saw in training.

Channels, by `motion`:
  none   [I_t]                          appearance only
  diff   [I_t, |I_t - I_{t-1}|]         appearance + absolute frame difference
  flow   [I_t, |optical flow|]          appearance + speed (dense flow magnitude, Farneback or DIS)
  flowbins [I_t, speed bin 1, ..., K]   appearance + per-pixel speed histogram channels
  stack  [I_{t-depth+1}, ..., I_t]      a short temporal stack

A frame difference mixes speed with contrast; flow magnitude is speed in pixels
per frame, the main cue for Ped2's bicycles, skateboards and cars. Flow runs at
`flow_scale` of the working resolution to stay cheap; its magnitude is stored as
uint8 with 255 = `flow_max` pixels per frame (faster saturates).

Why speed bins: a ReLU autoencoder is nearly scale-equivariant, so it
reconstructs a brighter (faster) flow blob almost as well as a normal one. With
one channel per speed band (a per-pixel form of the histogram-of-optical-flow
features of the Ped2 literature), bands that normal video never reaches stay
empty in training: the network learns to output zero there, and every fast
pixel becomes reconstruction error. Channel k is 255 where the speed lies in
[flow_bins[k], flow_bins[k+1]) pixels per frame (the last band is open-ended).

`appearance: false` drops I_t, leaving motion channels only; `appearance_mask`
keeps I_t only where the flow speed reaches the first band edge (0 elsewhere):
what the movers look like, without the background behind them.

Extra channels for 'flow' and 'flowbins', after the motion channels, in this order:
  flow_signed  [dx, dy]   the flow of the patch's moving pixels relative to their
                          mean, uint8 with 128 = 0 (and still pixels) and 255 =
                          +flow_max: a walker's legs move against the torso, a
                          rider or a skater glides
  context k    the motion channels of the window k times the patch, centred on it,
               shrunk to the patch size: the shape of the whole mover around it
Only the motion channels themselves feed `motion_energy` and the gate.

Patches leave here as uint8 (cheap to ship between processes); `to_model_input`
turns them into the float32 [0, 1] batch that models take.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass
from typing import Literal, get_args

import cv2
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

Motion = Literal["none", "diff", "flow", "flowbins", "stack"]
MOTION_MODES = get_args(Motion)
# Dense optical flow: OpenCV's Farneback, or its DIS flow at one of its presets (several times cheaper).
FlowMethod = Literal["farneback", "dis_ultrafast", "dis_fast", "dis_medium"]
FLOW_METHODS = get_args(FlowMethod)


@dataclass(frozen=True)
class PatchSpec:
    size: int = 30
    stride: int = 15
    motion: Motion = "flow"
    depth: int = 2  # frames in a 'stack'; ignored by the other modes
    flow_scale: float = 0.75  # 'flow': resolution factor the flow is computed at
    flow_method: FlowMethod = "farneback"  # the flow_levels/window/iterations settings are Farneback's alone
    flow_levels: int = 1  # Farneback pyramid levels: more follow larger displacements
    flow_window: int = 7  # Farneback averaging window, pixels: larger is smoother, blurs small movers
    flow_iterations: int = 1  # Farneback iterations per level
    flow_max: float = 8.0  # 'flow': pixels per frame (at working resolution) stored as 255
    flow_bins: tuple[float, ...] = (0.5, 1.5, 3.0)  # 'flowbins': lower edges of the speed bands, px/frame
    appearance: bool = True  # False drops I_t from 'diff', 'flow' and 'flowbins': motion channels only
    appearance_mask: bool = False  # I_t only where the flow speed reaches flow_bins[0], 0 elsewhere
    flow_signed: bool = False  # add (dx, dy) relative to the mean flow of the patch's moving pixels
    context: int = 1  # > 1: add the motion channels of a window `context` times the patch, shrunk to its size
    frame_size: tuple[int, int] | None = None  # (height, width) frames are resized to; None keeps them

    def __post_init__(self):
        if self.motion not in MOTION_MODES:
            raise ValueError(f"patch motion must be one of {MOTION_MODES}, got {self.motion!r}")
        if self.size < 2 or self.stride < 1:
            raise ValueError(f"patch size must be >= 2 and stride >= 1, got {self.size}, {self.stride}")
        if self.motion == "stack" and self.depth < 2:
            raise ValueError(f"a temporal stack needs depth >= 2, got {self.depth}")
        if self.flow_method not in FLOW_METHODS:
            raise ValueError(f"flow_method must be one of {FLOW_METHODS}, got {self.flow_method!r}")
        if not 0 < self.flow_scale <= 1 or self.flow_max <= 0:
            raise ValueError(f"flow_scale must be in (0, 1] and flow_max > 0, got {self.flow_scale}, {self.flow_max}")
        if min(self.flow_levels, self.flow_iterations) < 1 or self.flow_window < 3:
            raise ValueError(
                f"flow_levels and flow_iterations must be >= 1 and flow_window >= 3, got "
                f"{self.flow_levels}, {self.flow_iterations}, {self.flow_window}"
            )
        flow = self.motion in ("flow", "flowbins")
        if (self.appearance_mask and not (flow and self.appearance)) or (self.flow_signed and not flow):
            raise ValueError("appearance_mask (with appearance) and flow_signed need motion 'flow' or 'flowbins'")
        if self.context < 1 or (self.context > 1 and not flow):
            raise ValueError(f"context must be >= 1, and > 1 only with motion 'flow' or 'flowbins', got {self.context}")
        bins = tuple(float(b) for b in self.flow_bins)
        if not bins or bins[0] <= 0 or any(b >= c for b, c in zip(bins, bins[1:])):
            raise ValueError(f"flow_bins must be positive and increasing, got {self.flow_bins}")
        object.__setattr__(self, "flow_bins", bins)
        if self.frame_size is not None:
            h, w = self.frame_size
            if h < self.size or w < self.size:
                raise ValueError(f"frame_size {self.frame_size} is smaller than one {self.size}px patch")
            object.__setattr__(self, "frame_size", (int(h), int(w)))

    @property
    def motion_channels(self) -> slice:
        """Where the motion channels sit among a patch's channels (the ones `motion_energy` reads)."""
        count = {"none": 0, "diff": 1, "flow": 1, "flowbins": len(self.flow_bins), "stack": self.depth}[self.motion]
        first = int(self.motion not in ("none", "stack") and self.appearance)
        return slice(first, first + count)

    @property
    def channels(self) -> int:
        motion = self.motion_channels
        appearance = self.motion == "none" or motion.start
        extras = 2 * self.flow_signed + (motion.stop - motion.start) * (self.context > 1)
        return appearance + motion.stop - motion.start + extras

    @property
    def history(self) -> int:
        """How many past frames a patch needs besides the current one."""
        return {"none": 0, "stack": self.depth - 1}.get(self.motion, 1)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["frame_size"] = list(self.frame_size) if self.frame_size else None
        d["flow_bins"] = list(self.flow_bins)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PatchSpec":
        d = dict(d)
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown patch settings: {sorted(unknown)}")
        if d.get("frame_size") is not None:
            d["frame_size"] = tuple(d["frame_size"])
        if "flow_bins" in d:
            d["flow_bins"] = tuple(d["flow_bins"])
        return cls(**d)


def grid_origins(length: int, size: int, stride: int) -> np.ndarray:
    """Patch start offsets along one axis; a last patch flush with the edge covers any remainder."""
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] != length - size:
        starts.append(length - size)
    return np.asarray(starts, dtype=np.int32)


def patch_boxes(height: int, width: int, size: int, stride: int) -> np.ndarray:
    """(N, 4) int32 boxes (x, y, w, h), row-major: the order patches come out in."""
    ys = grid_origins(height, size, stride)
    xs = grid_origins(width, size, stride)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    n = yy.size
    return np.stack([xx.ravel(), yy.ravel(), np.full(n, size, np.int32), np.full(n, size, np.int32)], axis=1).astype(
        np.int32
    )


_DIS_PRESETS = {
    "dis_ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "dis_fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "dis_medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}
_dis_instances: dict[str, cv2.DISOpticalFlow] = {}  # one per preset and process: creating one allocates


def _flow_at_scale(previous: np.ndarray, current: np.ndarray, spec: PatchSpec) -> np.ndarray:
    """(h, w, 2) flow by the spec's method, computed and returned at `flow_scale` of the frames' size."""
    if spec.flow_scale != 1:
        h, w = current.shape
        size = (max(1, round(w * spec.flow_scale)), max(1, round(h * spec.flow_scale)))
        previous = cv2.resize(previous, size, interpolation=cv2.INTER_AREA)
        current = cv2.resize(current, size, interpolation=cv2.INTER_AREA)
    if spec.flow_method == "farneback":
        return cv2.calcOpticalFlowFarneback(
            previous, current, None, 0.5, spec.flow_levels, spec.flow_window, spec.flow_iterations, 5, 1.1, 0
        )
    dis = _dis_instances.get(spec.flow_method)
    if dis is None:
        dis = _dis_instances[spec.flow_method] = cv2.DISOpticalFlow_create(_DIS_PRESETS[spec.flow_method])
    return dis.calc(previous, current, None)


def _to_full_size(plane: np.ndarray, shape: tuple[int, int], scale: float) -> np.ndarray:
    """A flow-derived plane computed at `scale`, resized to `shape` and in full-resolution pixels."""
    if scale == 1:
        return plane
    return cv2.resize(plane, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR) / scale


def flow_speed(previous: np.ndarray, current: np.ndarray, spec: PatchSpec) -> np.ndarray:
    """Optical-flow speed (the spec's flow settings), float32 pixels per frame at full resolution."""
    return _flow_fields(previous, current, spec)[0]


def _flow_fields(previous: np.ndarray, current: np.ndarray, spec: PatchSpec) -> tuple[np.ndarray, np.ndarray | None]:
    """Speed (H, W) and, with `flow_signed`, the flow itself (2, H, W), float32 full-resolution pixels per frame."""
    flow = _flow_at_scale(previous, current, spec)
    speed = _to_full_size(cv2.magnitude(flow[..., 0], flow[..., 1]), current.shape, spec.flow_scale)
    if not spec.flow_signed:
        return speed, None
    return speed, np.stack(
        [_to_full_size(np.ascontiguousarray(flow[..., i]), current.shape, spec.flow_scale) for i in (0, 1)]
    )


def speed_bins(speed: np.ndarray, edges: tuple[float, ...]) -> np.ndarray:
    """(K, H, W) uint8: 255 where speed is in [edges[k], edges[k+1]), the last band open-ended."""
    upper = edges[1:] + (np.inf,)
    return np.stack([((speed >= lo) & (speed < hi)).astype(np.uint8) * 255 for lo, hi in zip(edges, upper)])


def channel_planes(frames: list[np.ndarray], spec: PatchSpec) -> np.ndarray:
    """(C, H, W) uint8 planes (appearance and motion) from frames ordered oldest to newest."""
    return _planes(frames, spec)[0]


def _planes(frames: list[np.ndarray], spec: PatchSpec) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """`channel_planes`, with the speed and (given `flow_signed`) the flow they came from."""
    current = frames[-1]
    if spec.motion == "none":
        return current[None], None, None
    if spec.motion == "stack":
        return np.stack(frames), None, None
    speed = flow = None
    if spec.motion == "diff":
        motion = cv2.absdiff(current, frames[-2])[None]
    else:
        speed, flow = _flow_fields(frames[-2], current, spec)
        if spec.motion == "flow":
            motion = cv2.convertScaleAbs(speed, alpha=255.0 / spec.flow_max)[None]
        else:
            motion = speed_bins(speed, spec.flow_bins)
    if not spec.appearance:
        return motion, speed, flow
    look = np.where(speed >= spec.flow_bins[0], current, 0).astype(np.uint8) if spec.appearance_mask else current
    return np.concatenate([look[None], motion]), speed, flow


def patches_from_frames(frames: list[np.ndarray], spec: PatchSpec) -> np.ndarray:
    """Patches of the newest of `frames` (oldest first, spec.history + 1 of them, already prepared)."""
    planes, speed, flow = _planes(frames, spec)
    patches = [extract_patches(planes, spec.size, spec.stride)]
    if spec.flow_signed:
        patches.append(relative_flow_patches(flow, speed, spec))
    if spec.context > 1:
        patches.append(context_patches(planes[spec.motion_channels], spec))
    return np.concatenate(patches, axis=1) if len(patches) > 1 else patches[0]


def relative_flow_patches(flow: np.ndarray, speed: np.ndarray, spec: PatchSpec) -> np.ndarray:
    """(N, 2, S, S) uint8: the flow of each patch's moving pixels (speed >= flow_bins[0]) minus their mean.

    128 is no motion relative to the mover (and every still pixel), 0 and 255 are -/+ flow_max pixels per frame.
    """
    flow = extract_patches(flow, spec.size, spec.stride)  # (N, 2, S, S) float32
    moving = extract_patches(speed[None], spec.size, spec.stride) >= spec.flow_bins[0]  # (N, 1, S, S)
    count = moving.sum(axis=(2, 3), keepdims=True)
    mean = (flow * moving).sum(axis=(2, 3), keepdims=True) / np.maximum(count, 1)
    relative = 128.0 + np.where(moving, flow - mean, 0.0) * (127.0 / spec.flow_max)
    return np.clip(np.rint(relative), 0, 255).astype(np.uint8)


def context_patches(planes: np.ndarray, spec: PatchSpec) -> np.ndarray:
    """(N, C, S, S) uint8: the window `spec.context` times each patch, centred on it, shrunk to S x S.

    The planes are shrunk once and padded with zeros, so windows reaching past the frame see nothing moving there.
    """
    c, h, w = planes.shape
    k, size = spec.context, spec.size
    small_size = (max(1, round(w / k)), max(1, round(h / k)))
    small = np.stack([cv2.resize(plane, small_size, interpolation=cv2.INTER_AREA) for plane in planes])
    padded = np.pad(small, ((0, 0), (size, size), (size, size)))
    windows = sliding_window_view(padded, (size, size), axis=(1, 2))
    # a patch centred at (y + S/2) sits at (y + S/2) / k in the shrunk planes; its window starts S/2 before that
    ys = np.rint((grid_origins(h, size, spec.stride) + size / 2) / k).astype(int) - size // 2 + size
    xs = np.rint((grid_origins(w, size, spec.stride) + size / 2) / k).astype(int) - size // 2 + size
    picked = windows[:, ys][:, :, xs]
    return np.ascontiguousarray(picked.transpose(1, 2, 0, 3, 4).reshape(-1, c, size, size))


def extract_patches(planes: np.ndarray, size: int, stride: int) -> np.ndarray:
    """(N, C, size, size) uint8 patches of (C, H, W) planes on the `patch_boxes` grid, no per-patch loop."""
    c, h, w = planes.shape
    windows = sliding_window_view(planes, (size, size), axis=(1, 2)).transpose(1, 2, 0, 3, 4)  # (H-s+1, W-s+1, C, s, s)
    ys = grid_origins(h, size, stride)
    xs = grid_origins(w, size, stride)
    # One gather straight into patch order (rows, cols, C, s, s): indexing rows and columns one after the
    # other would first copy every window of the picked rows, about 15 times the patches' size.
    return windows[ys[:, None], xs[None, :]].reshape(-1, c, size, size)


def to_model_input(patches: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 patches -> float32 in [0, 1], the input every exported model takes; into `out` if given."""
    return np.multiply(patches, np.float32(1.0 / 255.0), out=out, dtype=np.float32)


def motion_energy(patches: np.ndarray, spec: PatchSpec) -> np.ndarray:
    """How much moves in each patch, 0-255: the mean of its motion channels (any band, for speed bins)."""
    if spec.motion == "none":
        return np.zeros(len(patches), dtype=np.float32)
    if spec.motion == "stack":
        newest, previous = patches[:, -1].astype(np.int16), patches[:, -2].astype(np.int16)
        return np.abs(newest - previous).reshape(len(patches), -1).mean(axis=1, dtype=np.float32)
    motion = patches[:, spec.motion_channels]
    if spec.motion == "flowbins":
        motion = motion.max(axis=1, keepdims=True)
    return motion.reshape(len(patches), -1).mean(axis=1, dtype=np.float32)


class PatchExtractor:
    """Turns a stream of frames into patches, keeping the past frames motion channels need.

    Causal: the first frames of a stream repeat the oldest frame they have, so a
    difference channel starts at zero rather than waiting for history.
    """

    def __init__(self, spec: PatchSpec):
        self.spec = spec
        self._history: deque[np.ndarray] = deque(maxlen=spec.history + 1)
        self._boxes: np.ndarray | None = None
        self._boxes_shape: tuple[int, int] | None = None

    def reset(self) -> None:
        self._history.clear()

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """A grayscale uint8 frame resized to the spec's frame size."""
        if image.ndim != 2 or image.dtype != np.uint8:
            raise ValueError(f"expected a 2-D uint8 grayscale frame, got {image.dtype} {image.shape}")
        target = self.spec.frame_size
        if target is not None and image.shape != target:
            image = cv2.resize(image, (target[1], target[0]), interpolation=cv2.INTER_AREA)
        return image

    def push(self, image: np.ndarray) -> np.ndarray:
        """Patches (N, C, S, S) uint8 of this frame; boxes in `boxes_for(image shape)`."""
        self.observe(image)
        frames = list(self._history)
        frames = [frames[0]] * (self._history.maxlen - len(frames)) + frames
        return patches_from_frames(frames, self.spec)

    def observe(self, image: np.ndarray) -> None:
        """Take a frame into the history without cutting its patches (no flow): the past of later frames."""
        image = self.prepare(image)
        if self._history and self._history[-1].shape != image.shape:
            self.reset()  # the view changed size: old frames no longer line up
        self._history.append(image)

    def boxes(self, image_shape: tuple[int, int]) -> np.ndarray:
        """Boxes (x, y, w, h) of the patches `push` returns, in the original frame's pixels."""
        image_shape = tuple(image_shape[:2])
        if self._boxes is None or self._boxes_shape != image_shape:
            h, w = self.spec.frame_size or image_shape
            boxes = patch_boxes(h, w, self.spec.size, self.spec.stride).astype(np.float64)
            boxes[:, [0, 2]] *= image_shape[1] / w
            boxes[:, [1, 3]] *= image_shape[0] / h
            self._boxes = np.rint(boxes).astype(np.int32)
            self._boxes_shape = image_shape
        return self._boxes
