"""Nested leave-one-clip-out selection over candidates' Ped2 test reports: an honest figure for a chosen model.

    python benchmarks/research/nested_selection.py --round benchmarks/research/rounds/round1.yaml --runs runs/rounds
    python benchmarks/research/nested_selection.py runs/rounds/nre_base runs/rounds/nre_gray ...

Choosing among candidates by their test-set EER and then reporting that EER
overstates what the chosen model will do on new video. Here each of the 12
test clips is held out in turn: the candidate with the lowest pooled EER on
the other 11 clips is picked, and its scores on the held-out clip are used.
The 12 held-out clips, each scored by a candidate chosen without its labels,
are pooled into one ROC: the nested EER and AUC estimate what "pick the best
candidate on the test set" is worth on clips the choice did not see.

Each candidate's report is `vad eval ped2 --out DIR`'s report.json (causal
smoothed frame scores, calibration and threshold from training data only).
Scores of different candidates are put on one scale before pooling: each is
divided by its own card's threshold (fitted on training frames), so 1 is the
alarm level of whichever candidate scored the clip, and recall and false
alarms at the threshold are read at 1.

Ties on the inner EER go to the candidate listed first.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from streamer.metrics import auc, eer, roc_curve


@dataclass
class Candidate:
    name: str
    scores: np.ndarray  # (frames,) smoothed frame scores over the threshold, in the report's frame order
    family: str = ""
    method: str = ""


@dataclass
class Frames:
    videos: np.ndarray  # (frames,) clip name of each frame
    labels: np.ndarray  # (frames,) 1 = abnormal


def load_report(path: Path) -> tuple[dict, Path]:
    path = path / "report.json" if path.is_dir() else path
    try:
        return json.loads(path.read_text()), path
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"cannot read the report {path}: {e}") from None


def candidate_from_report(name: str, report: dict, where: Path) -> tuple[Candidate, Frames, list]:
    """A candidate's threshold-scaled scores, the frames' clips and labels, and the frame keys to align on."""
    threshold = report["scoring"]["threshold"]
    if not threshold > 0:
        raise SystemExit(f"{where}: the card's threshold {threshold} is not positive; cannot scale scores by it")
    frames = report["frames"]
    keys = [(f["video"], f["frame"]) for f in frames]
    scores = np.array([f["score"] for f in frames], dtype=np.float64) / threshold
    labels = np.array([f["label"] for f in frames], dtype=np.int8)
    return Candidate(name, scores), Frames(np.array([f["video"] for f in frames]), labels), keys


def pooled(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    fpr, tpr, _ = roc_curve(scores, labels)
    return eer(fpr, tpr), auc(fpr, tpr)


def at_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Recall on abnormal frames and false-alarm rate on normal ones at the alarm level 1 (scores >= 1 alarm)."""
    alarm = scores >= 1.0
    abnormal = labels == 1
    return float(alarm[abnormal].mean()), float(alarm[~abnormal].mean())


@dataclass
class NestedResult:
    scores: np.ndarray  # (frames,) each clip's scores from the candidate picked without it
    picks: dict  # clip -> (candidate name, its pooled EER on the other clips)
    eer: float
    auc: float


def nested_selection(candidates: list[Candidate], frames: Frames) -> NestedResult:
    """For each clip, the candidate with the lowest pooled EER on the other clips scores it; pooled over clips."""
    if not candidates:
        raise ValueError("no candidates")
    nested = np.empty(len(frames.labels), dtype=np.float64)
    picks = {}
    for clip in dict.fromkeys(frames.videos):  # clips in report order
        held_out = frames.videos == clip
        inner = [pooled(c.scores[~held_out], frames.labels[~held_out])[0] for c in candidates]
        best = int(np.argmin(inner))  # first of equals
        nested[held_out] = candidates[best].scores[held_out]
        picks[clip] = (candidates[best].name, inner[best])
    nested_eer, nested_auc = pooled(nested, frames.labels)
    return NestedResult(nested, picks, nested_eer, nested_auc)


def load_candidates(paths: list[tuple[str, Path, str, str]]) -> tuple[list[Candidate], Frames]:
    """(name, report path, family, method) -> candidates aligned on the same frames, which must all agree."""
    candidates, reference, reference_keys = [], None, None
    for name, path, family, method in paths:
        report, where = load_report(path)
        candidate, frames, keys = candidate_from_report(name, report, where)
        candidate.family, candidate.method = family, method or report.get("method", "")
        if reference is None:
            reference, reference_keys = frames, keys
        elif keys != reference_keys or not np.array_equal(frames.labels, reference.labels):
            raise SystemExit(f"{where} does not cover the same test frames, in the same order, as the first report")
        candidates.append(candidate)
    if len(set(c.name for c in candidates)) != len(candidates):
        raise SystemExit("two candidates share a name")
    return candidates, reference


def round_entries(round_files: list[Path], runs: Path) -> list[tuple[str, Path, str, str]]:
    """Every candidate of the round files, its report at RUNS/NAME/report.json."""
    entries = []
    for round_file in round_files:
        listed = yaml.safe_load(round_file.read_text())
        for c in listed["candidates"]:
            report = runs / c["name"] / "report.json"
            if not report.is_file():
                raise SystemExit(f"{round_file}: no report for candidate {c['name']} at {report} (train and score it)")
            entries.append((c["name"], report, c.get("family", ""), c.get("method", "")))
    return entries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="*", type=Path, help="report.json files or the folders holding them")
    parser.add_argument("--round", type=Path, nargs="+", default=[], help="round files listing candidates")
    parser.add_argument("--runs", type=Path, default=Path("runs/rounds"), help="with --round: RUNS/NAME/report.json")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    entries = round_entries(args.round, args.runs)
    entries += [(p.parent.name if p.suffix == ".json" else p.name, p, "", "") for p in args.reports]
    if not entries:
        parser.error("give report paths or --round files")
    candidates, frames = load_candidates(entries)
    result = nested_selection(candidates, frames)
    recall, false_alarms = at_threshold(result.scores, frames.labels)

    rows = []
    for c in candidates:
        e, a = pooled(c.scores, frames.labels)
        r, f = at_threshold(c.scores, frames.labels)
        picked = sum(name == c.name for name, _ in result.picks.values())
        rows.append({"name": c.name, "family": c.family, "method": c.method, "eer": e, "auc": a})
        rows[-1].update(recall=r, false_alarms=f, picked_for_clips=picked)
    width = max(len(c.name) for c in candidates)
    print(f"{'candidate':{width}}  {'family':12} {'method':12} pooled EER   AUC    recall  false alarms  picked")
    for row in rows:
        print(
            f"{row['name']:{width}}  {row['family']:12} {row['method']:12} {row['eer']:9.2%}  {row['auc']:.4f}  "
            f"{row['recall']:6.1%}  {row['false_alarms']:11.2%}  {row['picked_for_clips']:5d}"
        )
    print("\nheld-out clip: candidate picked on the other clips (its pooled EER there)")
    for clip, (name, inner) in result.picks.items():
        print(f"  {clip}: {name} ({inner:.2%})")
    print(
        f"\nnested leave-one-clip-out over {len(candidates)} candidates: EER {result.eer:.2%}, AUC {result.auc:.4f}, "
        f"recall {recall:.1%} with false alarms on {false_alarms:.2%} of normal frames at each pick's threshold"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "nested": {"eer": result.eer, "auc": result.auc, "recall": recall, "false_alarms": false_alarms},
                    "picks": {clip: {"candidate": n, "inner_eer": e} for clip, (n, e) in result.picks.items()},
                    "candidates": rows,
                },
                indent=1,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
