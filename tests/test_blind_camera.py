"""A camera whose frames all reach the alerter and are all rejected is blind, and says so.

Issue 19, 1: every stage up, frames scored, and no event able to fire, with no metric
or rule to tell. Here `vad run` has no scorer of its own (`scorer.processes: 0`, as
with remote scorers) and this test is the scorer, one that runs another model: every
result is rejected (`model_mismatch`). After watch.BLIND_SECONDS the alerter reports
the camera blind and `vad health` fails; results of the right model clear it.
"""

from __future__ import annotations

import dataclasses

import zmq

from streamer.cli import main
from streamer.model import ModelCard, card_path_for
from streamer.pipeline import config as pipeline_config
from streamer.pipeline import messages
from streamer.pipeline.config import StageRef
from streamer.pipeline.watch import BLIND_SECONDS

from .pipeline_helpers import (
    running,
    sample,
    scores_parts,
    scrape,
    short_dir,
    stages_of,
    try_scrape,
    wait_for,
    write_config,
)


def test_a_camera_whose_scores_are_all_rejected_is_reported_blind(tiny_model, synthetic_ped2, capsys):
    with short_dir() as run_dir:
        blind_camera(run_dir, tiny_model, synthetic_ped2, capsys)


def blind_camera(run_dir, tiny_model, synthetic_ped2, capsys):
    card = ModelCard.load(card_path_for(tiny_model))
    other_model = dataclasses.replace(card, onnx_sha256="0" * 64)
    camera = {"id": "cam1", "source": str(synthetic_ped2 / "Test" / "Test001"), "pace": True, "fps": 10, "loop": True}
    config = write_config(run_dir, tiny_model, [camera], scorer={"processes": 0})
    cfg = pipeline_config.load(config)
    port = pipeline_config.metrics_port(cfg, StageRef("alerter"))
    with (
        zmq.Context() as ctx,
        ctx.socket(zmq.PUSH) as scorer,
        running("run", "--config", str(config), log=run_dir / "log") as (process, _),
    ):
        scorer.setsockopt(zmq.LINGER, 0)
        scorer.connect(cfg.alerter.scores_endpoint)
        wait_for(lambda: len(stages_of(process.pid)) == 3 and try_scrape(port), 30, "capture, patcher and alerter")
        seq = 0

        def send(model: ModelCard, until) -> None:
            nonlocal seq

            def sent():
                nonlocal seq
                messages.send(scorer, scores_parts(model, seq, 0.0, stream="cam1-run"))
                seq += 1
                return until()

            wait_for(sent, BLIND_SECONDS + 20, "the alerter's verdict", interval=0.1)

        def blind() -> bool:
            return sample(scrape(port), "vad_camera_blind", camera="cam1") == 1

        assert not blind()
        send(other_model, blind)
        families = scrape(port)
        assert sample(families, "vad_messages_rejected_total", stage="alerter", reason="model_mismatch") == seq
        assert main(["health", "--config", str(config)]) == 1
        assert "camera[cam1]             blind" in capsys.readouterr().out
        send(card, lambda: not blind())
        assert main(["health", "--config", str(config)]) == 0
        assert "camera[cam1]             up" in capsys.readouterr().out
