"""`vad run`: start every stage of a config as its own OS process, watch them, stop them in order.

Each stage is `python -m streamer.cli stage NAME --config FILE`, the same command
that runs a stage alone on another host. Children get their own session, so a
terminal's Ctrl-C reaches only the supervisor, which then stops the stages
upstream first (capture, patch, scorer, alerter): each finishes what it was sent
before it exits, and the alerter closes open events, so nothing in flight is lost.

A stage that exits with an error stops the whole pipeline (exit status != 0), for
a service manager to restart. A finished alerter (`exit_at_end`) ends the run.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from ..model import PatchModel
from .capture import recorded_sources
from .config import PipelineConfig, StageRef, stage_refs
from .runtime import SUPERVISOR_PID_ENV

log = logging.getLogger(__name__)

STOP_ORDER = ("capture", "patcher", "scorer", "alerter")
POLL_SECONDS = 0.2


def preflight(cfg: PipelineConfig) -> None:
    """Fail before starting anything on what would fail in a stage: the model, recorded sources."""
    PatchModel(cfg.model, device="cpu", threads=1)
    for camera in cfg.cameras:
        if camera.source_kind not in ("camera", "url"):
            recorded_sources(camera)


class Supervisor:
    def __init__(
        self, config_path: str | os.PathLike, cfg: PipelineConfig, log_level: str = "info", stop_timeout: float = 10.0
    ):
        self.config_path = str(Path(config_path).resolve())
        self.cfg = cfg
        self.log_level = log_level
        self.stop_timeout = stop_timeout
        self.processes: dict[StageRef, subprocess.Popen] = {}

    def command(self, ref: StageRef) -> list[str]:
        cmd = [sys.executable, "-m", "streamer.cli", "--log-level", self.log_level, "stage", ref.name]
        cmd += ["--config", self.config_path]
        if ref.camera:
            cmd += ["--camera", ref.camera]
        if ref.name == "scorer":
            cmd += ["--index", str(ref.index)]
        return cmd

    def start(self) -> None:
        Path(self.cfg.run_dir).mkdir(parents=True, exist_ok=True)
        for ref in stage_refs(self.cfg):
            self.processes[ref] = subprocess.Popen(
                self.command(ref), start_new_session=True, env={**os.environ, SUPERVISOR_PID_ENV: str(os.getpid())}
            )
            log.info("started %s (pid %d)", ref.label, self.processes[ref].pid)

    def poll(self) -> int | None:
        """None while the pipeline runs; its exit status once it is over."""
        for ref, process in self.processes.items():
            code = process.poll()
            if code is None:
                continue
            if code == 0 and ref.name == "alerter":
                log.info("alerter finished: the pipeline is done")
                return 0
            log.error("%s exited unexpectedly (status %d): stopping the pipeline", ref.label, code)
            return code if code > 0 else 1
        return None

    def stop(self) -> None:
        """Stop the stages upstream first, each group given `stop_timeout` seconds before it is killed."""
        for name in STOP_ORDER:
            group = [p for ref, p in self.processes.items() if ref.name == name and p.poll() is None]
            for process in group:
                process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + self.stop_timeout
            for process in group:
                try:
                    process.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    log.error("%s (pid %d) did not stop in %.0f s: killing it", name, process.pid, self.stop_timeout)
                    process.kill()
                    process.wait()

    def run(self, stop: threading.Event) -> int:
        """Start, watch until done, failed or asked to stop; then stop everything."""
        self.start()
        try:
            code = None
            while code is None and not stop.is_set():
                stop.wait(POLL_SECONDS)
                code = self.poll()
        finally:
            self.stop()
        return code or 0
