"""Alert stage: frame scores from all scorers -> per-camera order -> smoothing -> events.

Per camera: results are put back in capture order (`Reorder`), smoothed with the
core's `CausalSmoother`, and compared with the model's threshold by an
`EventTracker`. Each event is committed to the durable log, then published on
the events socket as [b"event", JSON] (`Outbox`, `EventPublisher`); each frame's
smoothed score is published as [b"score", JSON] (not logged: a live reading for
the notifier's MQTT score topic). Optionally every frame's scores go to a JSON
lines file (evaluation, benchmarks). A camera whose scores are all rejected is
reported blind (`CameraWatch`).

How far each camera's stream got is kept in a checkpoint (RUN_DIR/state), so a
restarted alerter counts the frames a killed one had in flight as lost, and the
events it left open are ended (reason `restart`) by the Outbox.

Every frame and event is also handed to `media.EventMedia` (snapshots, score
traces, clips; written in the background), and `retention` prunes old events.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from contextlib import ExitStack

import zmq

from ..model import ModelCard, card_path_for
from ..patches import PatchExtractor
from ..scoring import CausalSmoother
from . import telemetry
from .checkpoint import Checkpoint, state_path
from .config import PipelineConfig, scoring_settings
from .events import EventLog, EventTracker, top_boxes
from .links import Links
from .media import FINISH_SECONDS, STOP_SECONDS, EventMedia, without_media
from .messages import Message, MessageError
from .outbox import SCORE_TOPIC, Outbox
from .preview import PreviewReader
from .publisher import EventPublisher
from .reorder import Reorder
from .retention import Retention, RetentionThread
from .runtime import Inbox, make_socket
from .security import curve_for
from .watch import CameraWatch

log = logging.getLogger(__name__)

SPILL_FILE = "unlogged-events.jsonl"  # in the run dir: events the log could not take at exit (Outbox)
SUBSCRIBER_GRACE_SECONDS = 0.5  # between binding the PUB socket and taking the first scores


class CameraState:
    def __init__(self, camera: str, cfg: PipelineConfig, settings, tracker: EventTracker, position):
        self.reorder = Reorder(camera, cfg.alerter.max_pending, cfg.alerter.reorder_timeout, position)
        self.smoother = CausalSmoother(settings)
        self.tracker = tracker
        self.watch = CameraWatch(camera)
        self.ended = False
        self.stream: str | None = None  # of the last frame processed
        self.last_position: dict | None = None


class Alerter:
    def __init__(
        self, cfg: PipelineConfig, outbox: Outbox, progress: Checkpoint, score_log=None, media: EventMedia | None = None
    ):
        card = ModelCard.load(card_path_for(cfg.model))
        card.check_geometry()
        self.cfg = cfg
        self.sha256 = card.onnx_sha256
        self.settings = scoring_settings(cfg, card)
        self.threshold = self.settings.threshold
        self.count_bands = card.count_bands
        self.extractor = PatchExtractor(card.patch)  # only for patch boxes in frame pixels
        self.outbox = outbox
        self.progress = progress
        self.score_log = score_log
        self.media = media
        model = {"method": card.method, "sha256": card.onnx_sha256}
        reached = progress.read() or {}
        self.cameras = {
            c.id: CameraState(
                c.id,
                cfg,
                self.settings,
                EventTracker(c.id, self.threshold, cfg.alerter.end_after, cfg.alerter.update_every, model),
                reached.get(c.id),
            )
            for c in cfg.cameras
        }
        self._saved = self._positions()

    @property
    def all_ended(self) -> bool:
        return all(state.ended for state in self.cameras.values())

    def accept(self, message: Message, now: float | None = None) -> None:
        """Check a message and process whatever it makes ready, in order; MessageError if unusable."""
        state = self.cameras.get(message.camera)
        if state is None:
            raise MessageError("unknown_camera", f"camera {message.camera!r} is not configured")
        now = time.monotonic() if now is None else now
        try:
            self._check(message)
            ready = state.reorder.push(message, now)
        except MessageError:
            state.watch.rejected(now)
            raise
        state.watch.accepted()
        for item in ready:
            self._process(state, item)
        self._save_progress()

    def _check(self, message: Message) -> None:
        if message.kind == "scores":
            if message.header["model"] != self.sha256:
                raise MessageError("model_mismatch", f"scored by model {message.header['model'][:12]}…")
            boxes = self.extractor.boxes(tuple(message.header["frame_shape"]))
            if len(boxes) != len(message.arrays["patch_scores"]) or not 0 <= message.header["moving"] <= len(boxes):
                raise MessageError(
                    "malformed",
                    f"{len(message.arrays['patch_scores'])} patch scores and {message.header['moving']} moving "
                    f"for {len(boxes)} patch positions",
                )
        elif message.kind != "end":
            raise MessageError("unexpected_kind", f"{message.kind} message on the score input")

    def expire(self) -> None:
        now = time.monotonic()
        for state in self.cameras.values():
            for ready in state.reorder.expire(now):
                self._process(state, ready)
            state.watch.update(now)
        self._save_progress()
        self.outbox.flush()
        telemetry.QUEUE_DEPTH.labels("alerter", "").set(sum(len(s.reorder) for s in self.cameras.values()))

    def _positions(self) -> dict:
        return {camera: state.reorder.position for camera, state in self.cameras.items() if state.reorder.position}

    def _save_progress(self) -> None:
        positions = self._positions()
        if positions != self._saved:
            self.progress.write(positions)
            self._saved = positions

    def _process(self, state: CameraState, message: Message) -> None:
        header = message.header
        position = {
            "seq": header["seq"],
            "frame_index": header.get("index"),
            "clip": header.get("clip", ""),
            "capture_time": header["t_capture"],
        }
        if header["stream"] != state.stream:  # another capture run: what was open ends with the old one
            if state.stream is not None:
                self._emit(state.tracker.close(state.last_position or position, "new_recording"))
                state.smoother.reset()
            state.stream = header["stream"]
        if message.kind == "end":
            reason = "end_of_stream" if header["reason"] == "end_of_stream" else "shutdown"
            self._emit(state.tracker.close(state.last_position or position, reason))
            state.smoother.reset()
            state.ended = True
            return
        if header["reset"]:
            self._emit(state.tracker.close(state.last_position or position, "new_recording"))
            state.smoother.reset()
            state.ended = False
        state.last_position = position
        patch_scores = message.arrays["patch_scores"]
        smoothed = state.smoother.update(header["score"])
        telemetry.FRAME_SCORE.labels(message.camera).set(smoothed)
        score = {"camera": message.camera, "seq": header["seq"], "capture_time": header["t_capture"], "score": smoothed}
        self.outbox.publish([SCORE_TOPIC, json.dumps(score).encode()])
        level = self.threshold  # patch scores are on the aggregated score's scale, before count bands
        if self.count_bands is not None:
            level = self.count_bands.level(self.threshold, header["moving"])
        if self.media is not None:
            self.media.frame(message.camera, header, smoothed, patch_scores, level)

        def boxes() -> list[dict]:
            frame_boxes = self.extractor.boxes(tuple(header["frame_shape"]))
            return top_boxes(patch_scores, frame_boxes, level, self.cfg.alerter.max_boxes)

        self._emit(state.tracker.frame(position, smoothed, boxes))
        now = time.time()
        telemetry.CAPTURE_TO_ALERT.labels(message.camera).observe(now - header["t_capture"])
        if self.score_log:
            record = {
                "camera": message.camera,
                "clip": header["clip"],
                "index": header["index"],
                "seq": header["seq"],
                "score": header["score"],
                "smoothed": smoothed,
                "active": header["active"],
                "moving": header["moving"],
                "t_capture": header["t_capture"],
                "t_scored": header["t_scored"],
                "t_alert": now,
            }
            self.score_log.write(json.dumps(record) + "\n")

    def _emit(self, event: dict | None) -> None:
        if event is not None:
            self.outbox.put(self.media.event(event) if self.media is not None else without_media(event))

    def shutdown(self) -> None:
        """Close every open event (the log then holds an end for each start)."""
        for state in self.cameras.values():
            if state.tracker.is_open:
                self._emit(state.tracker.close(state.last_position, "shutdown"))


def run(cfg: PipelineConfig, stop: threading.Event) -> int:
    with ExitStack() as stack, zmq.Context() as ctx, curve_for(ctx, cfg.security.curve) as curve:
        event_log = EventLog(cfg.alerter.event_log)
        stack.callback(event_log.close)
        progress = Checkpoint(state_path(cfg.run_dir, "alerter"))
        stack.callback(progress.close)
        score_log = None
        if cfg.alerter.score_log:
            score_log = stack.enter_context(open(cfg.alerter.score_log, "a", buffering=1))
        publisher = EventPublisher(ctx, cfg.alerter.events_endpoint, cfg.messaging, curve)
        publisher_links = Links(publisher.socket, "alerter")
        media = None
        if cfg.alerter.media.enabled:
            media = EventMedia(
                cfg.run_dir, cfg.alerter.media, ModelCard.load(card_path_for(cfg.model)).patch, cfg.alerter.max_boxes
            )
            stack.callback(PreviewReader(cfg, media.ring, curve).close)
        retention_stop = threading.Event()
        stack.callback(retention_stop.set)
        RetentionThread(Retention(cfg.run_dir, cfg.alerter.event_log, cfg.alerter.retention), retention_stop).start()
        # PUB keeps nothing for subscribers not yet connected, and those waiting for this endpoint retry
        # every 100 ms (ZeroMQ's slow joiner): give them time before the first event, scores come in after.
        stop.wait(SUBSCRIBER_GRACE_SECONDS)
        inbox = Inbox(
            make_socket(ctx, zmq.PULL, cfg.alerter.scores_endpoint, bind=True, messaging=cfg.messaging, curve=curve),
            "alerter",
            stop,
            cfg.messaging,
        )
        outbox = Outbox(
            event_log,
            publisher.publish,
            cfg.alerter.log_retry_seconds,
            cfg.alerter.max_held_events,
            os.path.join(cfg.run_dir, SPILL_FILE),
        )
        alerter = Alerter(cfg, outbox, progress, score_log, media)
        outbox.flush()  # ends the events a killed predecessor left open
        log.info(
            "alerter: threshold %.4g, events on %s, log %s",
            alerter.threshold,
            cfg.alerter.events_endpoint,
            cfg.alerter.event_log,
        )
        stage_time = telemetry.STAGE_SECONDS.labels("alerter", "")
        while inbox.open():
            if curve is not None and curve.subscriber_revoked():
                publisher.drop_subscribers()
            publisher_links.poll()
            publisher.serve()
            message = inbox.receive()
            if message is not None:
                started = time.perf_counter()
                try:
                    alerter.accept(message)
                except MessageError as e:
                    inbox.reject(e)
                stage_time.observe(time.perf_counter() - started)
            alerter.expire()
            if cfg.alerter.exit_at_end and alerter.all_ended:
                log.info("alerter: every camera's stream has ended")
                break
        alerter.shutdown()
        outbox.close()
        if media is not None:
            media.close(STOP_SECONDS if stop.is_set() else FINISH_SECONDS)
        inbox.close()
        publisher_links.close()
        publisher.close()
    return 0
