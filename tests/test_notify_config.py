"""The `notify:` section: what `vad config check` and `vad run` accept, refuse, and warn about."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml

from streamer.cli import main
from streamer.config import ConfigError
from streamer.pipeline import config as pipeline_config
from streamer.pipeline.config import StageRef, stage_refs

from .conftest import REPO


@pytest.fixture
def base(tmp_path, tiny_model):
    return {"model": str(tiny_model), "run_dir": str(tmp_path / "run"), "cameras": [{"id": "cam1", "source": 0}]}


def write(tmp_path, config: dict):
    path = tmp_path / "vad.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def check(path, capsys) -> tuple[int, str, str]:
    code = main(["config", "check", str(path)])
    out, err = capsys.readouterr()
    return code, out, err


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_notify_section_adds_the_notifier_stage_with_the_defaults_filled_in(tmp_path, base):
    base["notify"] = {
        "mqtt": {"host": "127.0.0.1"},
        "webhooks": [{"url": "https://hooks.example.com/T000/B000/XXXX", "secret": "s"}],
    }
    cfg = pipeline_config.load(write(tmp_path, base))
    assert stage_refs(cfg)[-1] == StageRef("notifier")
    assert cfg.notify.mqtt.port == 1883 and cfg.notify.mqtt.client_id == "vad-notifier" and cfg.notify.mqtt.qos == 1
    webhook = cfg.notify.webhooks[0]
    assert webhook.types == ["start", "end"] and webhook.name.startswith("webhook-")
    assert webhook.address == "hooks.example.com"  # what logs and config check show: the path may be a secret
    base["notify"]["mqtt"]["tls"] = {"enabled": True}
    assert pipeline_config.load(write(tmp_path, base)).notify.mqtt.port == 8883
    del base["notify"]
    assert StageRef("notifier") not in stage_refs(pipeline_config.load(write(tmp_path, base)))


def test_bad_urls_and_settings_are_errors_each_with_its_path(tmp_path, base, capsys):
    base["notify"] = {
        "mqtt": {"host": "broker.local", "topic_prefix": "vad/#", "password": "p", "qos": 0},
        "webhooks": [
            {"url": "ftp://example.com/hook"},
            {"url": "https://user:pass@example.com/hook", "headers": {"X-VAD-Signature": "forged"}},
            {"url": "http://example.com:99999/hook", "types": []},
        ],
    }
    code, _, err = check(write(tmp_path, base), capsys)
    assert code == 2
    problems = [line.strip()[2:] for line in err.splitlines() if line.strip().startswith("- ")]
    assert problems == [
        "notify.mqtt.qos: must be one of 1, 2, got 0",
        "notify.webhooks[0].url: 'ftp://example.com/hook' is not an http:// or https:// URL with a host",
        "notify.webhooks[1].url: credentials in the URL are not sent; put them in headers (Authorization)",
        "notify.webhooks[1].headers.X-VAD-Signature: set by the notifier, not by the config",
        "notify.webhooks[2].url: 'http://example.com:99999/hook' is not a URL (Port out of range 0-65535)",
        "notify.webhooks[2].types: a list of distinct event types out of start, update, end",
    ]
    base["notify"]["mqtt"]["qos"] = 1
    base["notify"]["webhooks"] = []
    code, _, err = check(write(tmp_path, base), capsys)
    assert code == 2
    assert "- notify.mqtt.topic_prefix: 'vad/#' must be a topic without '+', '#' or an outer '/'" in err
    assert "- notify.mqtt.password: set username too" in err


def test_destinations_must_exist_and_have_distinct_names(tmp_path, base):
    base["notify"] = {}
    with pytest.raises(ConfigError, match="notify: no destination: set mqtt or webhooks"):
        pipeline_config.load(write(tmp_path, base))
    base["notify"] = {"webhooks": [{"url": "https://a.example/x", "name": "ops"}, {"url": "https://b.example/y"}]}
    base["notify"]["webhooks"][1]["name"] = "ops"
    with pytest.raises(ConfigError, match=r"destination names must be unique, got \['ops', 'ops'\]"):
        pipeline_config.load(write(tmp_path, base))


def test_cameras_whose_home_assistant_ids_collide_are_refused(tmp_path, base):
    base["cameras"] = [{"id": "gate.1", "source": 0}, {"id": "gate_1", "source": 1}]
    base["notify"] = {"mqtt": {"host": "127.0.0.1"}}
    with pytest.raises(ConfigError, match="give Home Assistant the same ids"):
        pipeline_config.load(write(tmp_path, base))
    base["notify"]["mqtt"]["discovery"] = False
    pipeline_config.load(write(tmp_path, base))


def test_unreachable_destinations_are_warnings_not_errors(tmp_path, base, capsys):
    port = closed_port()
    base["notify"] = {
        "mqtt": {"host": "127.0.0.1", "port": port},
        "webhooks": [{"url": f"http://127.0.0.1:{port}/hook", "name": "ops"}],
    }
    code, out, err = check(write(tmp_path, base), capsys)
    assert code == 0
    assert f"notify mqtt (127.0.0.1:{port}), ops (127.0.0.1:{port})" in out
    assert f"warning: notify.mqtt: cannot reach 127.0.0.1:{port} now (Connection refused)" in err
    assert f"warning: notify.webhooks[0]: cannot reach 127.0.0.1:{port} now (Connection refused)" in err
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        base["notify"] = {"webhooks": [{"url": f"http://127.0.0.1:{port}/hook"}]}
        code, _, err = check(write(tmp_path, base), capsys)
    assert code == 0 and "warning" not in err


def test_the_demo_flags_make_a_valid_notify_section(tmp_path, base):
    from streamer.demo import demo_notify

    assert demo_notify(None, None) is None
    base["notify"] = demo_notify("broker.lan:1884", "https://hooks.example.com/vad")
    cfg = pipeline_config.load(write(tmp_path, base))
    assert (cfg.notify.mqtt.host, cfg.notify.mqtt.port, cfg.notify.mqtt.topic_prefix) == (
        "broker.lan",
        1884,
        "vad-demo",
    )
    assert cfg.notify.webhooks[0].url == "https://hooks.example.com/vad"
    base["notify"] = demo_notify("broker.lan:http", None)
    with pytest.raises(ConfigError, match="notify.mqtt.host: 'broker.lan:http' is not a host name or address"):
        pipeline_config.load(write(tmp_path, base))


def test_the_shipped_alerts_example_is_a_valid_config(monkeypatch):
    monkeypatch.setenv("VAD_WEBHOOK_SECRET", "change-me")
    cfg = pipeline_config.load(REPO / "configs" / "alerts.yaml")
    assert [d.name for d in cfg.notify.destinations][0] == "mqtt" and cfg.notify.webhooks[0].secret == "change-me"
    assert Path(cfg.cameras[0].source).is_file() or (REPO / cfg.cameras[0].source).is_file()
