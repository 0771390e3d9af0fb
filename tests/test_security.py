"""Security defaults: CURVE between stages and for alert subscribers (allow-list), no pickle anywhere."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import zmq

from streamer.pipeline import security
from streamer.pipeline.config import free_port_base
from streamer.pipeline.links import Links

from .conftest import REPO
from .pipeline_helpers import running, short_dir, vad_command, wait_for, write_config

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
        assert "CURVE: refused a key for subscribers, not in" in (run_dir / "log").read_text()


def keys_in(folder, *names):
    """Generate key pairs NAME.key/NAME.key_secret in folder; their (public, secret) pairs."""
    return [security.load_key_pair(security.generate(folder, name)[1]) for name in names]


def test_overwriting_a_key_file_revokes_the_old_key_and_rotates_in_the_new(tmp_path):
    pipeline, old, new = keys_in(tmp_path / "keys", "pipeline", "old", "new")
    allowed = tmp_path / "authorized"
    allowed.mkdir()
    (allowed / "ops.key").write_bytes((tmp_path / "keys" / "old.key").read_bytes())
    authorized = security.AllowedKeys(pipeline[0], allowed)
    assert authorized.callback("*", old[0]) and not authorized.callback("*", new[0])
    stamp = allowed.stat().st_mtime_ns
    (allowed / "ops.key").write_bytes((tmp_path / "keys" / "new.key").read_bytes())  # same name, same size
    assert allowed.stat().st_mtime_ns == stamp  # the folder itself did not change
    assert not authorized.callback("*", old[0]) and authorized.callback("*", new[0])
    (allowed / "ops.key").unlink()
    assert not authorized.callback("*", new[0]) and authorized.callback("*", pipeline[0])


def refused_handshakes(stage: str, side: str, reason: str) -> float:
    from prometheus_client import REGISTRY

    return (
        REGISTRY.get_sample_value("vad_handshakes_failed_total", {"stage": stage, "side": side, "reason": reason})
        or 0.0
    )


@dataclass
class Link:
    endpoint: str
    server: zmq.Socket
    server_links: Links
    client: zmq.Socket
    client_links: Links

    def poll(self) -> list[str]:
        """Both ends' monitor events handled; the endpoints refusing the client."""
        self.server_links.poll()
        self.client_links.poll()
        return self.client_links.refused


@contextmanager
def curve_link(keys: Path, allowed: Path, client_pair, events: bool = False, names=("srv", "cli")):
    """A CURVE server (PULL, the pipeline's key pair; the events' ZAP domain if `events`, else the stages') and a
    client (PUSH, presenting `client_pair`, or without CURVE if None) connected to it over tcp, each with its Links."""
    endpoint = f"tcp://127.0.0.1:{free_port_base(1)}"
    with zmq.Context() as ctx:
        curve = security.Curve(ctx, keys / "pipeline.key_secret", allowed)
        server = ctx.socket(zmq.PULL)
        curve.server(server, events=events)
        link = Link(endpoint, server, Links(server, names[0]), ctx.socket(zmq.PUSH), None)
        server.bind(endpoint)
        link.client.setsockopt(zmq.LINGER, 0)
        if client_pair is not None:
            security.set_client_keys(link.client, *client_pair, server_key=curve.public)
        link.client_links = Links(link.client, names[1], (endpoint,))
        link.client.connect(endpoint)
        try:
            yield link
        finally:
            for links, socket in [(link.server_links, server), (link.client_links, link.client)]:
                links.close()
                socket.close(linger=0)
            curve.close()


def test_refused_handshakes_are_logged_counted_and_retried_until_the_key_is_authorized(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="streamer.pipeline.links")
    keys, allowed = tmp_path / "keys", tmp_path / "authorized"
    security.generate(keys, "pipeline", authorize=allowed)
    (late,) = keys_in(keys, "late")
    before = {
        side: refused_handshakes(stage, side, "not_authorized")
        for stage, side in [("srv", "server"), ("cli", "client")]
    }
    with curve_link(keys, allowed, late, events=True) as link:  # the events admit authorized_keys
        assert wait_for(link.poll, 10, "the refusal to show") == [link.endpoint]
        assert refused_handshakes("cli", "client", "not_authorized") > before["client"]
        assert refused_handshakes("srv", "server", "not_authorized") > before["server"]
        assert (
            f"cli: {link.endpoint} refused our handshake: our public key is not in its authorized_keys" in caplog.text
        )
        (allowed / "late.key").write_bytes((keys / "late.key").read_bytes())  # authorised while it retries
        wait_for(lambda: not link.poll(), 10, "the retried handshake to be accepted")
        assert f"cli: {link.endpoint} accepted our handshake after" in caplog.text
        link.client.send(b"hello", zmq.NOBLOCK)
        assert link.server.poll(5000) and link.server.recv() == b"hello"


def test_a_client_without_curve_is_told_so_on_both_sides(tmp_path, caplog):
    keys, allowed = tmp_path / "keys", tmp_path / "authorized"
    security.generate(keys, "pipeline", authorize=allowed)
    with curve_link(keys, allowed, None, names=("srv2", "cli2")) as link:
        wait_for(lambda: link.poll() and refused_handshakes("srv2", "server", "curve_mismatch"), 10, "both sides")
        assert refused_handshakes("cli2", "client", "curve_mismatch") >= 1
        assert "CURVE is on at one end only" in caplog.text
        assert f"srv2: refused a client on {link.endpoint}" in caplog.text


def test_a_subscriber_key_opens_the_events_only_not_the_links_between_stages(tmp_path):
    keys, allowed = tmp_path / "keys", tmp_path / "authorized"
    security.generate(keys, "pipeline", authorize=allowed)
    security.generate(keys, "ops", authorize=allowed)
    ops = security.load_key_pair(keys / "ops.key_secret")
    with curve_link(keys, allowed, ops, names=("scores", "forger")) as link:  # as the alerter's scores input
        wait_for(link.poll, 10, "the subscriber key to be refused on a link between stages")
        assert refused_handshakes("forger", "client", "not_authorized") >= 1


def test_a_missing_server_key_file_is_reported_as_missing(tmp_path, capsys):
    from streamer.cli import main

    security.generate(tmp_path, "ops")
    args = ["alerts", "--endpoint", "tcp://127.0.0.1:5560", "--key", str(tmp_path / "ops.key_secret")]
    assert main([*args, "--server-key", str(tmp_path / "pipeline.key")]) == 2
    assert f"{tmp_path / 'pipeline.key'}: no such key file" in capsys.readouterr().err
