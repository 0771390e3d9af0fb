"""A real Mosquitto broker, an MQTT subscriber and a local HTTP receiver, for the notifier's tests.

Debian's mosquitto (which .ci/run installs) runs on a free loopback port with
persistence in its own folder, so stopping and starting it keeps the retained
messages and what it holds for a subscriber's persistent session, as a broker in
a real installation does.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import paho.mqtt.client as paho

from streamer.pipeline.config import free_port_base

from .pipeline_helpers import wait_for

MOSQUITTO = shutil.which("mosquitto", path=os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/sbin")


class Broker:
    """Mosquitto on 127.0.0.1:port; `stop()` and `start()` again on the same port.

    `listener` replaces the anonymous one's settings (authentication, TLS).
    """

    def __init__(self, folder: Path, listener: str = "allow_anonymous true\n"):
        self.folder = folder
        self.port = free_port_base(1)
        self.config = folder / "mosquitto.conf"
        settings = [
            # Started as root, mosquitto would switch to its own user, which cannot read the test's folder.
            f"user {pwd.getpwuid(os.geteuid()).pw_name}",
            f"listener {self.port} 127.0.0.1",
            listener.strip(),
            "persistence true",
            f"persistence_location {folder}/",
            "max_queued_messages 100000",
            f"log_dest file {folder}/mosquitto.log",
        ]
        self.config.write_text("\n".join(settings) + "\n")
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.config)], stderr=subprocess.DEVNULL)
        wait_for(self._answers, 10, "mosquitto to listen")

    def _answers(self) -> bool:
        client = paho.Client(paho.CallbackAPIVersion.VERSION2)
        try:
            client.connect("127.0.0.1", self.port)
        except OSError:
            return False
        client.disconnect()
        return True

    def stop(self) -> None:
        """SIGTERM, as a service manager stops it: mosquitto saves its state first."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(10)
        self.process = None


@contextmanager
def broker(folder: Path):
    running = Broker(folder)
    running.start()
    try:
        yield running
    finally:
        running.stop()


class Subscriber:
    """Every message on TOPIC/#, as a home automation would take it: persistent session, QoS 1, reconnecting."""

    def __init__(self, port: int, topics: list[str], client_id: str = "test-subscriber"):
        self.messages: list[tuple[str, bytes, bool]] = []  # (topic, payload, retained)
        self.lock = threading.Lock()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.topics = topics
        self.client.on_connect = lambda client, *_: client.subscribe([(topic, 1) for topic in self.topics])
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client, userdata, message) -> None:
        with self.lock:
            self.messages.append((message.topic, message.payload, bool(message.retain)))

    def on(self, topic: str) -> list[bytes]:
        with self.lock:
            return [payload for t, payload, _ in self.messages if t == topic]

    def events(self, topic: str = "vad/events") -> list[dict]:
        return [json.loads(payload) for payload in self.on(topic)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # a client killed while its answer was held: expected in these tests


class Receiver:
    """A local HTTP endpoint that records every POST; it can answer 500, or hold its answers until released."""

    def __init__(self):
        self.requests: list[tuple[dict, bytes, int]] = []  # (headers, body, status answered) in arrival order
        self.failing_until = 0.0  # time.monotonic() until which it answers 500
        self.holding = False  # hold each answer (after recording the request) until `release` is set
        self.held = threading.Event()  # set once a request waits to be answered
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = 500 if time.monotonic() < receiver.failing_until else 200
                receiver.requests.append((dict(self.headers), body, status))
                if receiver.holding:
                    receiver.held.set()
                    receiver.release.wait(60)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/vad"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self, status: int | None = 200) -> list[dict]:
        """The events POSTed (and answered `status`; None: all), in arrival order."""
        return [json.loads(body) for _, body, answered in list(self.requests) if status in (None, answered)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
