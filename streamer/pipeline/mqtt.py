"""MQTT destination (paho-mqtt 2.x): events, per-camera states and scores, Home Assistant discovery.

Topics, under the config's topic_prefix (default `vad`):

  PREFIX/events          every event as JSON with its idempotency key (QoS 1 or 2, not retained)
  PREFIX/CAMERA/anomaly  ON while the camera has an open event, else OFF (retained)
  PREFIX/CAMERA/score    the smoothed frame score, at most once per score_interval_seconds (QoS 0)
  PREFIX/available       online, or offline: at a clean stop, and as the last will when the notifier dies

With discovery, each configured camera is announced to Home Assistant (retained,
under discovery_prefix) as a device with a binary_sensor (the anomaly state) and
a sensor (the score), both unavailable while PREFIX/available says offline.

One thread owns the client: the notifier's courier for this destination calls
`deliver` every poll, which connects when needed and drives paho's network loop
(acknowledgements, keepalive pings) by hand. An event counts as delivered once
the broker has acknowledged both its events message and its state message. A
connection that drops is not resumed: the next attempt opens a fresh one and the
courier sends again what was not acknowledged, from its cursor, so nothing that
paho held in memory decides what the broker gets.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from importlib import metadata

import paho.mqtt.client as paho

from . import delivery
from .notify_config import MqttConfig, discovery_id

log = logging.getLogger(__name__)

LOOP_SECONDS = 0.05  # one turn of paho's network loop while waiting for the broker
MAX_INFLIGHT = 100  # QoS 1/2 messages sent before their acknowledgements come back
CLOSE_SECONDS = 2.0  # for the broker to take the 'offline' at a clean stop


def version() -> str:
    try:
        return metadata.version("vad-stream")
    except metadata.PackageNotFoundError:
        return "unknown"


def state_of(event: dict) -> str:
    return "OFF" if event["type"] == "end" else "ON"


class MqttDestination:
    types = None  # every event type
    batch_size = 50  # events published before waiting for their acknowledgements

    def __init__(self, cfg: MqttConfig, cameras: list[str]):
        self.cfg = cfg
        self.name = cfg.name
        self.where = cfg.address
        self.cameras = cameras
        self.states = {camera: "OFF" for camera in cameras}  # what each PREFIX/CAMERA/anomaly should say
        self.client: paho.Client | None = None
        self._answer: str | None = None  # the broker's answer to CONNECT: "" accepted, else why not
        self._lost: str | None = None  # why the connection dropped
        self._states_due = False  # states to announce again with the next attempt
        self._scores: dict[str, float] = {}  # due for publishing, handed over by the notifier's main thread
        self._scores_lock = threading.Lock()

    def topic(self, *parts: str) -> str:
        return "/".join((self.cfg.topic_prefix, *parts))

    # The courier's side: one thread.

    def sync(self, last_events: list[dict]) -> None:
        """Set the anomaly states from each camera's last event up to the cursor; announced with the next attempt."""
        for event in last_events:
            self.states[event["camera"]] = state_of(event)
        self._states_due = True

    def deliver(self, events: list[dict]) -> None:
        client = self._connected()
        self._publish_scores(client)
        deadline = time.monotonic() + self.cfg.timeout_seconds
        if self._states_due:
            self._check(self._await(self._announce_states(client), deadline))
        sent = [
            [
                client.publish(self.topic("events"), delivery.body(event), self.cfg.qos),
                client.publish(self.topic(event["camera"], "anomaly"), state_of(event), self.cfg.qos, retain=True),
            ]
            for event in events
        ]
        for done, (event, infos) in enumerate(zip(events, sent)):
            self._check(self._await(infos, deadline), done)
            self.states[event["camera"]] = state_of(event)
        if not events:  # keep the connection alive: acknowledgements, keepalive pings
            self._turn(0)
            self._check(self._lost and f"connection to {self.where} lost: {self._lost}")

    def close(self) -> None:
        """At a clean stop: say offline (the last will covers a crash), then disconnect."""
        if self.client is None:
            return
        info = self.client.publish(self.topic("available"), "offline", 1, retain=True)
        self._await([info], time.monotonic() + CLOSE_SECONDS)
        self._drop(None)

    def _connected(self) -> paho.Client:
        if self.client is not None:
            return self.client
        cfg = self.cfg
        client = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id=cfg.client_id, clean_session=True, reconnect_on_failure=False
        )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.will_set(self.topic("available"), "offline", qos=1, retain=True)
        client.max_inflight_messages_set(MAX_INFLIGHT)
        client.connect_timeout = cfg.timeout_seconds
        if cfg.username:
            client.username_pw_set(cfg.username, cfg.password)
        if cfg.tls.enabled:
            client.tls_set(ca_certs=cfg.tls.ca_file, certfile=cfg.tls.cert_file, keyfile=cfg.tls.key_file)
            client.tls_insecure_set(cfg.tls.insecure)
        self._answer, self._lost = None, None
        try:
            client.connect(cfg.host, cfg.port, keepalive=cfg.keepalive_seconds)
        except (OSError, ValueError) as e:
            raise delivery.DeliveryError(f"cannot connect to {self.where}: {e.strerror or e}") from None
        self.client = client
        deadline = time.monotonic() + cfg.timeout_seconds
        while self._answer is None and self._lost is None and time.monotonic() < deadline:
            self._turn(LOOP_SECONDS)
        if self._answer != "":
            why = self._answer or self._lost or f"no answer in {cfg.timeout_seconds:g} s"
            self._check(f"broker {self.where} did not accept the connection: {why}")
        infos = [client.publish(self.topic("available"), "online", 1, retain=True)]
        if cfg.discovery:
            infos += [
                client.publish(topic, json.dumps(config) if config else "", 1, retain=True)
                for camera in self.cameras
                for topic, config in discovery_configs(cfg, camera)
            ]
        self._check(self._await(infos + self._announce_states(client), time.monotonic() + cfg.timeout_seconds))
        log.info("mqtt: connected to %s as %s", self.where, cfg.client_id)
        return client

    def _announce_states(self, client: paho.Client) -> list[paho.MQTTMessageInfo]:
        self._states_due = False
        return [
            client.publish(self.topic(camera, "anomaly"), state, self.cfg.qos, retain=True)
            for camera, state in self.states.items()
        ]

    def _await(self, infos: list[paho.MQTTMessageInfo], deadline: float) -> str | None:
        """None once the broker acknowledged every message, else what went wrong."""
        for info in infos:
            if info.rc != paho.MQTT_ERR_SUCCESS:
                return f"cannot publish: {paho.error_string(info.rc)}"
        while not all(info.is_published() for info in infos):
            if self._lost is not None:
                return f"connection to {self.where} lost: {self._lost}"
            if time.monotonic() >= deadline:
                return f"no acknowledgement from {self.where} in {self.cfg.timeout_seconds:g} s"
            self._turn(LOOP_SECONDS)
        return None

    def _check(self, problem: str | None, delivered: int = 0) -> None:
        """A problem ends this connection and the attempt (after `delivered` events)."""
        if problem:
            self._drop(problem)
            raise delivery.DeliveryError(problem, delivered)

    def _turn(self, timeout: float) -> None:
        """One turn of paho's network loop: read, write, keepalive; a lost connection is noted in _lost."""
        rc = self.client.loop(timeout)
        if rc != paho.MQTT_ERR_SUCCESS and self._lost is None:
            self._lost = paho.error_string(rc)

    def _drop(self, why: str | None) -> None:
        client, self.client = self.client, None
        if client is None:
            return
        client.disconnect()
        client.loop(0)  # sends the DISCONNECT if the socket takes it; a dead one is closed either way
        if why:
            log.debug("mqtt: dropped the connection to %s: %s", self.where, why)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self._answer = str(reason_code) if reason_code.is_failure else ""

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._lost = str(reason_code)

    # The notifier main thread's side.

    def offer_score(self, camera: str, score: float) -> None:
        """Hand over a camera's latest rate-limited score; the courier publishes it with its next turn."""
        with self._scores_lock:
            self._scores[camera] = score

    def _publish_scores(self, client: paho.Client) -> None:
        with self._scores_lock:
            scores, self._scores = self._scores, {}
        for camera, score in scores.items():
            client.publish(self.topic(camera, "score"), f"{score:.4f}", 0)  # QoS 0: the next one replaces it


def discovery_configs(cfg: MqttConfig, camera: str) -> list[tuple[str, dict | None]]:
    """(topic, config) of a camera's Home Assistant entities; None removes the score sensor when scores are off."""
    base = discovery_id(cfg.topic_prefix, camera)
    shared = {
        "availability": [
            {
                "topic": f"{cfg.topic_prefix}/available",
                "payload_available": "online",
                "payload_not_available": "offline",
            }
        ],
        "device": {"identifiers": [base], "name": camera, "manufacturer": "vad-stream", "model": "anomaly detector"},
        "origin": {"name": "vad-stream", "sw_version": version()},
        "qos": cfg.qos,
    }
    anomaly = {
        "name": "Anomaly",
        "unique_id": f"{base}_anomaly",
        "state_topic": f"{cfg.topic_prefix}/{camera}/anomaly",
        "payload_on": "ON",
        "payload_off": "OFF",
        "device_class": "motion",
        **shared,
    }
    score = None
    if cfg.score_interval_seconds > 0:
        score = {
            "name": "Anomaly score",
            "unique_id": f"{base}_score",
            "state_topic": f"{cfg.topic_prefix}/{camera}/score",
            "state_class": "measurement",
            "suggested_display_precision": 2,
            # No score for this long: the camera or the pipeline stopped; Home Assistant shows it unavailable.
            "expire_after": max(60, round(10 * cfg.score_interval_seconds)),
            **shared,
            "qos": 0,
        }
    return [
        (f"{cfg.discovery_prefix}/binary_sensor/{base}_anomaly/config", anomaly),
        (f"{cfg.discovery_prefix}/sensor/{base}_score/config", score),
    ]
