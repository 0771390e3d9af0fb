"""Prometheus metrics of the pipeline: every name in one place.

Each stage process serves its own /metrics (port from the config), and so does
the supervisor (`vad run`). Labels stay low-cardinality: camera ids come from the
config (messages naming other cameras are rejected before they reach a metric),
reasons are fixed words, and `stage` is always one of capture, patcher, scorer,
alerter; the process it is (e.g. the patch stage of camera entrance, scorer 1)
is in the `camera` and `index` labels of the supervisor's metrics, and in the
`process` label Prometheus gives each target.
The default registry also carries the process collector, so every endpoint
reports `process_resident_memory_bytes` and CPU time.

Every label set a stage can report is created at 0 when it starts
(`initialise`), so increase() and rate() see the first step of each counter. The
`_created` series of counters and histograms are not exported (nothing reads
them, and they double the series).
"""

from __future__ import annotations

import logging
import ssl
import urllib.request

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, Info, disable_created_metrics, start_http_server

log = logging.getLogger(__name__)

disable_created_metrics()  # at import: every stage process, and the supervisor, imports this module before serving

_STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

FRAMES_CAPTURED = Counter("vad_frames_captured", "Frames read from the source and sent on", ["camera"])
FRAMES_DROPPED = Counter(
    "vad_frames_dropped",
    "Frames not scored: backpressure (live source, downstream slow), lost (sent but never reached the alerter: "
    "a stage killed with frames in flight, a refused message), unreadable (bad image file), "
    "oversized (larger than messaging.max_message_bytes)",
    ["camera", "reason"],
)
FRAMES_SCORED = Counter("vad_frames_scored", "Frames scored by the model", ["camera"])
PATCHES_SCORED = Counter("vad_patches_scored", "Patches that went through the network", ["camera"])
PATCHES_GATED = Counter("vad_patches_gated", "Patches the cascade gate rejected as confidently normal", ["camera"])
FRAMES_BUSIER_THAN_TRAINING = Counter(
    "vad_frames_busier_than_training",
    "Frames with more moving patches than any training frame: the model's calibration extrapolates there",
    ["camera"],
)
STAGE_SECONDS = Histogram(
    "vad_stage_seconds",
    "Processing time per message (per batch at the scorer)",
    ["stage", "camera"],
    buckets=_STAGE_BUCKETS,
)
CAPTURE_TO_SCORE = Histogram(
    "vad_capture_to_score_seconds", "Capture time to frame score", ["camera"], buckets=_LATENCY_BUCKETS
)
CAPTURE_TO_ALERT = Histogram(
    "vad_capture_to_alert_seconds",
    "Capture time to the alert stage's decision (event logged and published, if any)",
    ["camera"],
    buckets=_LATENCY_BUCKETS,
)
QUEUE_DEPTH = Gauge(
    "vad_queue_depth",
    "Items waiting inside a stage: live frame buffer (capture), frames per model call (scorer), "
    "frames held for reordering (alerter)",
    ["stage", "camera"],
)
EVENTS = Counter("vad_events", "Alert events published", ["camera", "type"])
CAMERA_UP = Gauge("vad_camera_up", "1 while the source delivers frames, 0 while it is lost", ["camera"])
CAMERA_RECONNECTS = Counter("vad_camera_reconnects", "Attempts to reopen a lost or unopenable source", ["camera"])
FRAME_SCORE = Gauge("vad_frame_score", "Last smoothed frame score", ["camera"])
MESSAGES_REJECTED = Counter(
    "vad_messages_rejected",
    "Messages a stage received and dropped as unusable, by reason (a part over messaging.max_message_bytes never "
    "reaches the stage: libzmq drops the sender's connection, which no metric can tell from a peer leaving)",
    ["stage", "reason"],
)
CAMERA_BLIND = Gauge(
    "vad_camera_blind",
    "1 while this camera's frame scores keep reaching the alerter and every one is rejected: no event can fire on it",
    ["camera"],
)
MODEL_INFO = Info("vad_model", "The model this scorer runs")
MEDIA_WRITTEN = Counter("vad_media_written", "Event snapshots and clips written", ["kind"])
MEDIA_DROPPED = Counter(
    "vad_media_dropped",
    "Event media work not done: backlog (the media writer far behind), no_preview (the frame's preview never "
    "reached the alerter), bad_preview (not a usable JPEG), error (a write failed: disk full, ...)",
    ["reason"],
)
RETENTION_PRUNED = Counter(
    "vad_retention_pruned_events", "Ended events whose media and log rows retention removed", ["why"]
)
HANDSHAKES_FAILED = Counter(
    "vad_handshakes_failed",
    "Refused ZeroMQ handshakes (CURVE): side 'server' when this process refused a client, 'client' when a server "
    "refused it; reason not_authorized (key not in authorized_keys), curve_mismatch (CURVE on at one end only), "
    "wrong_key (the hosts hold different pipeline key pairs), other",
    ["stage", "side", "reason"],
)
LINKS_REFUSED = Gauge(
    "vad_links_refused",
    "Endpoints this process connects to that refuse its handshake right now: connected, but refused",
    ["stage"],
)

# The supervisor's.
# `camera`: the camera a capture or patch process serves; `index`: a scorer's number; empty where not used.
STAGE_LABELS = ["stage", "camera", "index"]
STAGE_UP = Gauge("vad_stage_up", "1 while the stage process runs, 0 while it waits to be restarted", STAGE_LABELS)
STAGE_RESTARTS = Counter(
    "vad_stage_restarts",
    "Times the supervisor started a stage process again after it exited unexpectedly",
    STAGE_LABELS,
)

# The alerter's. Registered by the alerter only (`register_alerter_metrics`): a gauge at 0 in
# every other process would read as an event log that is down.
EVENT_LOG_UP = Gauge("vad_event_log_up", "1 while the event log takes writes, 0 while writing fails", registry=None)
EVENT_LOG_ERRORS = Counter(
    "vad_event_log_errors", "Failed attempts to open or write the event log (disk full, read-only, ...)", registry=None
)
EVENT_LOG_HELD = Gauge(
    "vad_event_log_held", "Events waiting, unpublished, for the event log to take writes again", registry=None
)
EVENTS_LOST = Counter(
    "vad_events_lost",
    "Events dropped because the event log stayed unwritable while alerter.max_held_events waited",
    registry=None,
)

MEDIA_BACKLOG = Gauge("vad_media_backlog", "Frames waiting for the media writer and the clip encoder", registry=None)
MEDIA_DISK_BYTES = Gauge("vad_media_disk_bytes", "Bytes of event media under RUN_DIR/snapshots", registry=None)

# The notifier's, one series per destination ("mqtt", or a webhook's name).
NOTIFY_DELIVERED = Counter(
    "vad_notify_delivered", "Events a destination acknowledged (broker PUBACK, HTTP 2xx)", ["destination"]
)
NOTIFY_FAILED = Counter(
    "vad_notify_failed",
    "Delivery attempts that failed (connection refused or lost, timeout, HTTP error status)",
    ["destination"],
)
NOTIFY_RETRIED = Counter("vad_notify_retried", "Delivery attempts made after a failed one", ["destination"])
NOTIFY_DROPPED = Counter(
    "vad_notify_dropped",
    "Events given up undelivered: more than max_queue waited (queue), or older than max_age_seconds (age)",
    ["destination", "reason"],
)
NOTIFY_LAG_EVENTS = Gauge(
    "vad_notify_lag_events", "Event-log rows a destination has not taken yet (of the types it gets)", ["destination"]
)
NOTIFY_LAG_SECONDS = Gauge(
    "vad_notify_lag_seconds",
    "Age of the oldest event a destination has not taken yet; 0 when caught up",
    ["destination"],
)


def register_alerter_metrics() -> None:
    for metric in (EVENT_LOG_UP, EVENT_LOG_ERRORS, EVENT_LOG_HELD, EVENTS_LOST, MEDIA_BACKLOG, MEDIA_DISK_BYTES):
        try:
            REGISTRY.register(metric)
        except ValueError:  # already registered (an alerter run before in this process: tests)
            pass


# Why a stage drops a message (vad_messages_rejected_total{reason}); the alerter has more reasons than the others.
REJECTION_REASONS = ("malformed", "oversized", "unknown_camera", "unexpected_kind", "error")
ALERTER_REJECTION_REASONS = REJECTION_REASONS + (
    "model_mismatch",  # scored by another model than the alerter's
    "late",  # after its turn, twice, or from a capture run that ended
    "foreign_stream",  # a stream id other than the camera's while the camera's stream delivers
    "seq_out_of_range",  # far beyond the reorder window of the camera's stream
    "subscription",  # an events subscriber cut for sending more than a budget of what can match no event
)
EVENT_TYPES = ("start", "update", "end")


# The per-camera series each stage reports: (metric, labels after the camera).
_PER_CAMERA = {
    "capture": [(FRAMES_CAPTURED,), (CAMERA_RECONNECTS,)]
    + [(FRAMES_DROPPED, reason) for reason in ("backpressure", "unreadable", "oversized")],
    "patcher": [(PATCHES_GATED,)],
    "scorer": [(FRAMES_SCORED,), (PATCHES_SCORED,), (FRAMES_BUSIER_THAN_TRAINING,), (CAPTURE_TO_SCORE,)],
    "alerter": [(FRAMES_DROPPED, "lost"), (CAPTURE_TO_ALERT,), (CAMERA_BLIND,)]
    + [(EVENTS, kind) for kind in EVENT_TYPES],
}
# And the others: (metric, labels). Links and the notifier create theirs when they start.
_PER_STAGE = {
    "alerter": [(MEDIA_WRITTEN, kind) for kind in ("snapshot", "clip")]
    + [(MEDIA_DROPPED, reason) for reason in ("backlog", "no_preview", "bad_preview", "error")]
    + [(RETENTION_PRUNED, why) for why in ("age", "disk")],
}


def initialise(stage: str, cameras: list[str]) -> None:
    """Create every label set a stage process can report, at 0, before it reports anything.

    A labelled counter that appears only at its first increment hides that step
    from increase() and rate(): three restarts read as two.
    """
    camera_label = cameras[0] if stage in ("capture", "patcher") else ""
    if stage in ("patcher", "scorer", "alerter"):
        STAGE_SECONDS.labels(stage, camera_label)
        for reason in ALERTER_REJECTION_REASONS if stage == "alerter" else REJECTION_REASONS:
            MESSAGES_REJECTED.labels(stage, reason)
    if stage in ("capture", "scorer", "alerter"):
        QUEUE_DEPTH.labels(stage, camera_label)
    for metric, *labels in _PER_STAGE.get(stage, []):
        metric.labels(*labels)
    for camera in cameras:
        for metric, *labels in _PER_CAMERA.get(stage, []):
            metric.labels(camera, *labels)


def fetch(metrics, port: int, timeout: float) -> str:
    """The /metrics text a local process serves on `port`, over TLS as the config says; OSError if none answers.

    With TLS it trusts exactly the certificate the config names (the one being served) and, with client_ca,
    presents it as its own client certificate.
    """
    host = metrics.host if metrics.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    address = f"[{host}]" if ":" in host else host
    context = None
    if metrics.tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False  # the certificate is pinned below, whatever name it carries
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        context.load_verify_locations(metrics.tls.certificate)
        if metrics.tls.client_ca:
            context.load_cert_chain(metrics.tls.certificate, metrics.tls.key)
    scheme = "http" if context is None else "https"
    url = f"{scheme}://{address}:{port}/metrics"
    try:
        return urllib.request.urlopen(url, timeout=timeout, context=context).read().decode()
    except OSError as e:
        raise OSError(f"{url} ({e})") from None


def serve(metrics, port: int) -> None:
    """Serve /metrics (metrics: the config's MetricsConfig) from a background thread of this process."""
    tls = metrics.tls
    if tls is None:
        start_http_server(port, addr=metrics.host)
    else:
        start_http_server(
            port,
            addr=metrics.host,
            certfile=tls.certificate,
            keyfile=tls.key,
            client_cafile=tls.client_ca,
            client_auth_required=tls.client_ca is not None,
        )
    scheme = "http" if tls is None else "https"
    log.info(
        "metrics on %s://%s:%d/metrics%s",
        scheme,
        metrics.host,
        port,
        " (client certificates)" * bool(tls and tls.client_ca),
    )
