"""A generated scene to try the own-camera path on: `vad scene --out DIR`.

A static camera looks down a walkway in perspective: a building front at the
top, grass and paving below, a bench and a lamp post. Walkers come and go on
the walkway, keeping to their side: on the left half they walk away from the
camera, on the right half towards it, at walking speeds (each its own, about
1.3 to 1.9 pixels a frame at the bottom edge, less further away). Sensor noise
and a slow drift of the light are added to every frame; frames are drawn with
sub-pixel accuracy, so slow far-away walkers move smoothly.

Each test clip (a minute) holds two anomalies of one of four kinds, half a
clip apart:
  fast         someone running, 3.5 times walking speed, in the direction of their side
  cart         a cart pushed at walking speed: another shape and size
  against      a walker on the wrong side, against the flow
  left_object  a bag on the walkway, still from the frame it is put down (the first one is picked up again)

A frame is labelled anomalous while any part of an anomaly is in view.
Written to DIR:
  train/normal.mp4       normal footage to train on (`--train-minutes`)
  calibrate/normal.mp4   normal footage of another day: more people, brighter, noisier
  test/KIND.mp4          that other day with two anomalies, one clip per kind
  labels.csv             clip,frame,label for every test frame (`vad eval clips --labels`)
  scene.json             the settings and seed, and the runs of anomalous frames of each clip
  preview.png            a frame of each clip, of each test clip one with its anomaly in view

The point is not realism but a second scene with known answers, quick to make:
a model trained on the walkers can be checked on what it should find (a fast
or oddly shaped mover) and on what its motion-speed input cannot see (the
direction of a walker, an object that does not move).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

KINDS = ("fast", "cart", "against", "left_object")
FOURCC = "mp4v"
SUBPIXEL = 4  # drawing coordinates in 1/16 pixel
WARM_UP = 300  # frames simulated before a clip starts, so that it starts with people in view


@dataclass(frozen=True)
class SceneSpec:
    height: int = 180
    width: int = 240
    fps: float = 10.0
    walkers: float = 5.0  # people in view on average
    speed: float = 1.6  # walking speed at the bottom edge, pixels per frame (each walker within +-20 %)
    brightness: float = 1.0  # overall light level
    noise: float = 2.0  # sensor noise, standard deviation in gray levels
    drift: float = 0.08  # the light drifts by this share up and down ...
    drift_seconds: float = 120.0  # ... over this period


# The other day the calibration footage and the test clips show.
OTHER_DAY = {"walkers": 7.0, "brightness": 1.15, "noise": 3.0}


class Geometry:
    """Perspective of the walkway: things at image row y appear `scale(y)` times their size at the bottom edge."""

    def __init__(self, spec: SceneSpec):
        self.spec = spec
        self.horizon = round(0.2 * spec.height)  # the walkway's far end, at the foot of the building
        self.vanish = -0.15 * spec.height  # vanishing point row (above the frame)
        self.half_width = 0.24 * spec.width  # half the walkway's width at the bottom edge
        self.person = 0.24 * spec.height  # a walker's height at the bottom edge

    def scale(self, y: float) -> float:
        return (y - self.vanish) / (self.spec.height - self.vanish)

    def x_at(self, across: float, y: float) -> float:
        """Image column of a point `across` the walkway (-1 left edge, 1 right edge) at row y."""
        return self.spec.width / 2 + across * self.half_width * self.scale(y)

    def frames_to_cross(self, speed: float) -> float:
        """Frames a walker at `speed` (bottom-edge pixels per frame) takes from the far end to out of view."""
        far, near = self.horizon - self.vanish, self.spec.height + self.person - self.vanish
        return (self.spec.height - self.vanish) / speed * math.log(near / far)


@dataclass
class Mover:
    kind: str  # walker, runner, cart or bag
    y: float  # row of the feet (bottom of the shape)
    across: float  # position across the walkway, -1 .. 1
    direction: int  # -1 away from the camera (up the image), 1 towards it, 0 still
    speed: float  # bottom-edge pixels per frame
    tone: int  # gray level of the clothes or the body
    size: float = 1.0
    phase: float = 0.0  # walking cycle
    anomaly: bool = False
    until: int | None = None  # the frame it is taken away at (a bag picked up), if ever


def background(spec: SceneSpec, geometry: Geometry, rng: np.random.Generator) -> np.ndarray:
    """The static scene, float32 gray levels."""
    h, w = spec.height, spec.width

    def texture(sigma: float, amplitude: float) -> np.ndarray:
        return cv2.GaussianBlur(rng.normal(0, amplitude, (h, w)).astype(np.float32), (0, 0), sigma)

    image = 95 + texture(1.2, 40) + texture(0.5, 8)  # grass
    top = geometry.horizon
    image[:top] = 120 + texture(3, 20)[:top]  # the building front, with rows of windows
    for row in range(4, top - 6, 14):
        for col in range(6, w - 10, 18):
            image[row : row + 8, col : col + 10] = 60 + rng.normal(0, 6)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    scale = (ys - geometry.vanish) / (h - geometry.vanish)
    across = (xs - w / 2) / (geometry.half_width * scale)
    walkway = (np.abs(across) <= 1) & (ys >= top)
    depth = 1 / scale  # proportional to the distance from the camera
    paving = 150 + texture(0.7, 6)
    paving -= 25 * ((np.abs(across * 4 - np.round(across * 4)) * geometry.half_width * scale / 4) < 0.6)
    paving -= 25 * ((np.abs(depth * 6 - np.round(depth * 6)) / 6 / depth**2 * (h - geometry.vanish)) < 0.6)
    image = np.where(walkway, paving, image)
    image[(np.abs(np.abs(across) - 1) * geometry.half_width * scale < 1.2) & (ys >= top)] = 200  # kerbs
    bench_y, bench_x = round(0.7 * h), round(0.1 * w)  # a bench and a lamp post on the grass
    image[bench_y - 10 : bench_y, bench_x : bench_x + 28] = 70
    image[bench_y - 14 : bench_y - 10, bench_x : bench_x + 28] = 175
    post_x = round(0.86 * w)
    image[round(0.25 * h) : round(0.75 * h), post_x : post_x + 3] = 45
    image[round(0.25 * h) - 6 : round(0.25 * h), post_x - 4 : post_x + 7] = 220
    return image.astype(np.float32)


def _point(x: float, y: float) -> tuple[int, int]:
    return round(x * (1 << SUBPIXEL)), round(y * (1 << SUBPIXEL))


def _length(v: float) -> int:
    return max(1, round(v * (1 << SUBPIXEL)))


def draw(image: np.ndarray, mover: Mover, geometry: Geometry) -> None:
    """Draw a mover into `image` (float32), anti-aliased, at sub-pixel positions."""
    s = geometry.scale(mover.y)
    h = geometry.person * s * mover.size
    x, y = geometry.x_at(mover.across, mover.y), mover.y
    tone = float(mover.tone)
    aa = cv2.LINE_AA
    if mover.kind == "bag":
        cv2.rectangle(image, _point(x - 0.14 * h, y - 0.2 * h), _point(x + 0.14 * h, y), tone, -1, aa, SUBPIXEL)
        return
    if mover.kind == "cart":  # a wide, low box on two wheels with a handle
        cv2.rectangle(
            image, _point(x - 0.5 * h, y - 0.55 * h), _point(x + 0.5 * h, y - 0.12 * h), tone, -1, aa, SUBPIXEL
        )
        for side in (-0.35, 0.35):
            cv2.circle(image, _point(x + side * h, y - 0.08 * h), _length(0.08 * h), 30.0, -1, aa, SUBPIXEL)
        handle = max(1, round(0.05 * h))  # a line's thickness is in whole pixels, not SUBPIXEL units
        cv2.line(image, _point(x, y - 0.55 * h), _point(x, y - 0.8 * h), 40.0, handle, aa, SUBPIXEL)
        return
    swing = 0.07 * h * math.sin(mover.phase)  # legs take turns, as the walker comes closer or goes away
    for side, lift in ((-1, swing), (1, -swing)):
        top_left = _point(x + side * 0.09 * h - 0.05 * h, y - 0.5 * h)
        bottom_right = _point(x + side * 0.09 * h + 0.05 * h, y - max(lift, 0))
        cv2.rectangle(image, top_left, bottom_right, 0.6 * tone, -1, aa, SUBPIXEL)
    body = _point(x, y - 0.66 * h)
    cv2.ellipse(image, body, (_length(0.17 * h), _length(0.2 * h)), 0, 0, 360, tone, -1, aa, SUBPIXEL)
    cv2.circle(image, _point(x, y - 0.92 * h), _length(0.09 * h), 165.0, -1, aa, SUBPIXEL)


class Scene:
    """The walkway's people, frame after frame; `add` puts an anomaly among them."""

    def __init__(self, spec: SceneSpec, seed: int):
        self.spec = spec
        self.geometry = Geometry(spec)
        self.rng = np.random.default_rng(seed)
        self.background = background(spec, self.geometry, self.rng)
        self.movers: list[Mover] = []
        # People arriving per frame at each end, so that `walkers` are in view on average.
        self.arrivals = spec.walkers / self.geometry.frames_to_cross(spec.speed) / 2
        self.light_phase = self.rng.uniform(0, 2 * math.pi)
        self.t = 0

    def walker(self, direction: int, **changes) -> Mover:
        """A new walker entering on its side: at the far end going towards the camera, or at the bottom edge."""
        rng, g = self.rng, self.geometry
        mover = Mover(
            kind="walker",
            y=g.horizon + 1.0 if direction > 0 else self.spec.height + g.person,
            across=direction * rng.uniform(0.15, 0.85),
            direction=direction,
            speed=self.spec.speed * rng.uniform(0.8, 1.2),
            tone=int(rng.choice([rng.integers(25, 80), rng.integers(175, 235)])),
            size=rng.uniform(0.9, 1.1),
            phase=rng.uniform(0, 2 * math.pi),
        )
        return replace(mover, **changes)

    def add(self, mover: Mover) -> None:
        self.movers.append(mover)

    def step(self) -> None:
        g, rng = self.geometry, self.rng
        for direction in (-1, 1):
            for _ in range(rng.poisson(self.arrivals)):
                self.movers.append(self.walker(direction))
        for m in self.movers:
            if m.direction:
                advance = m.speed * g.scale(m.y)
                m.y += m.direction * advance
                m.phase += advance / (0.12 * g.person * g.scale(m.y) * m.size) * (0.5 if m.kind == "runner" else 1)
                side = 1 if m.across > 0 else -1  # everyone keeps to the side they entered on
                m.across = side * float(np.clip(side * m.across + rng.normal(0, 0.01), 0.1, 0.95))
        self.t += 1
        self.movers = [m for m in self.movers if self.in_scene(m) and (m.until is None or self.t < m.until)]

    def in_scene(self, m: Mover) -> bool:
        g = self.geometry
        return g.horizon <= m.y <= self.spec.height + g.person * 1.2

    def visible(self, m: Mover) -> bool:
        """Any part of the mover inside the frame."""
        return m.y - self.geometry.person * self.geometry.scale(m.y) * m.size < self.spec.height

    def render(self) -> np.ndarray:
        spec = self.spec
        image = self.background.copy()
        for m in sorted(self.movers, key=lambda m: m.y):  # nearer people hide those behind them
            draw(image, m, self.geometry)
        period = spec.drift_seconds * spec.fps
        light = spec.brightness * (1 + spec.drift * math.sin(2 * math.pi * self.t / period + self.light_phase))
        image = image * light + self.rng.normal(0, spec.noise, image.shape).astype(np.float32)
        return np.clip(image, 0, 255).astype(np.uint8)

    def anomaly_in_view(self) -> bool:
        return any(m.anomaly and self.visible(m) for m in self.movers)


def anomaly_schedule(scene: Scene, kind: str, frames: int) -> dict[int, Mover]:
    """Which anomaly enters at which frame of a test clip of `frames` frames: two of its kind, half a clip apart."""
    rng, speed = scene.rng, scene.spec.speed
    first = int(rng.integers(frames // 10, frames // 5))
    second = first + frames // 2
    if kind == "fast":  # a runner going away, then one coming closer
        runner = {"kind": "runner", "speed": 3.5 * speed, "anomaly": True}
        return {first: scene.walker(-1, **runner), second: scene.walker(1, **runner)}
    if kind == "cart":
        cart = {"kind": "cart", "size": 1.0, "anomaly": True}
        return {
            first: scene.walker(-1, tone=int(rng.integers(40, 90)), **cart),
            second: scene.walker(1, tone=int(rng.integers(40, 90)), **cart),
        }
    if kind == "against":  # each on the other side's half, against everyone else there
        return {
            first: scene.walker(-1, across=float(rng.uniform(0.3, 0.7)), anomaly=True),
            second: scene.walker(1, across=-float(rng.uniform(0.3, 0.7)), anomaly=True),
        }
    if kind == "left_object":  # a bag picked up again after a while, then one left for good

        def bag(until: int | None) -> Mover:
            y = scene.geometry.horizon + rng.uniform(0.45, 0.75) * (scene.spec.height - scene.geometry.horizon)
            tone = int(rng.integers(20, 60))
            return Mover("bag", y, float(rng.uniform(-0.6, 0.6)), 0, 0.0, tone, anomaly=True, until=until)

        return {first: bag(until=first + frames // 4), second: bag(until=None)}
    raise ValueError(f"unknown anomaly kind {kind!r}; kinds: {KINDS}")


def write_clip(path: Path, spec: SceneSpec, frames: int, seed: int, kind: str | None = None, progress=False):
    """Render a clip to `path`; its per-frame labels (1 while the anomaly is in view)."""
    scene = Scene(spec, seed)
    for _ in range(WARM_UP):
        scene.step()
    scene.t = 0
    schedule = anomaly_schedule(scene, kind, frames) if kind else {}
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*FOURCC), spec.fps, (spec.width, spec.height), False)
    if not writer.isOpened():
        raise OSError(f"cannot write {path} with the {FOURCC} codec")
    labels = np.zeros(frames, np.uint8)
    try:
        for n in tqdm(range(frames), desc=path.name, unit="frame", leave=False, disable=not progress):
            if n in schedule:
                scene.add(schedule[n])
            writer.write(scene.render())
            labels[n] = scene.anomaly_in_view()
            scene.step()
    finally:
        writer.release()
    return labels


def generate(
    out: str | Path,
    seed: int = 0,
    train_minutes: float = 2.0,
    calibrate_minutes: float = 1.0,
    test_seconds: float = 60.0,
    spec: SceneSpec = SceneSpec(),
    progress: bool = True,
) -> dict:
    """Write the clips, labels.csv and scene.json into `out` (module docstring); returns scene.json's content."""
    out = Path(out)
    other_day = replace(spec, **OTHER_DAY)
    per_minute = round(60 * spec.fps)
    write_clip(out / "train" / "normal.mp4", spec, round(train_minutes * per_minute), seed, progress=progress)
    write_clip(out / "calibrate" / "normal.mp4", other_day, round(calibrate_minutes * per_minute), seed + 1)
    events, shown, rows = {}, {}, []
    for n, kind in enumerate(KINDS):
        labels = write_clip(out / "test" / f"{kind}.mp4", other_day, round(test_seconds * spec.fps), seed + 2 + n, kind)
        rows += [(kind, frame, int(label)) for frame, label in enumerate(labels, start=1)]
        anomalous = np.flatnonzero(labels) + 1
        breaks = np.flatnonzero(np.diff(anomalous) > 1)  # runs of consecutive anomalous frames
        starts, ends = np.r_[anomalous[:1], anomalous[breaks + 1]], np.r_[anomalous[breaks], anomalous[-1:]]
        events[kind] = [[int(a), int(b)] for a, b in zip(starts, ends)]
        shown[kind] = int(anomalous[len(anomalous) // 2]) if len(anomalous) else 1
    with (out / "labels.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["clip", "frame", "label"])
        writer.writerows(rows)
    description = {
        "seed": seed,
        "scene": asdict(spec),
        "other_day": OTHER_DAY,
        "train_minutes": train_minutes,
        "calibrate_minutes": calibrate_minutes,
        "test_seconds": test_seconds,
        "anomalous_frames": events,
        "anomalous_frame_counts": {kind: sum(1 for k, _, label in rows if k == kind and label) for kind in KINDS},
    }
    (out / "scene.json").write_text(json.dumps(description, indent=1) + "\n")
    write_preview(out, shown)
    return description


def frame_of(video: Path, number: int) -> np.ndarray:
    """Frame `number` (1-based) of a video, gray."""
    capture = cv2.VideoCapture(str(video))
    try:
        for _ in range(number):
            ok, image = capture.read()
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    finally:
        capture.release()


def write_preview(out: Path, shown: dict[str, int]) -> None:
    """preview.png: a frame of each clip; of each test clip, its middle anomalous frame (`shown`), captioned."""
    tiles = [
        ("train", out / "train" / "normal.mp4", 1),
        ("calibrate: another day", out / "calibrate" / "normal.mp4", 1),
    ]
    tiles += [(f"test: {kind}", out / "test" / f"{kind}.mp4", number) for kind, number in shown.items()]
    images = []
    for caption, video, number in tiles:
        image = cv2.copyMakeBorder(frame_of(video, number), 18, 2, 2, 2, cv2.BORDER_CONSTANT, value=255)
        cv2.putText(image, f"{caption} (frame {number})", (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.38, 0, 1, cv2.LINE_AA)
        images.append(image)
    rows = [np.hstack(images[i : i + 3]) for i in range(0, len(images), 3)]
    cv2.imwrite(str(out / "preview.png"), np.vstack(rows))
