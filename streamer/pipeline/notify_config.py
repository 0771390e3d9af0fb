"""The pipeline config's `notify:` section: where the notifier stage delivers events (MQTT, webhooks).

Self-contained: its dataclasses check their own values (a bad URL or topic is
an error, reported with its path like every config problem), `cross_check`
checks what needs the rest of the config (the cameras), and `unreachable`
probes the hosts for `vad config check`, which reports them as warnings: a
broker or endpoint that is down now may be up later, and the notifier retries.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import socket
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..config import ConfigError

NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # destination names: metric labels and state file names
TOPIC_PREFIX = re.compile(r"^[^/#+\x00][^#+\x00]*(?<!/)$")  # no MQTT wildcards, no leading or trailing '/'
HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP token
RESERVED_HEADERS = {"content-length", "host", "idempotency-key", "x-vad-signature"}
EVENT_TYPES = ("start", "update", "end")
PROBE_SECONDS = 2.0


@dataclass
class MqttTlsConfig:
    enabled: bool = False
    ca_file: str | None = None  # CA certificates that sign the broker's; default: the system's
    cert_file: str | None = None  # client certificate and key, for brokers that ask for one
    key_file: str | None = None
    insecure: bool = False  # skip the broker's host name check (a test broker's self-signed certificate)

    def __post_init__(self):
        problems = [
            f"{name}: no such file: {path}"
            for name, path in (("ca_file", self.ca_file), ("cert_file", self.cert_file), ("key_file", self.key_file))
            if path and not Path(path).is_file()
        ]
        if bool(self.cert_file) != bool(self.key_file):
            problems.append("cert_file and key_file go together")
        if problems:
            raise ConfigError(problems)


@dataclass
class MqttConfig:
    host: str
    port: int | None = None  # default 1883, 8883 with TLS
    topic_prefix: str = "vad"  # PREFIX/events, PREFIX/CAMERA/anomaly, PREFIX/CAMERA/score, PREFIX/available
    qos: Literal[1, 2] = 1  # events and states; the broker's acknowledgement moves the cursor
    discovery: bool = True  # Home Assistant discovery configs, retained, under discovery_prefix
    discovery_prefix: str = "homeassistant"
    client_id: str | None = None  # default PREFIX-notifier (a restarted notifier takes over its own session)
    username: str | None = None
    password: str | None = None
    tls: MqttTlsConfig = field(default_factory=MqttTlsConfig)
    keepalive_seconds: int = 30
    timeout_seconds: float = 10.0  # to connect, and for the broker to acknowledge what was published
    score_interval_seconds: float = 1.0  # at most one PREFIX/CAMERA/score message per camera this often; 0: none
    max_queue: int = 10000  # events waiting for the broker beyond this: the oldest are dropped (counted)
    max_age_seconds: float = 3600.0  # events older than this when the broker takes them again: dropped (counted)

    def __post_init__(self):
        problems = []
        if not self.host or (any(c in self.host for c in "/: ") and not _is_ip(self.host)):
            problems.append(f"host: {self.host!r} is not a host name or address")
        if self.port is None:
            self.port = 8883 if self.tls.enabled else 1883
        elif not 1 <= self.port <= 65535:
            problems.append(f"port: {self.port} is not a TCP port")
        for name in ("topic_prefix", "discovery_prefix"):
            if not TOPIC_PREFIX.match(getattr(self, name)):
                problems.append(f"{name}: {getattr(self, name)!r} must be a topic without '+', '#' or an outer '/'")
        self.client_id = self.client_id or f"{self.topic_prefix.replace('/', '-')}-notifier"
        if self.password and not self.username:
            problems.append("password: set username too")
        if self.keepalive_seconds < 5 or self.timeout_seconds <= 0 or self.score_interval_seconds < 0:
            problems.append("keepalive_seconds must be >= 5, timeout_seconds > 0 and score_interval_seconds >= 0")
        problems += _limit_problems(self.max_queue, self.max_age_seconds)
        if problems:
            raise ConfigError(problems)

    @property
    def name(self) -> str:
        return "mqtt"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass
class WebhookConfig:
    url: str  # http:// or https://; the event's JSON is POSTed to it
    name: str | None = None  # in metrics, logs and the cursor's file; default webhook-<hash of the url>
    headers: dict = field(default_factory=dict)  # e.g. {Authorization: "Bearer ${VAD_WEBHOOK_TOKEN}"}
    types: list[Literal["start", "update", "end"]] = field(default_factory=lambda: ["start", "end"])
    secret: str | None = None  # signs the body: X-VAD-Signature: sha256=HMAC-SHA256(secret, body) in hex
    timeout_seconds: float = 5.0
    max_queue: int = 10000
    max_age_seconds: float = 3600.0

    def __post_init__(self):
        problems = [f"url: {problem}" for problem in url_problems(self.url)]
        self.name = self.name or "webhook-" + hashlib.sha256(self.url.encode()).hexdigest()[:8]
        if not NAME.match(self.name):
            problems.append(f"name: {self.name!r} must be 1-64 letters, digits, '_', '-' or '.'")
        for key, value in self.headers.items():
            if not isinstance(key, str) or not HEADER_NAME.match(key) or not isinstance(value, str):
                problems.append(f"headers: {key!r}: {value!r} is not an HTTP header name and text value")
            elif "\r" in value or "\n" in value:
                problems.append(f"headers.{key}: line breaks are not allowed in a header value")
            elif key.lower() in RESERVED_HEADERS:
                problems.append(f"headers.{key}: set by the notifier, not by the config")
        if not self.types or len(set(self.types)) != len(self.types):
            problems.append(f"types: a list of distinct event types out of {', '.join(EVENT_TYPES)}")
        if self.secret == "":
            problems.append("secret: empty (an unset ${VARIABLE:-}?); leave it out for unsigned requests")
        if not 0 < self.timeout_seconds <= 300:
            problems.append("timeout_seconds must be in (0, 300]")
        problems += _limit_problems(self.max_queue, self.max_age_seconds)
        if problems:
            raise ConfigError(problems)

    @property
    def address(self) -> str:
        """The URL's host and port, for logs: the path may hold a token (chat webhooks do)."""
        return urllib.parse.urlsplit(self.url).netloc.rpartition("@")[2]


@dataclass
class NotifyConfig:
    mqtt: MqttConfig | None = None
    webhooks: list[WebhookConfig] = field(default_factory=list)
    # Waits between attempts on a failing destination: the first, doubling to the most.
    retry_initial_seconds: float = 1.0
    retry_max_seconds: float = 30.0

    def __post_init__(self):
        problems = []
        if self.mqtt is None and not self.webhooks:
            problems.append("no destination: set mqtt or webhooks, or leave notify out")
        names = [destination.name for destination in self.destinations]
        if len(set(names)) != len(names):
            problems.append(f"destination names must be unique, got {names}")
        if not 0 < self.retry_initial_seconds <= self.retry_max_seconds:
            problems.append("needs 0 < retry_initial_seconds <= retry_max_seconds")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def destinations(self) -> list[MqttConfig | WebhookConfig]:
        return ([self.mqtt] if self.mqtt else []) + list(self.webhooks)


def _limit_problems(max_queue: int, max_age_seconds: float) -> list[str]:
    return [] if max_queue >= 1 and max_age_seconds > 0 else ["max_queue must be >= 1 and max_age_seconds > 0"]


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def url_problems(url: str) -> list[str]:
    try:
        parts = urllib.parse.urlsplit(url)
        _ = parts.port  # a port that is not a number in range raises ValueError
    except ValueError as e:
        return [f"{url!r} is not a URL ({e})"]
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return [f"{url!r} is not an http:// or https:// URL with a host"]
    if any(c.isspace() for c in url):
        return [f"{url!r} contains white space"]
    if parts.username is not None:
        return ["credentials in the URL are not sent; put them in headers (Authorization)"]
    return []


def cross_check(notify: NotifyConfig | None, camera_ids: list[str]) -> list[str]:
    """Problems between `notify` and the rest of the config."""
    if notify is None or notify.mqtt is None or not notify.mqtt.discovery:
        return []
    object_ids = [discovery_id(notify.mqtt.topic_prefix, camera) for camera in camera_ids]
    if len(set(object_ids)) != len(object_ids):
        return [f"notify.mqtt.discovery: camera ids {camera_ids} give Home Assistant the same ids {object_ids}"]
    return []


def discovery_id(topic_prefix: str, camera: str) -> str:
    """Home Assistant object and device ids allow letters, digits, '_' and '-' only."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", f"{topic_prefix}_{camera}")


def unreachable(notify: NotifyConfig | None) -> list[str]:
    """Warnings for destinations that cannot be reached now (probed in parallel, PROBE_SECONDS each)."""
    from .config import is_loopback  # config imports this module

    if notify is None:
        return []
    targets = []
    if notify.mqtt:
        targets.append(("notify.mqtt", notify.mqtt.host, notify.mqtt.port))
    for i, webhook in enumerate(notify.webhooks):
        parts = urllib.parse.urlsplit(webhook.url)
        targets.append(
            (f"notify.webhooks[{i}]", parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
        )
    with ThreadPoolExecutor(max_workers=max(1, len(targets))) as pool:
        results = list(pool.map(lambda target: _probe(target[1], target[2]), targets))
    warnings = [
        f"{where}: cannot reach {host}:{port} now ({error}); the notifier will keep trying"
        for (where, host, port), error in zip(targets, results)
        if error
    ]
    for i, webhook in enumerate(notify.webhooks):
        parts = urllib.parse.urlsplit(webhook.url)
        if parts.scheme == "http" and webhook.headers and not is_loopback(f"tcp://{parts.hostname}:0"):
            warnings.append(f"notify.webhooks[{i}]: plain http to {parts.hostname}: headers travel unencrypted")
    return warnings


def _probe(host: str, port: int) -> str | None:
    try:
        socket.create_connection((host, port), timeout=PROBE_SECONDS).close()
    except OSError as e:
        return e.strerror or str(e) or type(e).__name__
    return None
