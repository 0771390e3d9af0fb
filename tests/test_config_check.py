"""`vad config check`: exit 0 on a valid config; otherwise every problem with its path, exactly as `vad run`
refuses to start with. Loopback unless allowed, CURVE keys, secrets from the environment."""

from __future__ import annotations

import pytest
import yaml

from streamer.cli import main
from streamer.pipeline import security
from streamer.pipeline.config import free_port_base

from .conftest import REPO, needs_ped2


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
    assert f"- alerter.event_log: cannot create {tmp_path / 'disk' / 'events.sqlite'}: " in err
    assert "is not a folder" in err


INF, NAN = float("inf"), float("nan")  # yaml.safe_dump writes them as .inf and .nan


@pytest.mark.parametrize(
    "change, problem",
    [
        ({"scoring": {"window": 0}}, "scoring: top_k and window must be >= 1 and alpha in (0, 1]"),
        ({"scoring": {"threshold": -1}}, "scoring.threshold: must be > 0, got -1"),
        ({"scoring": {"threshold": NAN}}, "scoring.threshold: expected a finite number, got nan"),
        ({"scoring": {"treshold": 3}}, "scoring.treshold: unknown setting (known: aggregation, alpha, smoothing"),
        ({"scoring": {"window": "3"}}, "scoring.window: expected an integer, got '3'"),
        ({"messaging": {"linger_seconds": INF}}, "messaging.linger_seconds: expected a finite number, got inf"),
        ({"messaging": {"high_water_mark": 2**31}}, "messaging: needs high_water_mark in 1..100000"),
        ({"supervisor": {"backoff": {"max_seconds": INF}}}, "supervisor.backoff.max_seconds: expected a finite number"),
        (
            {"cameras": [{"id": "cam1", "source": 0, "reconnect": {"max_seconds": 1e12}}]},
            "cameras[0].reconnect: needs 0 < initial_seconds <= max_seconds <= 3600",
        ),
        (
            {
                "cameras": [
                    {"id": "cam1", "source": 0, "frames_endpoint": "tcp://127.0.0.1:5550"},
                    {"id": "cam2", "source": 1, "frames_endpoint": "tcp://127.0.0.1:5550"},
                ]
            },
            "cameras[1].frames_endpoint: tcp://127.0.0.1:5550 is also cameras[0].frames_endpoint; every link needs "
            "its own endpoint",
        ),
        (
            {
                "cameras": [
                    {
                        "id": "cam1",
                        "source": 0,
                        "frames_endpoint": "tcp://127.0.0.1:5550",
                        "patches_endpoint": "tcp://localhost:5550",
                    }
                ]
            },
            "cameras[0].patches_endpoint: port 5550 on localhost is also cameras[0].frames_endpoint",
        ),
        (
            {"alerter": {"events_endpoint": "tcp://127.0.0.1:9102"}, "metrics": {"base_port": 9100}},
            "metrics port of scorer[0] (metrics.base_port + 2): port 9102 on 127.0.0.1 is also alerter.events_endpoint",
        ),
        (
            {"alerter": {"events_endpoint": "tcp://127.0.0.1:*"}},
            "alerter.events_endpoint: a tcp:// endpoint needs a port",
        ),
    ],
)
def test_check_refuses_what_run_could_not_run_and_run_refuses_the_same(tmp_path, valid, capsys, change, problem):
    path = write(tmp_path, {**valid, **change})
    code, _, err = check(path, capsys)
    assert code == 2 and f"  - {problem}" in err, err
    assert main(["run", "--config", str(path)]) == 2
    assert capsys.readouterr().err == err
    assert not (tmp_path / "run").exists()


def test_check_creates_nothing(tmp_path, valid, capsys):
    valid["alerter"] = {"score_log": str(tmp_path / "logs" / "scores.jsonl")}
    path = write(tmp_path, valid)
    code, out, _ = check(path, capsys)
    assert code == 0 and f"event log {tmp_path / 'run' / 'events.sqlite'}" in out
    code, _, _ = check(write(tmp_path, {**valid, "model": str(tmp_path / "gone.onnx")}), capsys)
    assert code == 2
    assert list(tmp_path.iterdir()) == [path]  # neither run_dir, its events.sqlite, nor the score log's folder


def test_a_scorer_host_checks_only_what_a_scorer_needs(tmp_path, valid, capsys):
    valid["cameras"] = [{"id": "cam1", "source": str(tmp_path / "only-on-host-a.mp4")}]
    (tmp_path / "host-a-disk").write_text("a file where host A's event log folder would be")
    valid["alerter"] = {"event_log": str(tmp_path / "host-a-disk" / "events.sqlite")}
    path = write(tmp_path, valid)
    code, _, err = check(path, capsys)
    assert code == 2 and "- cameras[0].source:" in err and "- alerter.event_log:" in err
    assert main(["config", "check", str(path), "--stage", "scorer"]) == 0
    assert "valid for stage scorer, loopback and ipc only, CURVE off\n" in capsys.readouterr().out
    valid["model"] = str(tmp_path / "gone.onnx")
    assert main(["config", "check", str(write(tmp_path, valid)), "--stage", "scorer"]) == 2
    assert "- model: model not found" in capsys.readouterr().err
    assert sorted(tmp_path.iterdir()) == [tmp_path / "host-a-disk", path]


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
    valid["security"] = {"curve": {"enabled": True, "authorized_keys": str(tmp_path / "nowhere")}}
    code, _, err = check(write(tmp_path, valid), capsys)
    assert code == 2 and f"- security.curve.authorized_keys: '{tmp_path / 'nowhere'}' is not a folder" in err

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
    for path in [REPO / "configs" / "camera.yaml", REPO / "deploy" / "config" / "vad.yaml"]:
        code, _, err = check(path, capsys)  # neither dials a default address
        assert code == 2 and "cameras[0].source: environment variable ${VAD_CAMERA_URL} is not set" in err
    monkeypatch.setenv("VAD_CAMERA_URL", "rtsp://viewer:secret@192.0.2.1/stream")  # a secret from the env file
    for path in [REPO / "configs" / "camera.yaml", REPO / "deploy" / "config" / "vad.yaml"]:
        code, out, err = check(path, capsys)
        assert code == 0, err


@needs_ped2
@pytest.mark.parametrize("name", ["ae", "nre", "sdae_kmeans", "dec", "ics"])
def test_the_shipped_training_configs_are_checked_as_training_configs(name, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # out: runs/NAME_ped2, relative to the working folder
    if name == "dec":  # DEC refines the SDAE that sdae_kmeans saved
        code, _, err = check(REPO / "configs" / "dec_ped2.yaml", capsys)
        assert code == 2 and "- sdae.checkpoint: no such file: runs/sdae_kmeans_ped2.sdae.npz (" in err
        (tmp_path / "runs").mkdir()
        (tmp_path / "runs" / "sdae_kmeans_ped2.sdae.npz").write_bytes(b"")
    code, out, err = check(REPO / "configs" / f"{name}_ped2.yaml", capsys)
    assert code == 0, err
    assert f"valid training config: {name}, 16 training clips (2 held out for validation)" in out


def test_a_training_config_is_checked_as_vad_train_would(tmp_path, synthetic_ped2, capsys):
    (tmp_path / "afile").write_text("not a folder")
    config = {
        "method": "ae",
        "out": str(tmp_path / "afile" / "model"),
        "data": {"root": str(synthetic_ped2), "validation_clips": ["Train009"], "frames_file": "missing.json"},
        "export": {"threshold_quantile": 1.5},
        "autoencoder": {"epochs": 2, "width": 3},
    }
    path = write(tmp_path, config)
    code, _, err = check(path, capsys)
    assert code == 2
    assert "autoencoder.width: unknown setting" in err and "export: calibration_quantile and threshold_quantile" in err
    assert "cameras" not in err  # not read as a pipeline config
    del config["export"], config["autoencoder"]["width"]
    path = write(tmp_path, config)
    code, _, err = check(path, capsys)
    problems = [line.strip()[2:] for line in err.splitlines() if line.strip().startswith("- ")]
    assert problems == [
        "data.validation_clips: validation clips ['Train009'] are not among the footage's clips "
        "['Train001', 'Train002', 'Train003']",
        "data.frames_file: cannot read selection manifest missing.json: No such file or directory",
        f"out: cannot create {tmp_path / 'afile' / 'model.onnx'}: {tmp_path / 'afile'} is not a folder",
    ]
    assert main(["train", "ae", "--config", str(path)]) == 2
    assert capsys.readouterr().err == err  # training refuses with the same messages, before reading a frame
    config["data"] = {"root": str(synthetic_ped2), "validation_clips": ["Train003"]}
    config["out"] = str(tmp_path / "models" / "m")
    code, out, _ = check(write(tmp_path, config), capsys)
    assert code == 0 and "valid training config: ae, 3 training clips (1 held out for validation)" in out
    assert not (tmp_path / "models").exists()
