"""`vad eval ped2`: frame-level EER and AUC on the UCSD Ped2 test clips.

Headline protocol, causal and pooled: each frame's score is the smoothed score
the live daemon would have had at that frame (training-data calibration, past
frames only), and all 2010 test frames share one ROC. For comparison with the
literature the per-video min-max normalised variant is reported too; it looks
at whole clips, so it is labelled non-causal.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from . import ped2
from .detector import Detector
from .metrics import auc, eer, minmax_per_video, roc_curve
from .model import PatchModel
from .scoring import ScoringSettings
from .sources import FolderSource, SourceError

log = logging.getLogger(__name__)


def score_ped2(
    model: PatchModel, root: str | os.PathLike | None, settings: ScoringSettings | None = None, progress: bool = True
) -> tuple[list[dict], int]:
    """Per-frame records of every test clip, and the number of unreadable frames skipped."""
    clips = ped2.test_clips(root)
    detector = Detector(model, settings)
    records, skipped = [], 0
    with tqdm(total=sum(c.frame_count for c in clips), unit="frame", disable=not progress) as bar:
        for clip in clips:
            detector.reset()  # each clip is its own recording
            source = FolderSource(clip.path)
            for result in detector.run(source):
                records.append(
                    {
                        "video": clip.name,
                        "frame": result.index,
                        "score": result.smoothed,
                        "unsmoothed": result.score,
                        "moving": result.active,
                        "label": int(clip.labels[result.index - 1]),
                    }
                )
                bar.update(1)
            skipped += source.skipped
            bar.update(source.skipped)
    return records, skipped


def summarize(records: list[dict]) -> dict:
    scores = np.array([r["score"] for r in records])
    labels = np.array([r["label"] for r in records])
    if labels.all() or not labels.any():
        found = f"all {len(labels)} scored frames are labelled {'abnormal' if labels.any() else 'normal'}"
        raise SourceError(f"{found if len(labels) else 'no frame was scored'}: EER and AUC need both kinds of frames")
    videos = np.array([r["video"] for r in records])
    fpr, tpr, _ = roc_curve(scores, labels)
    nfpr, ntpr, _ = roc_curve(minmax_per_video(scores, videos), labels)
    return {
        "eer": eer(fpr, tpr),
        "auc": auc(fpr, tpr),
        "eer_normalized": eer(nfpr, ntpr),
        "auc_normalized": auc(nfpr, ntpr),
        "curves": {"pooled": (fpr, tpr), "normalized": (nfpr, ntpr)},
    }


def operating_point(records: list[dict], threshold: float) -> dict:
    """What an operator sees at `threshold`: the share of anomalous frames flagged, overall and per clip, and
    the share of normal frames flagged (false alarms). A frame is flagged at score >= threshold, as live."""
    scores = np.array([r["score"] for r in records])
    labels = np.array([r["label"] for r in records], dtype=bool)
    videos = np.array([r["video"] for r in records])
    flagged = scores >= threshold
    return {
        "threshold": float(threshold),
        "recall": float(flagged[labels].mean()),
        "false_alarm_rate": float(flagged[~labels].mean()),
        "recall_by_clip": {str(v): float(flagged[labels & (videos == v)].mean()) for v in np.unique(videos[labels])},
    }


def draw_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], labels: dict[str, str], path: Path) -> None:
    """A plain ROC plot with OpenCV (no plotting dependency)."""
    size, margin = 560, 60
    img = np.full((size, size, 3), 255, np.uint8)
    span = size - 2 * margin

    def point(x: float, y: float) -> tuple[int, int]:
        return int(round(margin + x * span)), int(round(size - margin - y * span))

    for tick in np.linspace(0, 1, 6):
        cv2.line(img, point(tick, 0), point(tick, 1), (230, 230, 230), 1)
        cv2.line(img, point(0, tick), point(1, tick), (230, 230, 230), 1)
        cv2.putText(
            img,
            f"{tick:.1f}",
            (point(tick, 0)[0] - 12, size - margin + 20),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.4,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
        cv2.putText(
            img,
            f"{tick:.1f}",
            (margin - 35, point(0, tick)[1] + 4),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.4,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
    cv2.rectangle(img, point(0, 1), point(1, 0), (0, 0, 0), 1)
    cv2.line(img, point(0, 1), point(1, 0), (180, 180, 180), 1, cv2.LINE_AA)  # EER line: fpr = 1 - tpr
    colours = [(200, 80, 20), (40, 140, 40), (30, 30, 200)]
    for n, (name, (fpr, tpr)) in enumerate(curves.items()):
        pts = np.array([point(x, y) for x, y in zip(fpr, tpr)], np.int32)
        cv2.polylines(img, [pts], False, colours[n % 3], 2, cv2.LINE_AA)
        cv2.putText(
            img,
            labels[name],
            (margin + 10, margin + 40 + 22 * n),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.45,
            colours[n % 3],
            1,
            cv2.LINE_AA,
        )
    cv2.putText(
        img,
        "false positive rate",
        (size // 2 - 70, size - 15),
        cv2.FONT_HERSHEY_SIMPLEX,
        0.5,
        (0, 0, 0),
        1,
        cv2.LINE_AA,
    )
    cv2.putText(
        img,
        "UCSD Ped2 frame-level ROC",
        (margin, margin - 20),
        cv2.FONT_HERSHEY_SIMPLEX,
        0.55,
        (0, 0, 0),
        1,
        cv2.LINE_AA,
    )
    vertical = np.full((20, 200, 3), 255, np.uint8)
    cv2.putText(vertical, "true positive rate", (20, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    img[size // 2 - 100 : size // 2 + 100, 5:25] = cv2.rotate(vertical, cv2.ROTATE_90_COUNTERCLOCKWISE)
    cv2.imwrite(str(path), img)


def evaluate_ped2(
    model_path: str | os.PathLike,
    data: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    device: str = "auto",
    threads: int = 0,
    settings: ScoringSettings | None = None,
    progress: bool = True,
    pipeline: bool = False,
    scorers: int = 1,
) -> dict:
    """Score the test set, print and return the report; write report.json and roc.png to out_dir.

    With `pipeline`, frames go through the multi-process streaming pipeline (`scorers` scorer processes)
    instead of one in-process Detector; the scores are the same.
    """
    model = PatchModel(model_path, device=device, threads=threads)
    started = time.perf_counter()
    if pipeline:
        from .pipeline.evaluate import score_ped2_pipeline

        records, skipped = score_ped2_pipeline(model_path, data, settings, device, threads, scorers, progress)
    else:
        records, skipped = score_ped2(model, data, settings, progress)
    seconds = time.perf_counter() - started
    summary = summarize(records)
    scoring = settings or model.card.scoring
    report = {
        "model": str(model_path),
        "method": model.card.method,
        "provider": model.provider,
        "protocol": "causal pooled: smoothed scores as the live daemon computes them, one ROC over all test frames",
        "scored_by": f"multi-process pipeline, {scorers} scorer process(es)" if pipeline else "in-process detector",
        "eer": summary["eer"],
        "auc": summary["auc"],
        "eer_normalized": summary["eer_normalized"],
        "auc_normalized": summary["auc_normalized"],
        "normalized_protocol": "non-causal: scores min-max normalised within each test clip",
        "scoring": scoring.to_dict(),
        "at_threshold": operating_point(records, scoring.threshold),
        "frames_scored": len(records),
        "frames_skipped": skipped,
        # label-free: how much of the test set is busier than the training clips (None: the card does not say)
        "frames_busier_than_training": None
        if model.card.training_moving_max is None
        else sum(model.card.busier_than_training(r["moving"]) for r in records),
        "training_moving_max": model.card.training_moving_max,
        "seconds": seconds,
        "frames_per_second": len(records) / seconds if seconds else None,
        "frames": records,
    }
    if out_dir:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
        draw_roc(
            summary["curves"],
            {
                "pooled": f"causal pooled: EER {report['eer']:.1%}, AUC {report['auc']:.3f}",
                "normalized": f"per-video min-max (non-causal): EER {report['eer_normalized']:.1%}, "
                f"AUC {report['auc_normalized']:.3f}",
            },
            out / "roc.png",
        )
    return report
