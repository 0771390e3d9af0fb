"""`vad eval ped2` and `vad eval clips`: frame-level EER and AUC on labelled footage.

Headline protocol, causal and pooled: each frame's score is the smoothed score
the live daemon would have had at that frame (training-data calibration, past
frames only), and all frames share one ROC. For comparison with the
literature the per-video min-max normalised variant is reported too; it looks
at whole clips, so it is labelled non-causal.

`vad eval ped2` reads the UCSD Ped2 test clips and their ground truth;
`vad eval clips` any footage (streamer/footage.py) with a labels CSV: a header
`clip,frame,label`, then one row per frame, the clip's name (a video's file
stem or a frame folder's name), the frame's 1-based number in it, and 1 for
anomalous or 0 for normal. Every frame of every clip scored needs a label.
"""

from __future__ import annotations

import csv
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
from .footage import open_footage
from .metrics import auc, eer, minmax_per_video, roc_curve
from .model import PatchModel
from .scoring import ScoringSettings
from .sources import FolderSource, SourceError

log = logging.getLogger(__name__)


def score_ped2(
    model: PatchModel, root: str | os.PathLike | None, settings: ScoringSettings | None = None, progress: bool = True
) -> tuple[list[dict], int]:
    """Per-frame records of every test clip, and the number of unreadable frames skipped."""
    clips = [(c.name, FolderSource(c.path), c.labels) for c in ped2.test_clips(root)]
    return score_clips(model, clips, settings, progress)


def score_clips(
    model: PatchModel, clips: list[tuple], settings: ScoringSettings | None = None, progress: bool = True
) -> tuple[list[dict], int]:
    """Per-frame records of (name, frame source, labels by 0-based frame) clips, and the unreadable frames skipped."""
    detector = Detector(model, settings)
    records, skipped = [], 0
    with tqdm(total=sum(len(labels) for *_, labels in clips), unit="frame", disable=not progress) as bar:
        for name, source, labels in clips:
            detector.reset()  # each clip is its own recording
            for result in detector.run(source):
                if result.index > len(labels):
                    raise SourceError(f"{name} has a frame {result.index}, past the {len(labels)} labelled")
                records.append(
                    {
                        "video": name,
                        "frame": result.index,
                        "score": result.smoothed,
                        "unsmoothed": result.score,
                        "moving": result.active,
                        "label": int(labels[result.index - 1]),
                    }
                )
                bar.update(1)
            skipped += source.skipped
            bar.update(source.skipped)
    return records, skipped


def read_labels(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Per clip, 0/1 labels of its frames 1..N from a labels CSV (module docstring); SourceError if malformed."""
    path = Path(path)
    try:
        with path.open(newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as e:
        raise SourceError(f"cannot read labels {path}: {e}") from None
    if not rows or [cell.strip() for cell in rows[0]] != ["clip", "frame", "label"]:
        raise SourceError(f"{path}: the first line must be the header clip,frame,label")
    frames: dict[str, dict[int, int]] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        try:
            clip, frame, label = (cell.strip() for cell in row)
            frame, label = int(frame), int(label)
        except ValueError:
            raise SourceError(f"{path} line {line}: expected clip,frame,label with whole numbers, got {row}") from None
        if frame < 1 or label not in (0, 1) or not clip:
            raise SourceError(f"{path} line {line}: need a clip name, a frame >= 1 and a label 0 or 1, got {row}")
        if frames.setdefault(clip, {}).setdefault(frame, label) != label:
            raise SourceError(f"{path} line {line}: {clip} frame {frame} is labelled twice, differently")
    labels = {}
    for clip, by_frame in frames.items():
        gaps = sorted(set(range(1, max(by_frame) + 1)) - set(by_frame))
        if gaps:
            raise SourceError(f"{path}: {clip} has no label for frames {gaps[:5]}{' ...' if len(gaps) > 5 else ''}")
        labels[clip] = np.array([by_frame[n] for n in range(1, len(by_frame) + 1)], np.uint8)
    if not labels:
        raise SourceError(f"{path} holds no labels")
    return labels


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


def draw_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], labels: dict[str, str], path: Path, title: str) -> None:
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
        title,
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
    scored_by = f"multi-process pipeline, {scorers} scorer process(es)" if pipeline else "in-process detector"
    report = build_report(model, model_path, records, skipped, time.perf_counter() - started, settings, scored_by)
    if out_dir:
        write_report(report, out_dir, "UCSD Ped2 frame-level ROC")
    return report


def evaluate_clips(
    model_path: str | os.PathLike,
    sources: list[str | os.PathLike],
    labels_path: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    device: str = "auto",
    threads: int = 0,
    settings: ScoringSettings | None = None,
    progress: bool = True,
) -> dict:
    """`evaluate_ped2` on any labelled footage: every clip of `sources`, labelled by the CSV at `labels_path`."""
    model = PatchModel(model_path, device=device, threads=threads)
    labels = read_labels(labels_path)
    clips = open_footage(sources)
    unlabelled = [clip.name for clip in clips if clip.name not in labels]
    if unlabelled:
        raise SourceError(f"{labels_path} has no labels for the clips {unlabelled} (labelled: {sorted(labels)})")
    started = time.perf_counter()
    records, skipped = score_clips(model, [(c.name, c.source, labels[c.name]) for c in clips], settings, progress)
    for clip in clips:
        last = max((r["frame"] for r in records if r["video"] == clip.name), default=0)
        if last + clip.source.skipped < len(labels[clip.name]):
            raise SourceError(f"{clip.name} ends at frame {last}, but {labels_path} labels {len(labels[clip.name])}")
    report = build_report(
        model, model_path, records, skipped, time.perf_counter() - started, settings, "in-process detector"
    )
    report["labels"] = str(labels_path)
    report["clips"] = [clip.name for clip in clips]
    if out_dir:
        write_report(report, out_dir, "frame-level ROC")
    return report


def build_report(model, model_path, records, skipped, seconds, settings, scored_by) -> dict:
    """The report both evaluations print and write: EER and AUC of both protocols, every frame's record."""
    summary = summarize(records)
    scoring = settings or model.card.scoring
    return {
        "model": str(model_path),
        "method": model.card.method,
        "provider": model.provider,
        "protocol": "causal pooled: smoothed scores as the live daemon computes them, one ROC over all test frames",
        "scored_by": scored_by,
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


def write_report(report: dict, out_dir: str | os.PathLike, title: str) -> None:
    """report.json and roc.png in out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    draw_roc(
        summarize(report["frames"])["curves"],
        {
            "pooled": f"causal pooled: EER {report['eer']:.1%}, AUC {report['auc']:.3f}",
            "normalized": f"per-video min-max (non-causal): EER {report['eer_normalized']:.1%}, "
            f"AUC {report['auc_normalized']:.3f}",
        },
        out / "roc.png",
        title,
    )
