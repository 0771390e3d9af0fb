"""Security defaults: CURVE between stages and for alert subscribers (allow-list), no pickle anywhere."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import time

import zmq

from streamer.pipeline import security
from streamer.pipeline.config import free_port_base

from .conftest import REPO
from .pipeline_helpers import running, short_dir, vad_command, write_config

# Ways to unpickle (or otherwise run code from) bytes that came from elsewhere.
UNSAFE = re.compile(
    r"\bimport pickle|pickle\.loads?\(|torch\.load\(|allow_pickle\s*=\s*True|_pyobj\("
    r"|joblib\.load|marshal\.loads?\(|\bdill\b|shelve\.open"
)


def test_no_pickle_on_the_wire_or_in_model_loading():
    sources = [p for folder in ("streamer", "training", "benchmarks") for p in (REPO / folder).rglob("*.py")]
    assert len(sources) > 30
    offenders = [f"{p.relative_to(REPO)}: {m.group(0)}" for p in sources for m in UNSAFE.finditer(p.read_text())]
    assert offenders == []


def curve_subscriber(ctx: zmq.Context, endpoint: str, keys: tuple[bytes, bytes] | None, server_key: bytes):
    socket = ctx.socket(zmq.SUB)
    socket.setsockopt(zmq.LINGER, 0)
    if keys:
        security.set_client_keys(socket, *keys, server_key=server_key)
    socket.connect(endpoint)
    socket.subscribe(b"event")
    return socket


def test_curve_pipeline_over_tcp_publishes_to_allowed_keys_only(tiny_model, synthetic_ped2):
    with short_dir() as run_dir:
        keys, allowed = run_dir / "keys", run_dir / "authorized"
        security.generate(keys, "pipeline", authorize=allowed)
        security.generate(keys, "ops", authorize=allowed)
        security.generate(keys, "intruder")  # a valid key pair, not on the allow-list
        base = free_port_base(4)
        tcp = [f"tcp://127.0.0.1:{base + k}" for k in range(4)]
        camera = {"id": "cam1", "source": str(synthetic_ped2 / "Test" / "Test001"), "pace": True, "fps": 50}
        camera.update(loop=True, frames_endpoint=tcp[0], patches_endpoint=tcp[1])
        config = write_config(
            run_dir,
            tiny_model,
            [camera],
            alerter={"scores_endpoint": tcp[2], "events_endpoint": tcp[3], "end_after": 2, "update_every": 3},
            security={
                "curve": {
                    "enabled": True,
                    "secret_key": str(keys / "pipeline.key_secret"),
                    "authorized_keys": str(allowed),
                }
            },
        )
        server_key = security.load_public_key(keys / "pipeline.key")
        with zmq.Context() as ctx, running("run", "--config", str(config), log=run_dir / "log"):
            listeners = {
                name: curve_subscriber(ctx, tcp[3], pair, server_key)
                for name, pair in [
                    ("ops", security.load_key_pair(keys / "ops.key_secret")),
                    ("intruder", security.load_key_pair(keys / "intruder.key_secret")),
                    ("plain", None),
                ]
            }
            try:
                received = {name: 0 for name in listeners}
                deadline = time.monotonic() + 60
                while received["ops"] < 3 and time.monotonic() < deadline:
                    for name, socket in listeners.items():
                        while socket.poll(50):
                            json.loads(socket.recv_multipart()[1])
                            received[name] += 1
                # Events flowed through four CURVE links to the allowed key; the others heard nothing.
                assert received["ops"] >= 3 and received["intruder"] == received["plain"] == 0
                alerts = vad_command(
                    "alerts",
                    *("--endpoint", tcp[3], "--count", "1", "--timeout", "30"),
                    *("--key", str(keys / "ops.key_secret"), "--server-key", str(keys / "pipeline.key")),
                )
                out = subprocess.run(alerts, capture_output=True, text=True, timeout=60)
                assert out.returncode == 0 and json.loads(out.stdout)["camera"] == "cam1"
            finally:
                for socket in listeners.values():
                    socket.close()
        assert "CURVE: refused a client key not in" in (run_dir / "log").read_text()


def keys_in(folder, *names):
    """Generate key pairs NAME.key/NAME.key_secret in folder; their (public, secret) pairs."""
    return [security.load_key_pair(security.generate(folder, name)[1]) for name in names]


def test_overwriting_a_key_file_revokes_the_old_key_and_rotates_in_the_new(tmp_path):
    old, new = keys_in(tmp_path / "keys", "old", "new")
    allowed = tmp_path / "authorized"
    allowed.mkdir()
    (allowed / "ops.key").write_bytes((tmp_path / "keys" / "old.key").read_bytes())
    authorized = security.AuthorizedKeys(allowed)
    assert authorized.callback("*", old[0]) and not authorized.callback("*", new[0])
    stamp = allowed.stat().st_mtime_ns
    (allowed / "ops.key").write_bytes((tmp_path / "keys" / "new.key").read_bytes())  # same name, same size
    assert allowed.stat().st_mtime_ns == stamp  # the folder itself did not change
    assert not authorized.callback("*", old[0]) and authorized.callback("*", new[0])
    (allowed / "ops.key").unlink()
    assert not authorized.callback("*", new[0])


def refused_handshakes(stage: str, side: str, reason: str) -> float:
    from prometheus_client import REGISTRY

    return (
        REGISTRY.get_sample_value("vad_handshakes_failed_total", {"stage": stage, "side": side, "reason": reason})
        or 0.0
    )


def test_refused_handshakes_are_logged_counted_and_retried_until_the_key_is_authorized(tmp_path, caplog):
    from streamer.pipeline.links import Links

    from .pipeline_helpers import wait_for

    caplog.set_level(logging.INFO, logger="streamer.pipeline.links")
    keys, allowed = tmp_path / "keys", tmp_path / "authorized"
    security.generate(keys, "pipeline", authorize=allowed)
    (late,) = keys_in(keys, "late")
    server_key = security.load_public_key(keys / "pipeline.key")
    endpoint = f"tcp://127.0.0.1:{free_port_base(1)}"
    before = {
        (stage, side): refused_handshakes(stage, side, "not_authorized")
        for stage, side in [("srv", "server"), ("cli", "client")]
    }
    with zmq.Context() as ctx:
        curve = security.Curve(ctx, keys / "pipeline.key_secret", allowed)
        server = ctx.socket(zmq.PULL)
        curve.server(server)
        server_links = Links(server, "srv")
        server.bind(endpoint)
        client = ctx.socket(zmq.PUSH)
        client.setsockopt(zmq.LINGER, 0)
        security.set_client_keys(client, *late, server_key=server_key)
        client_links = Links(client, "cli", (endpoint,))
        client.connect(endpoint)
        try:

            def both_polled():
                server_links.poll()
                client_links.poll()
                return client_links.refused

            assert wait_for(both_polled, 10, "the refusal to show") == [endpoint]
            assert refused_handshakes("cli", "client", "not_authorized") > before[("cli", "client")]
            assert refused_handshakes("srv", "server", "not_authorized") > before[("srv", "server")]
            assert f"cli: {endpoint} refused our handshake: our public key is not in its authorized_keys" in caplog.text
            (allowed / "late.key").write_bytes((keys / "late.key").read_bytes())  # authorised while it retries
            wait_for(lambda: not both_polled(), 10, "the retried handshake to be accepted")
            assert f"cli: {endpoint} accepted our handshake after" in caplog.text
            client.send(b"hello", zmq.NOBLOCK)
            assert server.poll(5000) and server.recv() == b"hello"
        finally:
            for links, socket in [(server_links, server), (client_links, client)]:
                links.close()
                socket.close(linger=0)
            curve.close()


def test_a_client_without_curve_is_told_so_on_both_sides(tmp_path, caplog):
    from streamer.pipeline.links import Links

    from .pipeline_helpers import wait_for

    keys, allowed = tmp_path / "keys", tmp_path / "authorized"
    security.generate(keys, "pipeline", authorize=allowed)
    endpoint = f"tcp://127.0.0.1:{free_port_base(1)}"
    with zmq.Context() as ctx:
        curve = security.Curve(ctx, keys / "pipeline.key_secret", allowed)
        server = ctx.socket(zmq.PULL)
        curve.server(server)
        server_links = Links(server, "srv2")
        server.bind(endpoint)
        client = ctx.socket(zmq.PUSH)  # no CURVE
        client_links = Links(client, "cli2", (endpoint,))
        client.connect(endpoint)
        try:

            def refused():
                server_links.poll()
                client_links.poll()
                return client_links.refused and refused_handshakes("srv2", "server", "curve_mismatch")

            wait_for(refused, 10, "the mismatch to show on both sides")
            assert refused_handshakes("cli2", "client", "curve_mismatch") >= 1
            assert "CURVE is on at one end only" in caplog.text
            assert f"srv2: refused a client on {endpoint}" in caplog.text
        finally:
            for links, socket in [(server_links, server), (client_links, client)]:
                links.close()
                socket.close(linger=0)
            curve.close()


def test_a_missing_server_key_file_is_reported_as_missing(tmp_path, capsys):
    from streamer.cli import main

    security.generate(tmp_path, "ops")
    args = ["alerts", "--endpoint", "tcp://127.0.0.1:5560", "--key", str(tmp_path / "ops.key_secret")]
    assert main([*args, "--server-key", str(tmp_path / "pipeline.key")]) == 2
    assert f"{tmp_path / 'pipeline.key'}: no such key file" in capsys.readouterr().err
