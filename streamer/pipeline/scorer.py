"""Scorer stage: patches -> calibrated patch scores and a frame score, for every camera.

Any number of scorer processes, on any hosts, pull from every camera's patch
stage; frames queued at once are scored in one model call. The work is the
core's: `PatchModel.raw_scores`, `calibrated_frame`, `frame_score`.
"""

from __future__ import annotations

import functools
import logging
import threading
import time

import numpy as np
import zmq

from ..model import PatchModel
from ..patches import PatchSpec, patch_boxes
from ..scoring import calibrated_frame, frame_score
from . import messages, telemetry
from .config import PipelineConfig, scoring_settings
from .links import Links
from .messages import Message, MessageError
from .runtime import Inbox, make_socket, send_blocking
from .security import curve_for

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=16)
def grid_positions(spec: PatchSpec, frame_shape: tuple[int, int]) -> int:
    """Patch positions of a frame of this shape (after resizing to the spec's working size)."""
    height, width = spec.frame_size or frame_shape
    return len(patch_boxes(height, width, spec.size, spec.stride))


def check_patches(message: Message, spec: PatchSpec) -> None:
    patches, active = message.arrays["patches"], message.arrays["active"]
    expected = (spec.channels, spec.size, spec.size)
    if patches.shape[1:] != expected:
        raise MessageError("malformed", f"patches of shape {patches.shape[1:]}, the model takes {expected}")
    positions = grid_positions(spec, tuple(message.header["frame_shape"]))
    if len(active) != positions or int(active.sum()) != len(patches) or not 0 <= message.header["moving"] <= positions:
        raise MessageError(
            "malformed",
            f"{len(patches)} patches, {int(active.sum())}/{len(active)} active and {message.header['moving']} moving "
            f"positions do not fit a {message.header['frame_shape']} frame's {positions} positions",
        )


def run(cfg: PipelineConfig, index: int, stop: threading.Event) -> int:
    model = PatchModel(
        cfg.model, device=cfg.scorer.device, threads=cfg.scorer.threads, batch_size=cfg.scorer.max_batch_patches
    )
    model.warm_up()  # memory for the largest model call now: RSS stays flat from the first frame
    card = model.card
    settings = scoring_settings(cfg, card)
    cameras = {camera.id for camera in cfg.cameras}
    telemetry.MODEL_INFO.info(
        {
            "method": card.method,
            "provider": model.provider,
            "sha256": card.onnx_sha256,
            "threshold": f"{settings.threshold:.6g}",
        }
    )
    log.info("scorer %d: %s on %s, %d threads", index, model.path.name, model.provider, cfg.scorer.threads)
    batch_time = telemetry.STAGE_SECONDS.labels("scorer", "")
    with zmq.Context() as ctx, curve_for(ctx, cfg.security.curve) as curve:
        socket = make_socket(
            ctx, zmq.PULL, cfg.cameras[0].patches_endpoint, bind=False, messaging=cfg.messaging, curve=curve
        )
        for camera in cfg.cameras[1:]:
            socket.connect(camera.patches_endpoint)
        inbox = Inbox(socket, "scorer", stop, cfg.messaging, connected={c.patches_endpoint: c.id for c in cfg.cameras})
        out = make_socket(ctx, zmq.PUSH, cfg.alerter.scores_endpoint, bind=False, messaging=cfg.messaging, curve=curve)
        out_links = Links(out, "scorer", (cfg.alerter.scores_endpoint,))

        def forward(parts: list) -> None:
            if not send_blocking(out, parts, stop, cfg.messaging.linger_seconds, out_links):
                log.warning("scorer %d: alerter gone during shutdown; a result was not delivered", index)

        def admit(message: Message) -> Message | None:
            """A patches message for the batch; an end is passed straight on."""
            if message.camera not in cameras:
                raise MessageError("unknown_camera", f"camera {message.camera!r} is not configured")
            if message.kind == "end":
                forward(messages.derive(message, "end", reason=message.header["reason"]))
                return None
            if message.kind != "patches":
                raise MessageError("unexpected_kind", f"{message.kind} message on the patch input")
            check_patches(message, card.patch)
            return message

        def score(batch: list[Message]) -> list[tuple]:
            """(message, calibrated patch scores, frame score, patches scored) per frame, one model call."""
            raw = model.raw_scores(np.concatenate([m.arrays["patches"] for m in batch]))
            results, offset = [], 0
            for message in batch:
                active = message.arrays["active"]
                count = int(active.sum())
                calibrated = calibrated_frame(raw[offset : offset + count], active, card.calibration)
                offset += count
                moving = message.header["moving"]  # the gate's count, also when the pipeline's gate is off
                results.append(
                    (message, calibrated, frame_score(calibrated, moving, settings, card.count_bands), count)
                )
            return results

        while inbox.open():
            # The alerter leaving once every camera's stream has ended is a clean stop, not a dropped link.
            out_links.ended = set(out_links.connected) if inbox.links.ended == set(inbox.connected) else set()
            out_links.poll()
            first = inbox.receive()
            if first is None:
                continue
            waiting = [first, *inbox.receive_more(cfg.scorer.batch_frames - 1)]
            batch = [m for m in (inbox.handle(admit, m) for m in waiting) if m is not None]
            if not batch:
                continue
            telemetry.QUEUE_DEPTH.labels("scorer", "").set(len(batch))
            started = time.perf_counter()
            results = inbox.handle(score, batch) or []  # a failed batch counts once; the alerter counts its frames lost
            batch_time.observe(time.perf_counter() - started)
            for message, calibrated, score_of_frame, count in results:
                now = time.time()
                camera = message.camera
                telemetry.FRAMES_SCORED.labels(camera).inc()
                telemetry.PATCHES_SCORED.labels(camera).inc(count)
                if card.busier_than_training(message.header["moving"]):
                    telemetry.FRAMES_BUSIER_THAN_TRAINING.labels(camera).inc()
                telemetry.CAPTURE_TO_SCORE.labels(camera).observe(now - message.header["t_capture"])
                forward(
                    messages.derive(
                        message,
                        "scores",
                        {"patch_scores": calibrated},
                        frame_shape=message.header["frame_shape"],
                        score=score_of_frame,
                        active=count,
                        moving=message.header["moving"],
                        t_scored=now,
                        model=card.onnx_sha256,
                    )
                )
        inbox.close()
        out_links.close()
        out.close()
    return 0
