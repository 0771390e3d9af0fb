"""Everything `vad config check` and `vad run` check: one path for both, so run refuses exactly what check reports.

Two layers:
  the schema (pipeline/config.py), checked whenever a config is loaded, by every
      command: types, unknown keys, ranges, and checks across settings (endpoints,
      ports, remote addresses);
  `preflight`, what the stages of this host need from the machine: the model and
      its card, recorded sources, the files and folders they write. It only looks:
      nothing is created, opened for writing or changed, so a check has no side
      effects.

A new config section puts its own checks in its dataclass (`__post_init__`), any
TCP port it listens on in `config.listeners`, what it needs from the machine in
`NEEDS` under the stage that uses it, and anything merely unwise in `warnings`.
"""

from __future__ import annotations

import os
import ssl
from typing import Callable, Iterable

from ..config import ConfigError, path_problem
from ..model import ModelCard, ModelError, PatchModel, card_path_for
from ..sources import SourceError
from .capture import playback_fps, recorded_sources
from .config import PipelineConfig, is_loopback_host, load, stage_refs
from .media import choose_codec, writable_codecs

STAGES = ("capture", "patcher", "scorer", "alerter", "notifier")


def checked_config(path: str | os.PathLike, stages: Iterable[str] | None = None) -> PipelineConfig:
    """The config at `path`, loaded and preflighted for `stages`; ConfigError naming the file if not."""
    cfg = load(path)
    try:
        preflight(cfg, stages)
    except ConfigError as e:
        raise ConfigError(e.problems, str(path)) from None
    return cfg


def preflight(cfg: PipelineConfig, stages: Iterable[str] | None = None) -> None:
    """ConfigError listing every problem with what `stages` need from this machine.

    `stages`: the stage names this host runs; None means every process `vad run`
    starts, plus what the supervisor itself writes.
    """
    names = {ref.name for ref in stage_refs(cfg)} if stages is None else set(stages)
    problems = model_problems(cfg, names)
    for name in STAGES:
        if name in names:
            problems += [problem for need in NEEDS[name] for problem in need(cfg)]
    if stages is None:
        problems += supervisor_needs(cfg)
    if problems:
        raise ConfigError(list(dict.fromkeys(problems)))  # a need shared by two stages is listed once


def model_problems(cfg: PipelineConfig, stages: set[str]) -> list[str]:
    """A scorer loads the whole model (ONNX graph and card); the patch and alert stages read the card only."""
    try:
        if "scorer" in stages:
            PatchModel(cfg.model, device="cpu", threads=1)
        elif stages & {"patcher", "alerter"}:
            ModelCard.load(card_path_for(cfg.model)).check_geometry()
    except ModelError as e:
        return [f"model: {e}"]
    return []


def source_problems(cfg: PipelineConfig) -> list[str]:
    """Recorded sources (files, folders, Ped2) must open now; cameras and URLs are retried while the daemon runs."""
    problems = []
    for i, camera in enumerate(cfg.cameras):
        if camera.source_kind not in ("camera", "url"):
            try:
                playback_fps(camera, recorded_sources(camera))
            except SourceError as e:
                problems.append(f"cameras[{i}].source: {e}")
    return problems


def run_dir_problems(cfg: PipelineConfig) -> list[str]:
    """Capture, patch and alert stages keep state and ipc sockets in run_dir."""
    problem = path_problem(cfg.run_dir, folder=True)
    return [f"run_dir: {problem}"] if problem else []


def log_problems(cfg: PipelineConfig) -> list[str]:
    logs = [("alerter.event_log", cfg.alerter.event_log), ("alerter.score_log", cfg.alerter.score_log)]
    return [f"{where}: {problem}" for where, path in logs if path and (problem := path_problem(path))]


def media_problems(cfg: PipelineConfig) -> list[str]:
    """An explicit clip codec must be one this OpenCV build writes (`auto` takes what there is)."""
    media = cfg.alerter.media
    if not (media.enabled and media.clips) or media.clip_codec == "auto" or choose_codec(media.clip_codec):
        return []
    available = ", ".join(writable_codecs()) or "none"
    return [
        f"alerter.media.clip_codec: this OpenCV build cannot write {media.clip_codec} (it can: {available}); use auto"
    ]


def metrics_tls_problems(cfg: PipelineConfig) -> list[str]:
    """Every process serving metrics over TLS loads its certificate, key and client CA."""
    tls = cfg.metrics.tls
    if not cfg.metrics.enabled or tls is None:
        return []
    try:
        tls_server_context(tls)
    except (OSError, ssl.SSLError) as e:
        return [f"metrics.tls: cannot load the certificate, key or client_ca ({e})"]
    return []


def tls_server_context(tls) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls.certificate, tls.key)
    if tls.client_ca:
        context.load_verify_locations(tls.client_ca)
    return context


def supervisor_needs(cfg: PipelineConfig) -> list[str]:
    """`vad run` creates run_dir, writes the Prometheus targets file and serves its own metrics."""
    problem = path_problem(cfg.metrics.targets_file) if cfg.metrics.enabled else None
    targets = [f"metrics.targets_file: {problem}"] if problem else []
    return run_dir_problems(cfg) + targets + metrics_tls_problems(cfg)


NEEDS: dict[str, list[Callable[[PipelineConfig], list[str]]]] = {
    "capture": [source_problems, run_dir_problems, metrics_tls_problems],
    "patcher": [run_dir_problems, metrics_tls_problems],
    "scorer": [metrics_tls_problems],
    "alerter": [log_problems, run_dir_problems, media_problems, metrics_tls_problems],
    "notifier": [run_dir_problems, metrics_tls_problems],  # its cursors live in RUN_DIR/state
}


def warnings(cfg: PipelineConfig) -> list[str]:
    """What the config allows but an operator should know: logged by `vad run` and `vad stage`, printed by check."""
    found = []
    if cfg.security.allow_remote and not cfg.security.curve.enabled:
        found.append(
            "security.allow_remote without security.curve: traffic between hosts is neither encrypted nor checked"
        )
    tls = cfg.metrics.tls
    if cfg.metrics.enabled and not is_loopback_host(cfg.metrics.host) and (tls is None or tls.client_ca is None):
        how = "over plain HTTP" if tls is None else "encrypted, but to anyone (no metrics.tls.client_ca)"
        found.append(
            f"metrics on {cfg.metrics.host} answer other hosts {how}: whoever reaches them reads the model's "
            "sha256, threshold and counters. Set metrics.tls with client_ca, or keep metrics.host on loopback"
        )
    return found
