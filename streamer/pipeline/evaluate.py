"""`vad eval ped2 --pipeline`: the Ped2 test clips through the real multi-process pipeline.

One camera plays all test clips in order, each clip a new recording (the
`reset` mark restarts motion channels and smoothing, as the offline evaluation
does per clip). The alerter's score log gives the per-frame scores, which must
equal the offline ones.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import yaml
from tqdm import tqdm

from .. import ped2
from ..scoring import ScoringSettings
from . import PipelineError
from . import config as pipeline_config
from .supervisor import POLL_SECONDS, Supervisor


def score_ped2_pipeline(
    model_path: str | os.PathLike,
    root: str | os.PathLike | None,
    settings: ScoringSettings | None = None,
    device: str = "auto",
    threads: int = 0,
    scorers: int = 1,
    progress: bool = True,
) -> tuple[list[dict], int]:
    """Per-frame records like `score_ped2`'s, and the number of test frames that were not scored."""
    if scorers < 1:
        raise PipelineError(f"the pipeline needs at least one scorer process to score anything, got {scorers}")
    clips = {clip.name: clip for clip in ped2.test_clips(root)}
    run_dir = Path(tempfile.mkdtemp(prefix="vad-eval-"))
    try:
        score_log = run_dir / "scores.jsonl"
        config = {
            "model": str(model_path),
            "run_dir": str(run_dir),
            "cameras": [{"id": "ped2", "kind": "ped2", "source": "test", "data": str(ped2.resolve_root(root))}],
            "scoring": settings.to_dict() if settings else {},
            "scorer": {"processes": scorers, "device": device, "threads": threads},
            "alerter": {
                "events_endpoint": f"ipc://{run_dir}/events",
                "score_log": str(score_log),
                "exit_at_end": True,
                "media": {"enabled": False},  # scores are wanted here, not pictures
            },
            "metrics": {"enabled": False},
            "supervisor": {"restart": False},  # a restarted capture would play the clips again: fail instead
        }
        config_path = run_dir / "pipeline.yaml"
        config_path.write_text(yaml.safe_dump(config))
        supervisor = Supervisor(config_path, pipeline_config.load(config_path), log_level="warning")
        code = run_with_progress(supervisor, score_log, sum(c.frame_count for c in clips.values()), progress)
        if code != 0:
            raise PipelineError(f"the pipeline stopped with status {code} (see the stage errors above)")
        records = []
        for line in score_log.read_text().splitlines():
            row = json.loads(line)
            clip = clips[row["clip"]]
            records.append(
                {
                    "video": clip.name,
                    "frame": row["index"],
                    "score": row["smoothed"],
                    "unsmoothed": row["score"],
                    "moving": row["moving"],
                    "label": int(clip.labels[row["index"] - 1]),
                }
            )
        return records, sum(c.frame_count for c in clips.values()) - len(records)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def run_with_progress(supervisor: Supervisor, score_log: Path, total: int, progress: bool) -> int:
    """Run the pipeline to its end, counting scored frames in the score log for a progress bar."""
    supervisor.start()
    code = None
    try:
        with tqdm(total=total, unit="frame", disable=not progress) as bar:
            while code is None:
                time.sleep(POLL_SECONDS)
                code = supervisor.poll()
                if score_log.exists():
                    bar.update(score_log.read_bytes().count(b"\n") - bar.n)
    finally:
        supervisor.stop()
    return code
