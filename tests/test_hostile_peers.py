"""A hostile or broken peer cannot crash a stage or balloon its memory.

Each receiving stage (patch, scorer, alerter) runs as its own process with this
test standing in for its neighbours. It gets a burst of hostile messages (garbage,
a JSON nesting bomb, NaN and infinite numbers, unknown kinds, huge claimed shapes,
wrong dtypes, 100 000 parts, an absurd frame shape, a 64 MiB part), then one good
message, which must come out the other side as usual.
"""

from __future__ import annotations

import json
import signal
import time

import numpy as np
import pytest
import zmq

from streamer.model import ModelCard, card_path_for
from streamer.patches import PatchExtractor
from streamer.pipeline import config as pipeline_config
from streamer.pipeline import messages
from streamer.pipeline.events import read_events

from .pipeline_helpers import (
    frame_header,
    read_jsonl,
    rss_bytes,
    running,
    sample,
    scores_parts,
    scrape,
    short_dir,
    try_scrape,
    wait_for,
    write_config,
)

HUGE_PART = 64 << 20  # four times the default message limit
MEMORY_SLACK = 32 << 20  # RSS a stage may gain over the whole burst (it would gain > 64 MiB holding the huge part)


def good_message(stage: str, card: ModelCard) -> list:
    """What the stage normally receives: a frame, a frame's patches, or a frame's scores."""
    image = np.random.default_rng(0).integers(0, 255, card.patch.frame_size, dtype=np.uint8)
    if stage == "patcher":
        return messages.encode(frame_header(), {"image": image})
    if stage == "scorer":
        patches = PatchExtractor(card.patch).push(image)
        header = {**frame_header(), "kind": "patches", "frame_shape": list(image.shape), "moving": len(patches)}
        return messages.encode(header, {"patches": patches, "active": np.ones(len(patches), bool)})
    return scores_parts(card, seq=0, score=0.0)


def hostile_variants(good: list) -> dict[str, list]:
    """Messages every stage must count as malformed and drop, made from a good one."""
    header = json.loads(bytes(good[0]))
    buffers = [bytes(memoryview(b)) for b in good[1:]]

    def with_header(text: str | None = None, **changes) -> list:
        return [(text or json.dumps({**header, **changes})).encode(), *buffers]

    first = header["arrays"][0]
    variants = {
        "garbage": [b"\x00\xff\xfe not a header"],
        "nesting bomb": [b"[" * 4000],
        "NaN": with_header(t_capture=float("nan")),
        "infinite number": with_header(json.dumps({**header, "t_capture": 4321.5}).replace("4321.5", "1e999")),
        "unknown kind": with_header(kind="video"),
        "huge claimed shape": with_header(
            arrays=[{**first, "shape": [2**40] * len(first["shape"])}, *header["arrays"][1:]]
        ),
        "wrong dtype": with_header(arrays=[{**first, "dtype": "float64"}, *header["arrays"][1:]]),
        "too many parts": [good[0], *[b""] * 100_000],
    }
    if "frame_shape" in header:
        variants["absurd frame shape"] = with_header(frame_shape=[1_000_000, 1_000_000])
    if "moving" in header:
        variants["impossible moving count"] = with_header(moving=-5)
    return variants


@pytest.mark.parametrize("stage", ["patcher", "scorer", "alerter"])
def test_a_stage_survives_hostile_messages_without_growing(tiny_model, stage):
    with short_dir() as run_dir:
        attack(run_dir, tiny_model, stage)


def attack(run_dir, tiny_model, stage):
    card = ModelCard.load(card_path_for(tiny_model))
    config = write_config(run_dir, tiny_model, [{"id": "cam1", "source": str(run_dir), "kind": "folder"}])
    cfg = pipeline_config.load(config)
    ref = pipeline_config.StageRef(stage, "cam1" if stage == "patcher" else None)
    port = pipeline_config.metrics_port(cfg, ref)
    camera = cfg.cameras[0]
    # Where this test stands in for the stage's neighbours: (input endpoint, we bind it?), (output, we bind it?)
    links = {
        "patcher": ((camera.frames_endpoint, True), (camera.patches_endpoint, False)),
        "scorer": ((camera.patches_endpoint, True), (cfg.alerter.scores_endpoint, True)),
        "alerter": ((cfg.alerter.scores_endpoint, False), (None, None)),
    }[stage]
    good = good_message(stage, card)
    variants = hostile_variants(good)
    with zmq.Context() as ctx, ctx.socket(zmq.PUSH) as upstream, ctx.socket(zmq.PULL) as downstream:
        for socket in (upstream, downstream):
            socket.setsockopt(zmq.LINGER, 0)
        upstream.setsockopt(zmq.SNDTIMEO, 20000)
        (endpoint, bind), (out_endpoint, out_bind) = links
        upstream.bind(endpoint) if bind else upstream.connect(endpoint)
        if out_endpoint:
            downstream.bind(out_endpoint) if out_bind else downstream.connect(out_endpoint)
        args = ("stage", stage, "--config", str(config)) + (("--camera", "cam1") if stage == "patcher" else ())
        with running(*args, log=run_dir / "log") as (process, _):
            wait_for(lambda: try_scrape(port), 30, f"the {stage}'s metrics endpoint")
            before = rss_bytes(process.pid)
            for parts in variants.values():
                upstream.send_multipart(parts)

            def rejected():
                return sample(scrape(port), "vad_messages_rejected_total", stage=stage, reason="malformed")

            wait_for(lambda: rejected() == len(variants), 20, "every hostile message to be counted")
            monitor = upstream.get_monitor_socket(zmq.EVENT_DISCONNECTED)
            upstream.send_multipart([good[0], b"\0" * HUGE_PART])  # refused by libzmq: it drops the connection
            assert monitor.poll(20000), "the stage did not drop the connection of the peer sending 64 MiB"
            upstream.disable_monitor()

            # The stage connects again by itself. A message sent while the old connection is still being torn
            # down can go down with it, so the good frame is offered once a second until one comes through.
            def passed_on() -> bool:
                messages.send(upstream, good)  # blocks until the stage is connected again
                if stage == "alerter":
                    time.sleep(1)
                    return bool(read_jsonl(run_dir / "scores.jsonl"))
                return downstream.poll(1000) != 0

            wait_for(passed_on, 20, f"the {stage} to pass good messages on again")
            if stage != "alerter":
                out = messages.decode(downstream.recv_multipart(copy=False), 1 << 20)
                assert out.kind == {"patcher": "patches", "scorer": "scores"}[stage] and out.seq == 0
            assert rejected() == len(variants)  # the huge part never reached the stage's code
            assert process.poll() is None
            assert rss_bytes(process.pid) - before < MEMORY_SLACK


def test_a_foreign_stream_neither_blinds_a_camera_nor_freezes_the_alerter(tiny_model):
    with short_dir() as run_dir:
        foreign_stream_attack(run_dir, tiny_model)


def foreign_stream_attack(run_dir, tiny_model):
    """Issue 19, 1: one well-formed message of a new stream retired the camera's real stream, and seq 10**12
    of that stream made the alerter step towards it one number at a time, deaf to SIGTERM."""
    card = ModelCard.load(card_path_for(tiny_model))
    config = write_config(
        run_dir,
        tiny_model,
        [{"id": "cam1", "source": str(run_dir), "kind": "folder"}],
        alerter={"end_after": 2, "update_every": 3},
    )
    cfg = pipeline_config.load(config)
    port = pipeline_config.metrics_port(cfg, pipeline_config.StageRef("alerter"))
    high = card.scoring.threshold * 3
    real = [0.0] * 5 + [high] * 5 + [0.0] * 5  # an anomaly in frames 5-9, after the attack
    with (
        zmq.Context() as ctx,
        ctx.socket(zmq.PUSH) as scorer,
        running("stage", "alerter", "--config", str(config), log=run_dir / "log") as (process, _),
    ):
        scorer.setsockopt(zmq.LINGER, 0)
        scorer.connect(cfg.alerter.scores_endpoint)
        wait_for(lambda: try_scrape(port), 30, "the alerter's metrics endpoint")
        for seq in range(5):
            messages.send(scorer, scores_parts(card, seq, real[seq], stream="real"))
        wait_for(lambda: len(read_jsonl(run_dir / "scores.jsonl")) == 5, 20, "the first real frames")
        messages.send(scorer, scores_parts(card, 0, high, stream="evil"))  # a plausible start, even
        messages.send(scorer, scores_parts(card, 10**12, high, stream="evil"))
        for seq in range(5, len(real)):
            messages.send(scorer, scores_parts(card, seq, real[seq], stream="real"))
        wait_for(lambda: len(read_jsonl(run_dir / "scores.jsonl")) == len(real), 20, "every real frame decided on")
        families = scrape(port)
        assert sample(families, "vad_messages_rejected_total", stage="alerter", reason="foreign_stream") == 2
        assert sample(families, "vad_messages_rejected_total", stage="alerter", reason="late") == 0
        assert sample(families, "vad_camera_blind", camera="cam1") == 0
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0 and time.monotonic() - started < 5
    records = read_jsonl(run_dir / "scores.jsonl")
    assert [(r["seq"], r["score"]) for r in records] == list(enumerate(real))
    events = read_events(cfg.alerter.event_log)
    assert [e["type"] for e in events][0] == "start" and events[-1]["type"] == "end"
    assert all(e["frames"] >= 1 and e["seq"] < len(real) for e in events)
    assert events[-1]["reason"] == "below_threshold"
