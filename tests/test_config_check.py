"""`vad config check`: exit 0 on a valid config; otherwise every problem with its path, exactly as `vad run`
refuses to start with. Loopback unless allowed, CURVE keys, secrets from the environment."""

from __future__ import annotations

import pytest
import yaml

from streamer.cli import main
from streamer.pipeline import security
from streamer.pipeline.config import free_port_base

from .conftest import REPO


def write(tmp_path, config: dict):
    path = tmp_path / "vad.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def valid(tmp_path, tiny_model):
    return {"model": str(tiny_model), "run_dir": str(tmp_path / "run"), "cameras": [{"id": "cam1", "source": 0}]}


def check(path, capsys) -> tuple[int, str, str]:
    code = main(["config", "check", str(path)])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_valid_config_passes(tmp_path, valid, capsys):
    code, out, _ = check(write(tmp_path, valid), capsys)
    assert code == 0
    assert "valid: 1 camera(s), 4 stage processes, loopback and ipc only, CURVE off" in out


def test_every_problem_is_listed_with_its_path_and_run_refuses_with_the_same(tmp_path, valid, capsys):
    path = write(
        tmp_path,
        {
            **valid,
            "cameras": [{"id": "cam1", "source": 0, "pace": "sometimes"}, {"id": "cam2", "source": 1, "zoom": 2}],
            "scorer": {"processes": "two"},
            "alerter": {"end_after": 0},
            "model": "${VAD_TEST_UNSET_MODEL}",
        },
    )
    code, _, err = check(path, capsys)
    assert code == 2
    problems = [line.strip()[2:] for line in err.splitlines() if line.strip().startswith("- ")]
    assert problems == [
        "model: environment variable ${VAD_TEST_UNSET_MODEL} is not set",
        "cameras[0].pace: expected true or false, got 'sometimes'",
        "cameras[1].zoom: unknown setting (known: buffer_frames, data, fps, frames_endpoint, id, kind, live, loop, "
        "pace, patches_endpoint, preview_endpoint, reconnect, source)",
        "scorer.processes: expected an integer, got 'two'",
        "alerter: end_after, update_every, max_boxes, max_pending and max_held_events must be >= 1",
    ]
    assert main(["run", "--config", str(path)]) == 2
    assert capsys.readouterr().err == err  # the daemon refuses to start, with the same messages
    assert not (tmp_path / "run").exists()  # and starts nothing


def test_what_the_daemon_needs_is_checked_too(tmp_path, valid, capsys):
    (tmp_path / "disk").write_text("not a folder")
    clip = {"id": "cam2", "source": str(tmp_path / "missing.mp4")}
    config = {**valid, "model": str(tmp_path / "gone.onnx"), "cameras": [*valid["cameras"], clip]}
    config["alerter"] = {"event_log": str(tmp_path / "disk" / "events.sqlite")}
    code, _, err = check(write(tmp_path, config), capsys)
    assert code == 2
    assert f"- model: model not found: {tmp_path / 'gone.onnx'}" in err
    assert "- cameras[1].source: " in err and "missing.mp4" in err
    assert "- alerter.event_log: cannot open " in err


def test_remote_binding_must_be_explicit(tmp_path, valid, capsys):
    valid["cameras"][0]["patches_endpoint"] = "tcp://0.0.0.0:5551"
    valid["alerter"] = {"events_endpoint": "tcp://10.1.2.3:5560"}
    valid["metrics"] = {"host": "0.0.0.0"}
    path = write(tmp_path, valid)
    code, _, err = check(path, capsys)
    assert code == 2
    for where, address in [
        ("cameras[0].patches_endpoint", "tcp://0.0.0.0:5551"),
        ("alerter.events_endpoint", "tcp://10.1.2.3:5560"),
        ("metrics.host", "0.0.0.0"),
    ]:
        assert f"- {where}: {address} is reachable from other hosts; set security.allow_remote: true" in err
    assert "tcp://127.0.0.1" not in err and "ipc://" not in err  # loopback and ipc need no permission
    valid["security"] = {"allow_remote": True}
    code, out, _ = check(write(tmp_path, valid), capsys)
    assert code == 0 and "remote endpoints allowed" in out


def test_curve_needs_a_key_pair_and_an_allow_list_and_takes_secrets_from_the_environment(
    tmp_path, valid, capsys, monkeypatch
):
    valid["security"] = {"curve": {"enabled": True}}
    code, _, err = check(write(tmp_path, valid), capsys)
    assert code == 2
    assert "- security.curve.secret_key: required when curve is enabled" in err
    assert "- security.curve.authorized_keys: None is not a folder of public keys" in err

    keys, allowed = tmp_path / "keys", tmp_path / "authorized"
    public, secret = security.generate(keys, "pipeline", authorize=allowed)
    valid["security"]["curve"] = {"enabled": True, "secret_key": "${VAD_TEST_KEY}", "authorized_keys": str(allowed)}
    monkeypatch.delenv("VAD_TEST_KEY", raising=False)
    code, _, err = check(write(tmp_path, valid), capsys)
    assert code == 2 and "- security.curve.secret_key: environment variable ${VAD_TEST_KEY} is not set" in err
    monkeypatch.setenv("VAD_TEST_KEY", str(public))  # the public half only
    code, _, err = check(write(tmp_path, valid), capsys)
    assert code == 2 and "holds a public key only: give the .key_secret file" in err
    monkeypatch.setenv("VAD_TEST_KEY", str(secret))
    code, out, _ = check(write(tmp_path, valid), capsys)
    assert code == 0 and "CURVE on" in out


def test_vad_health_fails_when_no_daemon_answers(tmp_path, valid, capsys):
    valid["metrics"] = {"base_port": free_port_base(5)}
    assert main(["health", "--config", str(write(tmp_path, valid)), "--timeout", "1"]) == 1
    assert "unhealthy: the supervisor does not answer at http://127.0.0.1:" in capsys.readouterr().err


def test_keys_generate_writes_an_owner_only_secret_and_never_overwrites(tmp_path, capsys):
    assert (
        main(["keys", "generate", "--out", str(tmp_path / "k"), "--name", "ops", "--authorize", str(tmp_path / "a")])
        == 0
    )
    assert (tmp_path / "k" / "ops.key_secret").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "a" / "ops.key").read_bytes() == (tmp_path / "k" / "ops.key").read_bytes()
    public, secret = security.load_key_pair(tmp_path / "k" / "ops.key_secret")
    assert security.load_public_key(tmp_path / "a" / "ops.key") == public and len(secret) == 40
    capsys.readouterr()
    assert main(["keys", "generate", "--out", str(tmp_path / "k"), "--name", "ops"]) == 2
    assert "exists already" in capsys.readouterr().err


def test_the_shipped_configs_pass(tmp_path, monkeypatch, tiny_model, capsys):
    monkeypatch.setenv("VAD_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("VAD_MODEL", str(tiny_model))
    monkeypatch.delenv("VAD_CAMERA_URL", raising=False)
    code, _, err = check(REPO / "deploy" / "config" / "vad.yaml", capsys)
    assert code == 2 and "cameras[0].source: environment variable ${VAD_CAMERA_URL} is not set" in err
    monkeypatch.setenv("VAD_CAMERA_URL", "rtsp://viewer:secret@192.0.2.1/stream")  # a secret from the env file
    for path in [REPO / "configs" / "camera.yaml", REPO / "deploy" / "config" / "vad.yaml"]:
        code, out, err = check(path, capsys)
        assert code == 0, err
