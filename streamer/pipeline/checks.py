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
from typing import Callable, Iterable

from ..config import ConfigError, path_problem
from ..model import ModelCard, ModelError, PatchModel, card_path_for
from ..sources import SourceError
from .capture import playback_fps, recorded_sources
from .config import PipelineConfig, load, stage_refs

STAGES = ("capture", "patcher", "scorer", "alerter")


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


def supervisor_needs(cfg: PipelineConfig) -> list[str]:
    """`vad run` creates run_dir and writes the Prometheus targets file."""
    problem = path_problem(cfg.metrics.targets_file) if cfg.metrics.enabled else None
    return run_dir_problems(cfg) + ([f"metrics.targets_file: {problem}"] if problem else [])


NEEDS: dict[str, list[Callable[[PipelineConfig], list[str]]]] = {
    "capture": [source_problems, run_dir_problems],
    "patcher": [run_dir_problems],
    "scorer": [],
    "alerter": [log_problems, run_dir_problems],
}


def warnings(cfg: PipelineConfig) -> list[str]:
    """What the config allows but an operator should know: logged by `vad run` and `vad stage`, printed by check."""
    found = []
    if cfg.security.allow_remote and not cfg.security.curve.enabled:
        found.append(
            "security.allow_remote without security.curve: traffic between hosts is neither encrypted nor checked"
        )
    return found
