"""Serving the review page: for a pipeline config or a bare run dir, in the foreground (`vad ui`, `vad run`'s
child when `ui.enabled`) or from a thread (`vad demo`)."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from starlette.applications import Starlette

from ..config import ConfigError
from ..model import ModelCard, card_path_for
from ..pipeline import config as pipeline_config
from ..pipeline.review_config import UI_TOKEN_MIN_LENGTH
from .app import create_app
from .cameras import CameraStates, targets_from_config, targets_from_file
from .store import EventStore

log = logging.getLogger(__name__)

TOKEN_ENV = "VAD_UI_TOKEN"
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}


@dataclass
class Site:
    app: Starlette
    host: str
    port: int
    token: str | None

    @property
    def url(self) -> str:
        host = self.host if self.host not in ("0.0.0.0", "::", "") else socket.gethostname()
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}/"


def _allowed_hosts(host: str, token: str | None) -> set[str] | None:
    """Host names a request may name: loopback's alone when served there (DNS rebinding); any behind a token."""
    if pipeline_config.is_loopback(f"tcp://{host}:0"):
        return LOOPBACK_NAMES | {host.lower()}
    if token is None:
        raise ConfigError([f"ui: serving on {host} (any address but loopback) needs a token (ui.token, ${TOKEN_ENV})"])
    return None


def site_for_config(cfg: pipeline_config.PipelineConfig, host: str | None = None, port: int | None = None) -> Site:
    """The page for a pipeline: its event log and run dir, camera states from its metrics, its threshold."""
    host, port, token = host or cfg.ui.host, port or cfg.ui.port, cfg.ui.token
    if not cfg.security.allow_remote and not pipeline_config.is_loopback(f"tcp://{host}:0"):
        raise ConfigError([f"ui: {host} is reachable from other hosts; set security.allow_remote: true to allow it"])
    try:
        threshold = pipeline_config.scoring_settings(cfg, ModelCard.load(card_path_for(cfg.model))).threshold
        thresholds = {camera.id: threshold for camera in cfg.cameras}
    except Exception:  # the page works without: each camera's latest event states its threshold
        thresholds = None
    store = EventStore(cfg.alerter.event_log, cfg.run_dir)
    cameras = CameraStates(targets_from_config(cfg), [camera.id for camera in cfg.cameras])
    app = create_app(store, cameras, token, _allowed_hosts(host, token), thresholds)
    return Site(app, host, port, token)


def site_for_run_dir(run_dir: str | os.PathLike, host: str = "127.0.0.1", port: int = 8080) -> Site:
    """The page for a run dir alone: RUN_DIR/events.sqlite, and metrics from RUN_DIR/prometheus/targets.json."""
    run_dir = Path(run_dir).resolve()
    if not run_dir.is_dir():
        raise ConfigError([f"--run-dir: {run_dir} is not a folder"])
    token = os.environ.get(TOKEN_ENV) or None
    if token is not None and len(token) < UI_TOKEN_MIN_LENGTH:
        raise ConfigError([f"${TOKEN_ENV}: at least {UI_TOKEN_MIN_LENGTH} characters"])
    store = EventStore(run_dir / "events.sqlite", run_dir)
    targets = targets_from_file(run_dir / "prometheus" / "targets.json")
    app = create_app(store, CameraStates(targets, []), token, _allowed_hosts(host, token))
    return Site(app, host, port, token)


def check_port(host: str, port: int) -> None:
    """ConfigError now, rather than a server that dies in its thread, when the address is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as e:
            raise ConfigError([f"ui: cannot serve on {host}:{port}: {e.strerror or e}"]) from None


def _server(site: Site) -> uvicorn.Server:
    check_port(site.host, site.port)
    config = uvicorn.Config(site.app, host=site.host, port=site.port, log_level="warning", access_log=False)
    return uvicorn.Server(config)


def serve(site: Site) -> None:
    """Serve until SIGINT or SIGTERM."""
    server = _server(site)
    log.info("review page on %s", site.url)
    server.run()


class BackgroundServer:
    """The page served from a daemon thread of this process until `stop`."""

    def __init__(self, site: Site):
        self.site = site
        self.server = _server(site)
        self.thread = threading.Thread(target=self.server.run, name="review-page", daemon=True)

    def start(self, timeout: float = 10.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise ConfigError([f"ui: the review page did not start on {self.site.host}:{self.site.port}"])
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(5)
