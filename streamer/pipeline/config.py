"""The pipeline's YAML config (`vad run --config`, `vad stage --config`), on streamer.config.

Every stage process reads the same file. Endpoints default to ipc:// sockets in
`run_dir` (this host only); set tcp:// endpoints to spread stages over hosts. An
endpoint string is used as given both to bind and to connect, so on several hosts
it names the binding host's interface address (e.g. tcp://10.0.0.5:5551).

Nothing listens beyond this host unless the config says so: an endpoint or the
metrics host on an address other than loopback is an error without
`security.allow_remote: true` (and then CURVE, `security.curve`, is advised).
"""

from __future__ import annotations

import ipaddress
import os
import random
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .. import config as typed_config
from ..model import BUNDLED_MODEL, ModelCard
from ..scoring import ScoringSettings
from . import security
from .messages import CAMERA_ID
from .notify_config import NotifyConfig, cross_check
from .review_config import MediaConfig, RetentionConfig, UiConfig, review_problems

IPC_PATH_LIMIT = 100  # Unix socket paths are limited to about 107 bytes
MAX_WAIT_SECONDS = 3600.0  # longest wait a setting may ask for (ZeroMQ takes linger in int milliseconds)
WILDCARD_HOSTS = ("*", "0.0.0.0", "::", "")


@dataclass
class Backoff:
    initial_seconds: float = 0.5  # first wait; doubles per failure in a row
    max_seconds: float = 10.0

    def __post_init__(self):
        if not 0 < self.initial_seconds <= self.max_seconds <= MAX_WAIT_SECONDS:
            raise ValueError(f"needs 0 < initial_seconds <= max_seconds <= {MAX_WAIT_SECONDS:g}")

    def delay(self, failures: int) -> float:
        """The wait after `failures` failures in a row (0: the first)."""
        return min(self.initial_seconds * 2 ** min(failures, 32), self.max_seconds)


@dataclass
class CameraConfig:
    id: str
    source: int | str  # camera index, rtsp:// or http:// URL, video file, image folder, or Ped2 clip name / "test"
    kind: Literal["auto", "camera", "url", "file", "folder", "ped2"] = "auto"
    data: str | None = None  # ped2: the UCSDped2 folder (default $VAD_PED2, then ../shared/datasets/UCSDped2)
    live: bool | None = None  # drop the oldest frames when downstream is slow; default: cameras and URLs
    pace: bool = False  # files, folders, Ped2: play at `fps` (or the file's own rate), standing in for a camera
    fps: float | None = None
    loop: bool = False  # files, folders, Ped2: start over at the end (each pass is a new recording)
    buffer_frames: int = 4  # live sources: frames held while downstream is busy
    reconnect: Backoff = field(default_factory=Backoff)  # waits between tries to reopen a lost live source
    frames_endpoint: str | None = None  # capture binds, patcher connects; default ipc://RUN_DIR/ID.frames
    patches_endpoint: str | None = None  # patcher binds, scorers connect; default ipc://RUN_DIR/ID.patches
    # capture binds (PUB), the alerter connects: small JPEGs for event media; default ipc://RUN_DIR/ID.preview
    preview_endpoint: str | None = None

    def __post_init__(self):
        if not CAMERA_ID.match(self.id):
            raise ValueError(f"camera id {self.id!r} must be 1-64 letters, digits, '_', '-' or '.'")
        if not 1 <= self.buffer_frames <= 1000 or (self.fps is not None and not 0.01 <= self.fps <= 1000):
            raise ValueError(f"camera {self.id}: buffer_frames must be in 1..1000 and fps in 0.01..1000")

    @property
    def source_kind(self) -> str:
        """The kind, inferred from the source when 'auto'."""
        if self.kind != "auto":
            return self.kind
        if isinstance(self.source, int) or self.source.isdigit():
            return "camera"
        if "://" in self.source:
            return "url"
        return "folder" if Path(self.source).is_dir() else "file"

    @property
    def is_live(self) -> bool:
        return self.live if self.live is not None else self.source_kind in ("camera", "url")


@dataclass
class PatcherConfig:
    threads: int = 1  # OpenCV threads per patch process (optical flow, resizing)

    def __post_init__(self):
        if not 0 <= self.threads <= 256:
            raise ValueError("threads must be in 0..256")


@dataclass
class ScorerConfig:
    processes: int = 1  # scorer processes `vad run` starts; each pulls from every camera's patch stage
    device: Literal["auto", "cuda", "cpu"] = "auto"
    threads: int = 1  # onnxruntime intra-op threads per scorer process
    batch_frames: int = 16  # most queued frames scored together
    # Patches per model call. A fixed cap bounds the scorer's memory: it takes what a full call needs at
    # start (PatchModel.warm_up) instead of growing towards the largest call seen. On CPU, larger calls
    # are no faster per patch (docs/benchmarks.md).
    max_batch_patches: int = 256

    def __post_init__(self):
        if not (0 <= self.processes <= 256 and 0 <= self.threads <= 256):
            raise ValueError("scorer processes and threads must be in 0..256")
        if not (1 <= self.batch_frames <= 1024 and 1 <= self.max_batch_patches <= 65536):
            raise ValueError("batch_frames must be in 1..1024 and max_batch_patches in 1..65536")


@dataclass
class AlerterConfig:
    scores_endpoint: str | None = None  # alerter binds, scorers connect; default ipc://RUN_DIR/scores
    events_endpoint: str = "tcp://127.0.0.1:5560"  # PUB socket that `vad alerts` subscribes to
    event_log: str | None = None  # SQLite, written before publishing; default RUN_DIR/events.sqlite
    score_log: str | None = None  # optional JSON lines, one per scored frame (evaluation, benchmarks)
    end_after: int = 5  # frames below the threshold that end an event
    update_every: int = 10  # frames between 'update' events while one is open
    max_boxes: int = 10  # most anomalous patch boxes per event
    reorder_timeout: float = 2.0  # seconds to wait for a missing frame before skipping it (counted as lost)
    max_pending: int = 256  # frames held per camera while waiting for a missing one
    exit_at_end: bool = False  # exit once every camera's stream has ended (demo, evaluation)
    # While the event log cannot be written (disk full, read-only), events wait in memory, unpublished,
    # and the write is retried every log_retry_seconds; past max_held_events new ones are dropped (counted).
    log_retry_seconds: float = 1.0
    max_held_events: int = 10000
    media: MediaConfig = field(default_factory=MediaConfig)  # snapshots and clips of each event
    retention: RetentionConfig = field(default_factory=RetentionConfig)

    def __post_init__(self):
        if min(self.end_after, self.update_every, self.max_boxes, self.max_pending, self.max_held_events) < 1:
            raise ValueError("end_after, update_every, max_boxes, max_pending and max_held_events must be >= 1")
        if not (0 < self.reorder_timeout <= MAX_WAIT_SECONDS and 0 < self.log_retry_seconds <= MAX_WAIT_SECONDS):
            raise ValueError(f"reorder_timeout and log_retry_seconds must be in (0, {MAX_WAIT_SECONDS:g}]")


@dataclass
class MessagingConfig:
    high_water_mark: int = 8  # messages queued per socket before senders block (backpressure)
    max_message_bytes: int = 16 << 20  # larger messages are counted and dropped
    linger_seconds: float = 5.0  # how long a stopping stage keeps trying to deliver what it sent

    def __post_init__(self):
        if not (
            1 <= self.high_water_mark <= 100_000
            and 1024 <= self.max_message_bytes <= 1 << 30
            and 0 <= self.linger_seconds <= MAX_WAIT_SECONDS
        ):
            raise ValueError(
                f"needs high_water_mark in 1..100000, max_message_bytes in 1024..{1 << 30} (1 GiB) "
                f"and linger_seconds in 0..{MAX_WAIT_SECONDS:g}"
            )


@dataclass
class MetricsTLSConfig:
    """HTTPS for /metrics; with client_ca, only scrapers presenting a certificate it signed may read (mutual TLS).

    `vad health` trusts the certificate it finds here and, with client_ca, presents it (and its key) as its own
    client certificate: sign it with client_ca too (deploy/README.md shows how).
    """

    certificate: str  # PEM: this host's certificate, then any intermediates
    key: str  # PEM: its private key
    client_ca: str | None = None  # PEM: the CA that signs scrapers' client certificates


@dataclass
class MetricsConfig:
    enabled: bool = True
    host: str = "127.0.0.1"
    # Stage k of `stage_refs` serves /metrics on base_port + k, the supervisor (`vad run`) on the port after the last.
    base_port: int = 9100
    # `vad run` writes every process's endpoint here for Prometheus' file_sd_configs;
    # default RUN_DIR/prometheus/targets.json.
    targets_file: str | None = None
    tls: MetricsTLSConfig | None = None  # needed (with client_ca) to offer metrics beyond loopback safely

    def __post_init__(self):
        if not 1 <= self.base_port <= 65000:
            raise ValueError(f"metrics base_port must be in 1..65000, got {self.base_port}")


@dataclass
class SupervisorConfig:
    restart: bool = True  # restart a stage process that exits unexpectedly; false: stop the pipeline instead
    backoff: Backoff = field(default_factory=lambda: Backoff(0.5, 30.0))  # wait before a restart
    stable_seconds: float = 30.0  # a stage that ran this long is healthy: its next restart waits initial_seconds

    def __post_init__(self):
        if self.stable_seconds <= 0:
            raise ValueError("stable_seconds must be > 0")


@dataclass
class CurveConfig:
    """ZeroMQ CURVE on every tcp:// socket: encrypted, and only listed client keys may connect."""

    enabled: bool = False
    # The pipeline's key pair (NAME.key_secret from `vad keys generate`): binding stages serve with it,
    # connecting stages present it. Every host of one pipeline uses the same pair.
    secret_key: str | None = None
    # Folder of the public keys (*.key) of alert subscribers allowed to receive events (the pipeline's own key
    # always is). Needed where the alerter runs; links between stages admit the pipeline's key alone.
    authorized_keys: str | None = None

    def __post_init__(self):
        if not self.enabled:
            return
        problems = []
        if not self.secret_key:
            problems.append("secret_key: required when curve is enabled (a .key_secret file: vad keys generate)")
        else:
            try:
                security.load_key_pair(self.secret_key)
            except ValueError as e:
                problems.append(f"secret_key: {e}")
        if self.authorized_keys and not Path(self.authorized_keys).is_dir():
            problems.append(f"authorized_keys: {self.authorized_keys!r} is not a folder of public keys (*.key)")
        if problems:
            raise typed_config.ConfigError(problems)


@dataclass
class SecurityConfig:
    allow_remote: bool = False  # let endpoints and metrics use addresses beyond loopback (other hosts)
    curve: CurveConfig = field(default_factory=CurveConfig)


@dataclass
class PipelineConfig:
    cameras: list[CameraConfig]
    model: str | None = None  # .onnx with its .json card; default the bundled model
    run_dir: str = "runs/vad"  # ipc sockets and logs
    gate: bool = True  # use the card's cascade gate (motion); false sends every patch to the network
    scoring: dict = field(default_factory=dict)  # overrides of the card's scoring settings (ScoringSettings' fields)
    patcher: PatcherConfig = field(default_factory=PatcherConfig)
    scorer: ScorerConfig = field(default_factory=ScorerConfig)
    alerter: AlerterConfig = field(default_factory=AlerterConfig)
    messaging: MessagingConfig = field(default_factory=MessagingConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    supervisor: SupervisorConfig = field(default_factory=SupervisorConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    ui: UiConfig = field(default_factory=UiConfig)
    notify: NotifyConfig | None = None  # MQTT and webhooks, delivered from the event log by the notifier stage

    def __post_init__(self):
        if not self.cameras:
            raise ValueError("cameras: at least one camera is needed")
        ids = [c.id for c in self.cameras]
        if len(set(ids)) != len(ids):
            raise ValueError(f"cameras: ids must be unique, got {ids}")
        self.run_dir = str(Path(self.run_dir).resolve())
        self.model = str(self.model or BUNDLED_MODEL)
        for camera in self.cameras:
            camera.frames_endpoint = camera.frames_endpoint or self._ipc(f"{camera.id}.frames")
            camera.patches_endpoint = camera.patches_endpoint or self._ipc(f"{camera.id}.patches")
            camera.preview_endpoint = camera.preview_endpoint or self._ipc(f"{camera.id}.preview")
        self.alerter.scores_endpoint = self.alerter.scores_endpoint or self._ipc("scores")
        self.alerter.event_log = self.alerter.event_log or os.path.join(self.run_dir, "events.sqlite")
        self.metrics.targets_file = self.metrics.targets_file or os.path.join(
            self.run_dir, "prometheus", "targets.json"
        )
        problems = endpoint_problems(self)
        if self.metrics.enabled and self.metrics.base_port + len(stage_refs(self)) > 65535:
            problems.append(f"metrics.base_port: {self.metrics.base_port} leaves too few ports for every process")
        problems = scoring_problems(self.scoring) + cross_check(self.notify, ids) + (problems or port_clashes(self))
        if not self.security.allow_remote:
            remote = [(where, e) for where, e in self.endpoints() if e.startswith("tcp://") and not is_loopback(e)]
            if self.metrics.enabled and not is_loopback_host(self.metrics.host):
                remote.append(("metrics.host", self.metrics.host))
            problems += [
                f"{where}: {address} is reachable from other hosts; set security.allow_remote: true to allow that "
                "(and consider security.curve)"
                for where, address in remote
            ]
        problems += review_problems(self.ui, self.security.allow_remote, is_loopback)
        if problems:
            raise typed_config.ConfigError(problems)

    def _ipc(self, name: str) -> str:
        return f"ipc://{os.path.join(self.run_dir, name)}"

    def endpoints(self) -> list[tuple[str, str]]:
        """(setting, endpoint) for every ZeroMQ endpoint of the config."""
        links = [
            (f"cameras[{i}].{name}", getattr(camera, name))
            for i, camera in enumerate(self.cameras)
            for name in ("frames_endpoint", "patches_endpoint", "preview_endpoint")
        ]
        return links + [
            ("alerter.scores_endpoint", self.alerter.scores_endpoint),
            ("alerter.events_endpoint", self.alerter.events_endpoint),
        ]

    def camera(self, camera_id: str) -> CameraConfig:
        for camera in self.cameras:
            if camera.id == camera_id:
                return camera
        raise typed_config.ConfigError([f"no camera {camera_id!r} in cameras (have {[c.id for c in self.cameras]})"])


def scoring_problems(overrides: dict) -> list[str]:
    """Unknown keys, wrong types and out-of-range values among the `scoring:` overrides of the card's settings."""
    problems: list[str] = []
    typed_config.build(ScoringSettings, {**ScoringSettings().to_dict(), **overrides}, problems, "scoring")
    threshold = overrides.get("threshold")
    if not problems and threshold is not None and threshold <= 0:
        problems.append(
            f"scoring.threshold: must be > 0, got {threshold!r} (0 is a typical normal patch: every frame would alert)"
        )
    return problems


def endpoint_problem(endpoint: str) -> str | None:
    if endpoint.startswith("ipc://"):
        if len(endpoint) - len("ipc://") > IPC_PATH_LIMIT:
            return f"ipc path too long for a Unix socket (shorten run_dir or use tcp://): {endpoint}"
    elif not endpoint.startswith("tcp://"):
        return f"endpoints must be tcp://HOST:PORT or ipc://PATH, got {endpoint!r}"
    elif not host_and_port(endpoint)[1]:
        return (
            f"a tcp:// endpoint needs a port in 1..65535 (binding and connecting stages must agree), got {endpoint!r}"
        )
    return None


def endpoint_problems(cfg: PipelineConfig) -> list[str]:
    """Malformed endpoints, and endpoints given to two links (the second stage to bind it would fail)."""
    problems, first = [], {}
    for where, endpoint in cfg.endpoints():
        if problem := endpoint_problem(endpoint):
            problems.append(f"{where}: {problem}")
        elif endpoint in first:
            problems.append(f"{where}: {endpoint} is also {first[endpoint]}; every link needs its own endpoint")
        first.setdefault(endpoint, where)
    return problems


def host_and_port(endpoint: str) -> tuple[str, int | None]:
    """('10.0.0.5', 5551) of tcp://10.0.0.5:5551; the port is None unless it is a number in 1..65535."""
    host, _, port = endpoint[len("tcp://") :].rpartition(":")
    return host.strip("[]"), int(port) if port.isdigit() and 1 <= int(port) <= 65535 else None


def listeners(cfg: PipelineConfig) -> list[tuple[str, str, int]]:
    """(setting, host, port) of every TCP port the config's processes listen on: tcp endpoints, then metrics.

    A section that opens another port adds it here, so that it is checked against all the others.
    """
    ports = [(where, *host_and_port(e)) for where, e in cfg.endpoints() if e.startswith("tcp://")]
    if cfg.metrics.enabled:
        labels = [ref.label for ref in stage_refs(cfg)] + ["the supervisor"]
        ports += [
            (f"metrics port of {label} (metrics.base_port + {k})", cfg.metrics.host, cfg.metrics.base_port + k)
            for k, label in enumerate(labels)
        ]
    if cfg.ui.enabled:
        ports.append(("ui.port (the review page)", cfg.ui.host, cfg.ui.port))
    return ports


def port_clashes(cfg: PipelineConfig) -> list[str]:
    """Two listeners on one port of one interface: the second process to bind it could never start."""
    problems, taken = [], []
    for where, host, port in listeners(cfg):
        clash = next((w for w, h, p in taken if p == port and same_interface(h, host)), None)
        if clash:
            problems.append(f"{where}: port {port} on {host or '*'} is also {clash}")
        taken.append((where, host, port))
    return problems


def same_interface(a: str, b: str) -> bool:
    """Whether binding hosts a and b can share no port: equal, either a wildcard, or both loopback."""
    return a == b or a in WILDCARD_HOSTS or b in WILDCARD_HOSTS or (is_loopback_host(a) and is_loopback_host(b))


def is_loopback(endpoint: str) -> bool:
    """Whether a tcp://HOST:PORT endpoint names this host's loopback interface only."""
    return is_loopback_host(host_and_port(endpoint)[0])


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # '*', an interface name or a host name: reachable from elsewhere
        return False


@dataclass(frozen=True)
class StageRef:
    """One stage process: its name, the camera it serves (capture, patcher) or its number (scorer)."""

    name: str
    camera: str | None = None
    index: int = 0

    @property
    def label(self) -> str:
        if self.camera:
            return f"{self.name}[{self.camera}]"
        return f"{self.name}[{self.index}]" if self.name == "scorer" else self.name

    @property
    def metric_labels(self) -> tuple[str, str, str]:
        """stage, camera, index: the supervisor's labels for this process (empty where they do not apply)."""
        return self.name, self.camera or "", str(self.index) if self.name == "scorer" else ""

    @classmethod
    def from_metric_labels(cls, labels: dict) -> StageRef:
        index = labels.get("index")
        return cls(labels["stage"], labels.get("camera") or None, int(index) if index else 0)


def stage_refs(cfg: PipelineConfig) -> list[StageRef]:
    """Every stage process of a config, in start order; metrics ports follow this order."""
    refs = [StageRef(name, camera.id) for camera in cfg.cameras for name in ("capture", "patcher")]
    refs += [StageRef("scorer", index=k) for k in range(cfg.scorer.processes)]
    return refs + [StageRef("alerter")] + [StageRef("notifier")] * (cfg.notify is not None)


def metrics_port(cfg: PipelineConfig, ref: StageRef) -> int:
    return cfg.metrics.base_port + stage_refs(cfg).index(ref)


def supervisor_metrics_port(cfg: PipelineConfig) -> int:
    return cfg.metrics.base_port + len(stage_refs(cfg))


def free_port_base(count: int, host: str = "127.0.0.1", preferred: int | None = None, tries: int = 100) -> int:
    """The first of `count` consecutive free TCP ports: `preferred` if its range is free, else a random one."""
    rng = random.Random()
    for base in [preferred] * bool(preferred) + [rng.randint(20000, 60000 - count) for _ in range(tries)]:
        if all(_port_free(host, port) for port in range(base, base + count)):
            return base
    raise OSError(f"no {count} consecutive free ports found on {host}")


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def scoring_settings(cfg: PipelineConfig, card: ModelCard) -> ScoringSettings:
    """The card's operating point with the config's `scoring` overrides (checked when the config loaded)."""
    return ScoringSettings.from_dict({**card.scoring.to_dict(), **cfg.scoring})


def load(path: str | os.PathLike, overrides: dict | None = None) -> PipelineConfig:
    return typed_config.load(path, PipelineConfig, overrides)
