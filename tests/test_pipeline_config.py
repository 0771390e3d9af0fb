"""The pipeline's YAML schema: defaults, inference, and clear errors."""

import pytest

from streamer.config import ConfigError
from streamer.model import BUNDLED_MODEL
from streamer.pipeline import config as pipeline_config
from streamer.pipeline.config import StageRef, metrics_port, stage_refs

from .conftest import REPO


def test_the_example_camera_config_loads_with_loopback_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("VAD_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.delenv("VAD_MODEL", raising=False)
    monkeypatch.delenv("VAD_CAMERA_URL", raising=False)
    with pytest.raises(ConfigError, match=r"cameras\[0\].source: environment variable \$\{VAD_CAMERA_URL\} is not set"):
        pipeline_config.load(REPO / "configs" / "camera.yaml")  # no default address to dial
    monkeypatch.setenv("VAD_CAMERA_URL", "rtsp://viewer:secret@192.0.2.1/stream")
    cfg = pipeline_config.load(REPO / "configs" / "camera.yaml")
    camera = cfg.cameras[0]
    assert cfg.model == str(BUNDLED_MODEL) and camera.source.startswith("rtsp://")
    assert camera.source_kind == "url" and camera.is_live
    assert camera.frames_endpoint == f"ipc://{tmp_path}/run/entrance.frames"
    assert cfg.alerter.scores_endpoint == f"ipc://{tmp_path}/run/scores"
    assert cfg.alerter.event_log == f"{tmp_path}/run/events.sqlite"
    assert cfg.alerter.events_endpoint.startswith("tcp://127.0.0.1:") and cfg.metrics.host == "127.0.0.1"
    assert [r.label for r in stage_refs(cfg)] == ["capture[entrance]", "patcher[entrance]", "scorer[0]", "alerter"]
    assert metrics_port(cfg, StageRef("alerter")) == 9103


def write(tmp_path, text):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "source, kind, live",
    [(0, "camera", True), ("2", "camera", True), ("http://cam/video.mjpg", "url", True), ("clip.mp4", "file", False)],
)
def test_source_kinds_are_inferred(tmp_path, source, kind, live):
    cfg = pipeline_config.load(write(tmp_path, f"run_dir: {tmp_path}\ncameras: [{{id: c, source: {source!r}}}]\n"))
    assert cfg.cameras[0].source_kind == kind and cfg.cameras[0].is_live == live


def test_folder_sources_are_lossless_unless_asked(tmp_path):
    text = f"run_dir: {tmp_path}\ncameras: [{{id: a, source: {tmp_path}}}, {{id: b, source: {tmp_path}, live: true}}]\n"
    a, b = pipeline_config.load(write(tmp_path, text)).cameras
    assert a.source_kind == "folder" and not a.is_live and b.is_live


@pytest.mark.parametrize(
    "text, problem",
    [
        ("cameras: []", "at least one camera"),
        ("cameras: [{id: a, source: 0}, {id: a, source: 1}]", "ids must be unique"),
        ("cameras: [{id: 'a b', source: 0}]", "camera id 'a b'"),
        ("cameras: [{id: a, source: 0, frames_endpoint: 'udp://x:1'}]", "endpoints must be tcp://"),
        ("cameras: [{id: a, source: 0}]\nrun_dir: /tmp/" + "x" * 120, "ipc path too long"),
        ("cameras: [{id: a, source: 0, kind: rtsp}]", "cameras[0].kind: must be one of"),
        ("cameras: [{id: a, source: 0}]\nscorer: {procs: 2}", "scorer.procs: unknown setting"),
        ("cameras: [{id: a, source: 0, reconnect: {initial_seconds: 5, max_seconds: 1}}]", "initial_seconds"),
    ],
)
def test_config_problems_are_reported_clearly(tmp_path, text, problem):
    with pytest.raises(ConfigError) as error:
        pipeline_config.load(write(tmp_path, text))
    assert problem in str(error.value)


def test_scoring_overrides_are_checked(tiny_model, tmp_path):
    from streamer.model import ModelCard, card_path_for

    card = ModelCard.load(card_path_for(tiny_model))
    cfg = pipeline_config.load(write(tmp_path, "cameras: [{id: a, source: 0}]\nscoring: {threshold: 7.5}"))
    assert pipeline_config.scoring_settings(cfg, card).threshold == 7.5
    with pytest.raises(ConfigError, match="smoothing must be one of"):
        pipeline_config.load(write(tmp_path, "cameras: [{id: a, source: 0}]\nscoring: {smoothing: median}"))
