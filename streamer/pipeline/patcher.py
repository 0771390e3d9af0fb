"""Patch stage: one camera's frames -> patches that pass the cascade gate, for the scorers.

Stateful per camera (motion channels need the previous frame), so each camera has
its own patch process. The work is the core's: `PatchExtractor.push` + `gate_mask`.
"""

from __future__ import annotations

import logging
import threading
import time

import cv2
import numpy as np
import zmq

from ..model import ModelCard, card_path_for
from ..patches import PatchExtractor
from ..scoring import gate_mask
from . import messages, telemetry
from .config import PipelineConfig
from .links import Links
from .runtime import Inbox, make_socket, send_blocking
from .security import curve_for

log = logging.getLogger(__name__)


def run(cfg: PipelineConfig, camera_id: str, stop: threading.Event) -> int:
    camera = cfg.camera(camera_id)
    card = ModelCard.load(card_path_for(cfg.model))
    card.check_geometry()
    gate = card.gate if cfg.gate else None
    cv2.setNumThreads(cfg.patcher.threads)
    extractor = PatchExtractor(card.patch)
    stage_time = telemetry.STAGE_SECONDS.labels("patcher", camera.id)
    gated = telemetry.PATCHES_GATED.labels(camera.id)
    gate_text = f"motion >= {gate['motion_threshold']:g}" if gate else "off"
    log.info("%s: %s patches at %s, gate %s", camera.id, card.patch.motion, card.patch.frame_size, gate_text)
    with zmq.Context() as ctx, curve_for(ctx, cfg.security.curve) as curve:
        inbox = Inbox(
            make_socket(ctx, zmq.PULL, camera.frames_endpoint, bind=False, messaging=cfg.messaging, curve=curve),
            "patcher",
            stop,
            cfg.messaging,
            connected={camera.frames_endpoint: camera.id},
        )
        out = make_socket(ctx, zmq.PUSH, camera.patches_endpoint, bind=True, messaging=cfg.messaging, curve=curve)
        out_links = Links(out, "patcher")

        def patch_message(message: messages.Message) -> list:
            if message.camera != camera.id:
                raise messages.MessageError("unknown_camera", f"{message.camera!r} on {camera.id}'s input")
            if message.kind == "end":
                return messages.derive(message, "end", reason=message.header["reason"])
            if message.kind != "frame":
                raise messages.MessageError("unexpected_kind", f"{message.kind} message on the frame input")
            image = message.arrays["image"]
            if message.header["reset"]:
                extractor.reset()
            patches = extractor.push(image)
            moving = gate_mask(patches, card.patch, card.gate)  # count bands need this count, gate on or off
            active = moving if gate else np.ones(len(patches), dtype=bool)
            gated.inc(len(active) - int(active.sum()))
            return messages.derive(
                message,
                "patches",
                {"patches": patches[active], "active": active},
                frame_shape=list(image.shape),
                moving=int(moving.sum()),
            )

        while inbox.open():
            out_links.poll()
            message = inbox.receive()
            if message is None:
                continue
            started = time.perf_counter()
            parts = inbox.handle(patch_message, message)
            stage_time.observe(time.perf_counter() - started)
            if parts is not None and not send_blocking(out, parts, stop, cfg.messaging.linger_seconds, out_links):
                log.warning("%s: downstream gone during shutdown; frame %d not passed on", camera.id, message.seq)
        inbox.close()
        out_links.close()
        out.close()
    return 0
