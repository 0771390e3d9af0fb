"""Settings of event media, retention and the review page: defaults, checks, and the errors `vad config check` gives."""

from __future__ import annotations

import pytest
import yaml

from streamer.cli import main
from streamer.config import ConfigError
from streamer.pipeline import config as pipeline_config
from streamer.pipeline.media import writable_codecs


def load(tmp_path, **sections) -> pipeline_config.PipelineConfig:
    config = {"run_dir": str(tmp_path / "run"), "cameras": [{"id": "cam1", "source": 0}], **sections}
    path = tmp_path / "vad.yaml"
    path.write_text(yaml.safe_dump(config))
    return pipeline_config.load(path)


def problems(tmp_path, **sections) -> list[str]:
    with pytest.raises(ConfigError) as error:
        load(tmp_path, **sections)
    return error.value.problems


def test_defaults_media_on_retention_bounded_page_off_on_loopback(tmp_path):
    cfg = load(tmp_path)
    assert cfg.alerter.media.enabled and cfg.alerter.media.clips and cfg.alerter.media.preroll_seconds == 2
    assert (cfg.alerter.retention.days, cfg.alerter.retention.max_mb) == (30, 2000)
    assert not cfg.ui.enabled and cfg.ui.host == "127.0.0.1" and cfg.ui.token is None
    assert cfg.cameras[0].preview_endpoint == f"ipc://{tmp_path / 'run'}/cam1.preview"


def test_a_page_beyond_loopback_needs_a_token_and_allow_remote(tmp_path):
    assert problems(tmp_path, ui={"host": "0.0.0.0"}) == [
        "ui.token: required to serve the page on 0.0.0.0 (any address but loopback)",
        "ui.host: 0.0.0.0 is reachable from other hosts; set security.allow_remote: true to allow it",
    ]
    assert problems(tmp_path, ui={"token": "short"}) == ["ui: token must be at least 16 characters"]
    cfg = load(tmp_path, ui={"host": "0.0.0.0", "token": "x" * 16}, security={"allow_remote": True})
    assert cfg.ui.token == "x" * 16


def test_an_unset_token_from_the_environment_is_no_token(tmp_path, monkeypatch):
    monkeypatch.delenv("VAD_UI_TOKEN", raising=False)
    assert load(tmp_path, ui={"token": "${VAD_UI_TOKEN:-}"}).ui.token is None


def test_bad_media_and_retention_settings_are_refused_with_their_path(tmp_path):
    found = problems(
        tmp_path,
        alerter={"media": {"max_width": 10, "clip_codec": "divx"}, "retention": {"days": 0}},
    )
    assert found == [
        "alerter.media.clip_codec: must be one of 'auto', 'h264', 'vp8', 'vp9', got 'divx'",
        "alerter.retention: days and max_mb must be > 0 (or null for no limit)",
    ]
    assert problems(tmp_path, alerter={"media": {"preroll_seconds": 60}}) == [
        "alerter.media: preroll_seconds must be in 0..30 and max_clip_seconds in 1..600"
    ]


def test_config_check_refuses_a_codec_this_opencv_cannot_write(tmp_path, tiny_model, capsys):
    missing = [codec for codec in ("h264", "vp8", "vp9") if codec not in writable_codecs()]
    if not missing:
        pytest.skip("this OpenCV build writes every clip codec")
    config = {
        "model": str(tiny_model),
        "run_dir": str(tmp_path / "run"),
        "cameras": [{"id": "cam1", "source": 0}],
        "alerter": {"media": {"clip_codec": missing[0]}},
    }
    path = tmp_path / "vad.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["config", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"alerter.media.clip_codec: this OpenCV build cannot write {missing[0]}" in err


def test_the_page_may_not_take_a_port_another_process_listens_on(tmp_path):
    found = problems(tmp_path, ui={"enabled": True, "port": 9103}, metrics={"base_port": 9100})
    assert found == [
        "ui.port (the review page): port 9103 on 127.0.0.1 is also metrics port of alerter (metrics.base_port + 3)"
    ]
