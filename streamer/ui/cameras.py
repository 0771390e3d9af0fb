"""Each camera's state for the page, from the daemon's own metrics: up or down, frame rate, last score.

Capture's /metrics says whether the source delivers (`vad_camera_up`) and how many
frames it has read (`vad_frames_captured_total`; the frame rate is its rate between
two samples); the alerter's says the last smoothed score (`vad_frame_score`). A
thread samples them every SAMPLE_SECONDS. The endpoints come from the pipeline
config, or from the Prometheus targets file `vad run` writes into the run dir.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from ..pipeline import config as pipeline_config

log = logging.getLogger(__name__)

SAMPLE_SECONDS = 5.0
SCRAPE_TIMEOUT = 2.0
MAX_METRICS_BYTES = 4 << 20


@dataclass
class CameraState:
    camera: str
    up: bool | None = None  # None: capture's metrics did not answer
    fps: float | None = None
    last_score: float | None = None
    frames: float | None = None  # captured since capture started
    dropped: float | None = None
    sampled: float | None = None  # when, seconds since the epoch


def targets_from_config(cfg: pipeline_config.PipelineConfig) -> dict[str, str]:
    """Process label ('capture[ID]', 'alerter', ...) -> its /metrics URL; none when metrics are off."""
    if not cfg.metrics.enabled:
        return {}
    host = cfg.metrics.host if cfg.metrics.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    return {
        ref.label: f"http://{host}:{pipeline_config.metrics_port(cfg, ref)}/metrics"
        for ref in pipeline_config.stage_refs(cfg)
        if ref.name in ("capture", "alerter")
    }


def targets_from_file(path: Path) -> dict[str, str]:
    """The same from a Prometheus file_sd targets file (`metrics.targets_file`); none if absent or unreadable."""
    try:
        groups = json.loads(path.read_text())
        return {
            group["labels"]["process"]: f"http://{group['targets'][0]}/metrics"
            for group in groups
            if group["labels"]["process"] == "alerter" or group["labels"]["process"].startswith("capture[")
        }
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return {}


def scrape(url: str) -> dict[tuple, float]:
    """(sample name, sorted labels) -> value."""
    with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT) as response:
        text = response.read(MAX_METRICS_BYTES).decode("utf-8", "replace")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


class CameraStates:
    def __init__(self, targets: dict[str, str], cameras: list[str]):
        self.captures = {
            label[len("capture[") : -1]: url for label, url in targets.items() if label.startswith("capture[")
        }
        self.alerter = targets.get("alerter")
        self.cameras = sorted(set(cameras) | set(self.captures))
        self._states = {camera: CameraState(camera) for camera in self.cameras}
        self._previous: dict[str, tuple[float, float]] = {}  # camera -> (monotonic time, frames) of the last sample
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def known(self) -> bool:
        """Whether there are metrics to read at all."""
        return bool(self.captures or self.alerter)

    def sample(self) -> None:
        scores = self._try(self.alerter) if self.alerter else None
        for camera in self.cameras:
            state = CameraState(camera, sampled=time.time())
            metrics = self._try(self.captures[camera]) if camera in self.captures else None
            if metrics is not None:
                label = (("camera", camera),)
                up = metrics.get(("vad_camera_up", label))
                state.up = None if up is None else up == 1
                state.frames = metrics.get(("vad_frames_captured_total", label))
                state.dropped = sum(
                    value
                    for (name, labels), value in metrics.items()
                    if name == "vad_frames_dropped_total" and ("camera", camera) in labels
                )
                state.fps = self._rate(camera, state.frames)
            if scores is not None:
                state.last_score = scores.get(("vad_frame_score", (("camera", camera),)))
            with self._lock:
                self._states[camera] = state

    def _rate(self, camera: str, frames: float | None) -> float | None:
        if frames is None:
            return None
        now = time.monotonic()
        previous = self._previous.get(camera)
        self._previous[camera] = (now, frames)
        if previous is None or now - previous[0] <= 0 or frames < previous[1]:  # a restarted capture counts anew
            return None
        return (frames - previous[1]) / (now - previous[0])

    @staticmethod
    def _try(url: str) -> dict | None:
        try:
            return scrape(url)
        except (OSError, ValueError) as e:
            log.debug("metrics at %s: %s", url, e)
            return None

    def states(self) -> list[CameraState]:
        with self._lock:
            return [self._states[camera] for camera in self.cameras]

    def start(self) -> None:
        if self.known and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="camera-states", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        wait = 1.0  # a second sample soon after the first gives a frame rate
        while True:
            self.sample()
            if self._stop.wait(wait):
                return
            wait = SAMPLE_SECONDS

    def stop(self) -> None:
        self._stop.set()
