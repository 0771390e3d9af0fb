"""`vad run`: start every stage of a config as its own OS process, keep them running, stop them in order.

Each stage is `python -m streamer.cli stage NAME --config FILE`, the same command
that runs a stage alone on another host. Children get their own session, so a
terminal's Ctrl-C reaches only the supervisor, which then stops the stages
upstream first (capture, patch, scorer, alerter, notifier): each finishes what it
was sent before it exits, the alerter closes open events, and the notifier
delivers what the log holds, so nothing in flight is lost.

A stage that exits while the pipeline runs (a crash, kill -9, the OOM killer) is
started again after a wait that doubles with each failure in a row (capped at
supervisor.backoff.max_seconds; a stage that ran supervisor.stable_seconds starts
over from the first wait). Every restart is logged and counted
(vad_stage_restarts_total); a crash loop is logged as one, and the daemon stays up.
With supervisor.restart: false (evaluations: a restarted recording would be scored
twice) a failed stage stops the whole pipeline instead, with its exit status. A
finished alerter (`alerter.exit_at_end`) ends the run.

With `ui.enabled` the review page (`vad ui --config FILE`) is one more supervised
child, stopped last.

`run` also serves the supervisor's own /metrics (vad_stage_up, the restarts) on the
port after the stages' and writes every process's metrics endpoint to
metrics.targets_file, for Prometheus' file-based service discovery.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from ..config import ConfigError
from . import telemetry
from .config import PipelineConfig, StageRef, metrics_port, stage_refs, supervisor_metrics_port
from .runtime import SUPERVISOR_PID_ENV

log = logging.getLogger(__name__)

STOP_ORDER = ("capture", "patcher", "scorer", "alerter", "notifier", "ui")
POLL_SECONDS = 0.2
CRASH_LOOP = 5  # failures in a row, each within stable_seconds of its start, reported as a crash loop


class Child:
    """One stage process and its restart state."""

    def __init__(self, ref: StageRef):
        self.ref = ref
        self.process: subprocess.Popen | None = None
        self.started = 0.0  # time.monotonic() of the last start
        self.failures = 0  # exits in a row, each before the stage ran stable_seconds
        self.restart_at: float | None = None  # when a restart is due
        self.up = telemetry.STAGE_UP.labels(*ref.metric_labels)
        self.restarts = telemetry.STAGE_RESTARTS.labels(*ref.metric_labels)  # at 0 from the start


class Supervisor:
    def __init__(
        self, config_path: str | os.PathLike, cfg: PipelineConfig, log_level: str = "info", stop_timeout: float = 10.0
    ):
        self.config_path = str(Path(config_path).resolve())
        self.cfg = cfg
        self.log_level = log_level
        self.stop_timeout = stop_timeout
        refs = stage_refs(cfg) + [StageRef("ui")] * cfg.ui.enabled  # the page has no metrics port of its own
        self.children = {ref: Child(ref) for ref in refs}

    def command(self, ref: StageRef) -> list[str]:
        cmd = [sys.executable, "-m", "streamer.cli", "--log-level", self.log_level]
        if ref.name == "ui":
            return cmd + ["ui", "--config", self.config_path]
        cmd += ["stage", ref.name, "--config", self.config_path]
        if ref.camera:
            cmd += ["--camera", ref.camera]
        if ref.name == "scorer":
            cmd += ["--index", str(ref.index)]
        return cmd

    def start(self) -> None:
        Path(self.cfg.run_dir).mkdir(parents=True, exist_ok=True)
        for child in self.children.values():
            self._start(child)

    def _start(self, child: Child) -> None:
        restart = child.restart_at is not None
        child.process = subprocess.Popen(
            self.command(child.ref),
            start_new_session=True,
            env={**os.environ, SUPERVISOR_PID_ENV: str(os.getpid())},
        )
        child.started, child.restart_at = time.monotonic(), None
        child.up.set(1)
        if restart:
            child.restarts.inc()
        log.info("%s %s (pid %d)", "restarted" if restart else "started", child.ref.label, child.process.pid)

    def poll(self) -> int | None:
        """Restart what exited and is due; None while the pipeline runs, its exit status once it is over."""
        now = time.monotonic()
        for child in self.children.values():
            if child.process is None:
                if child.restart_at is not None and now >= child.restart_at:
                    self._start(child)
                continue
            code = child.process.poll()
            if code is None:
                continue
            if code == 0 and child.ref.name == "alerter" and self.cfg.alerter.exit_at_end:
                log.info("alerter finished: the pipeline is done")
                return 0
            child.process = None
            child.up.set(0)
            how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
            if not self.cfg.supervisor.restart:
                log.error("%s %s: stopping the pipeline", child.ref.label, how)
                return code if code > 0 else 1
            self._schedule_restart(child, how, now)
        return None

    def _schedule_restart(self, child: Child, how: str, now: float) -> None:
        ran = now - child.started
        if ran >= self.cfg.supervisor.stable_seconds:
            child.failures = 0
        delay = self.cfg.supervisor.backoff.delay(child.failures)
        child.failures += 1
        child.restart_at = now + delay
        if child.failures >= CRASH_LOOP:
            log.error(
                "%s %s after %.1f s: crash loop, %d failures in a row; next try in %.1f s",
                child.ref.label,
                how,
                ran,
                child.failures,
                delay,
            )
        else:
            log.warning("%s %s after %.1f s: restarting it in %.1f s", child.ref.label, how, ran, delay)

    def stop(self) -> None:
        """Stop the stages upstream first, each group given `stop_timeout` seconds before it is killed."""
        for name in STOP_ORDER:
            group = [c for c in self.children.values() if c.ref.name == name]
            for child in group:
                child.restart_at = None
                if child.process is not None and child.process.poll() is None:
                    child.process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + self.stop_timeout
            for child in group:
                if child.process is None:
                    continue
                try:
                    child.process.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    log.error(
                        "%s (pid %d) did not stop in %.0f s: killing it", name, child.process.pid, self.stop_timeout
                    )
                    child.process.kill()
                    child.process.wait()
                child.up.set(0)

    def serve_metrics(self) -> None:
        """The supervisor's /metrics, and every process's endpoint in the Prometheus targets file."""
        if not self.cfg.metrics.enabled:
            return
        port = supervisor_metrics_port(self.cfg)
        try:
            telemetry.serve(self.cfg.metrics, port)
        except OSError as e:
            raise ConfigError([f"metrics: cannot serve on {self.cfg.metrics.host}:{port}: {e.strerror or e}"]) from None
        write_targets(self.cfg)

    def run(self, stop: threading.Event) -> int:
        """Start, watch until done, failed or asked to stop; then stop everything."""
        self.serve_metrics()
        self.start()
        try:
            code = None
            while code is None and not stop.is_set():
                stop.wait(POLL_SECONDS)
                code = self.poll()
        finally:
            self.stop()
        return code or 0


def write_targets(cfg: PipelineConfig) -> None:
    """Prometheus file_sd targets: one per process, labelled `process`; replaced atomically."""
    host = cfg.metrics.host if cfg.metrics.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    address = f"[{host}]" if ":" in host else host
    ports = [(ref.label, metrics_port(cfg, ref)) for ref in stage_refs(cfg)]
    ports.append(("supervisor", supervisor_metrics_port(cfg)))
    targets = [{"targets": [f"{address}:{port}"], "labels": {"process": label}} for label, port in ports]
    path = Path(cfg.metrics.targets_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(targets, indent=1) + "\n")
    os.replace(temporary, path)
    log.info("Prometheus targets in %s", path)
