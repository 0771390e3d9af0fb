"""Settings of what people look at: event media (`alerter.media`), retention (`alerter.retention`), the page (`ui`).

Kept apart from the stages' settings; `PipelineConfig` holds them and calls
`review_problems` once for the checks that span sections.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

UI_TOKEN_MIN_LENGTH = 16


@dataclass
class MediaConfig:
    """Per event: start and peak snapshots, the score trace, a clip; under RUN_DIR/snapshots/<event_id>/."""

    enabled: bool = True  # snapshots and score traces; capture then publishes a small JPEG of each frame
    clips: bool = True  # a video from `preroll_seconds` before the start to the end (needs `enabled`)
    # auto: H.264 in MP4 where the OpenCV build writes it, else VP8 in WebM (opencv-python-headless has no
    # H.264); vp9 writes MP4 at about five times VP8's CPU. Every choice plays in current browsers.
    clip_codec: Literal["auto", "h264", "vp8", "vp9"] = "auto"
    max_width: int = 640  # frames are downscaled to this width (pixels) before they leave capture
    jpeg_quality: int = 85
    preroll_seconds: float = 2.0
    max_clip_seconds: float = 60.0

    def __post_init__(self):
        if not 64 <= self.max_width <= 4096 or not 10 <= self.jpeg_quality <= 100:
            raise ValueError("max_width must be in 64..4096 and jpeg_quality in 10..100")
        if not 0 <= self.preroll_seconds <= 30 or not 1 <= self.max_clip_seconds <= 600:
            raise ValueError("preroll_seconds must be in 0..30 and max_clip_seconds in 1..600")


@dataclass
class RetentionConfig:
    """Ended events older than `days`, then the oldest while media exceed `max_mb`: files and log rows go."""

    days: float | None = 30.0  # null: keep whatever the disk cap allows
    max_mb: float | None = 2000.0  # disk used by RUN_DIR/snapshots; null: no cap

    def __post_init__(self):
        if (self.days is not None and self.days <= 0) or (self.max_mb is not None and self.max_mb <= 0):
            raise ValueError("days and max_mb must be > 0 (or null for no limit)")


@dataclass
class UiConfig:
    """The event review page (`vad ui`; started by `vad run` when enabled)."""

    enabled: bool = False
    host: str = "127.0.0.1"  # any other address needs a token and security.allow_remote: true
    port: int = 8080
    # Required beyond loopback: clients send `Authorization: Bearer TOKEN`, a browser opens /?token=TOKEN once.
    token: str | None = None

    def __post_init__(self):
        if self.token == "":  # an unset ${VAD_UI_TOKEN:-}
            self.token = None
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port must be in 1..65535, got {self.port}")
        if self.token is not None and len(self.token) < UI_TOKEN_MIN_LENGTH:
            raise ValueError(f"token must be at least {UI_TOKEN_MIN_LENGTH} characters")


def review_problems(ui: UiConfig, allow_remote: bool, is_loopback) -> list[str]:
    """Problems across sections: a page reachable from other hosts needs a token and security.allow_remote."""
    if is_loopback(f"tcp://{ui.host}:0"):
        return []
    problems = []
    if ui.token is None:
        problems.append(f"ui.token: required to serve the page on {ui.host} (any address but loopback)")
    if not allow_remote:
        problems.append(
            f"ui.host: {ui.host} is reachable from other hosts; set security.allow_remote: true to allow it"
        )
    return problems
