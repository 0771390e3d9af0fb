"""Whether a camera is watched: its scores reach the alerter but every one is rejected is a blind camera.

Frames can keep flowing through capture, patch stage and scorers, every stage up
and `vad_frames_scored_total` rising, while the alerter rejects each result (a
foreign stream holding the camera, a scorer running another model, ...): no event
can fire, yet nothing else looks wrong. `vad_camera_blind` is 1 while a camera's
scores have all been rejected for `BLIND_SECONDS`, and rejected ones still
arrive; one accepted message clears it. A camera that sends nothing is not blind
here (that is `vad_camera_up`, `VadNoFramesScored`).
"""

from __future__ import annotations

from . import telemetry

BLIND_SECONDS = 10.0


class CameraWatch:
    def __init__(self, camera: str, after: float = BLIND_SECONDS):
        self.after = after
        self._rejecting_since: float | None = None  # first rejection after the last accepted message
        self._last_rejected = float("-inf")
        self._gauge = telemetry.CAMERA_BLIND.labels(camera)
        self._gauge.set(0)

    def accepted(self) -> None:
        self._rejecting_since = None

    def rejected(self, now: float) -> None:
        if self._rejecting_since is None:
            self._rejecting_since = now
        self._last_rejected = now

    def blind(self, now: float) -> bool:
        return (
            self._rejecting_since is not None
            and now - self._rejecting_since >= self.after
            and now - self._last_rejected < self.after
        )

    def update(self, now: float) -> None:
        self._gauge.set(int(self.blind(now)))
