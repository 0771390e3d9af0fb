"""Security defaults: CURVE between stages and for alert subscribers (allow-list), no pickle anywhere."""

from __future__ import annotations

import json
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
