"""benchmarks/research/nested_selection.py: leave-one-clip-out selection on small synthetic reports."""

import importlib.util
import json
import sys

import numpy as np
import pytest

from streamer.metrics import auc, eer, roc_curve

from .conftest import REPO

_spec = importlib.util.spec_from_file_location(
    "nested_selection", REPO / "benchmarks" / "research" / "nested_selection.py"
)
nested = importlib.util.module_from_spec(_spec)
sys.modules["nested_selection"] = nested  # dataclasses look their module up there
_spec.loader.exec_module(nested)

NORMAL_LOW = [0.1, 0.2, 0.3, 0.4]
ABNORMAL_OVERLAPPING = [0.35, 0.5, 0.6, 0.7]  # one abnormal frame below a normal one
CLIPS = ["Test001", "Test002", "Test003"]


def report(per_clip: dict[str, tuple[list, list]], threshold: float = 1.0) -> dict:
    """A report.json of clips with 4 normal then 4 abnormal frames each, scores given per clip."""
    frames = []
    for clip in CLIPS:
        normal, abnormal = per_clip[clip]
        for n, (score, label) in enumerate(zip(normal + abnormal, [0] * 4 + [1] * 4), start=1):
            frames.append({"video": clip, "frame": n, "score": score, "label": label})
    return {"method": "ae", "scoring": {"threshold": threshold}, "frames": frames}


# A: a little overlap in every clip. B: perfect on the first two clips, inverted on the third.
STEADY = report({clip: (NORMAL_LOW, ABNORMAL_OVERLAPPING) for clip in CLIPS})
LUCKY = report(
    {
        "Test001": (NORMAL_LOW, [2.0] * 4),
        "Test002": (NORMAL_LOW, [2.0] * 4),
        "Test003": ([2.0] * 4, NORMAL_LOW),
    },
    threshold=2.0,
)


def write(tmp_path, name, content) -> str:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "report.json").write_text(json.dumps(content))
    return str(folder)


def test_each_clip_is_scored_by_the_candidate_best_on_the_other_clips(tmp_path):
    entries = [("steady", write(tmp_path, "steady", STEADY)), ("lucky", write(tmp_path, "lucky", LUCKY))]
    candidates, frames = nested.load_candidates([(n, nested.Path(p), "", "") for n, p in entries])
    result = nested.nested_selection(candidates, frames)
    # Holding out Test001 or Test002, lucky is inverted on half the rest; holding out Test003 it is perfect there.
    assert {clip: name for clip, (name, _) in result.picks.items()} == {
        "Test001": "steady",
        "Test002": "steady",
        "Test003": "lucky",
    }
    assert result.picks["Test003"][1] == 0.0
    on_third = frames.videos == "Test003"
    expected = np.where(on_third, candidates[1].scores, candidates[0].scores)
    np.testing.assert_array_equal(result.scores, expected)
    assert list(candidates[1].scores[on_third]) == [1.0] * 4 + [0.05, 0.1, 0.15, 0.2]  # divided by threshold 2
    fpr, tpr, _ = roc_curve(expected, frames.labels)
    assert result.eer == pytest.approx(eer(fpr, tpr)) and result.auc == pytest.approx(auc(fpr, tpr))
    # Choosing on the whole test set would have kept steady everywhere (pooled EER 25 % against lucky's 33 %);
    # the nested figure pays for the choice that the held-out clip could not check.
    assert nested.pooled(candidates[0].scores, frames.labels)[0] == pytest.approx(0.25)
    assert result.eer > 0.25


def test_at_threshold_counts_scores_reaching_one():
    scores = np.array([0.5, 1.0, 2.0, 0.9, 1.1])
    labels = np.array([1, 1, 1, 0, 0])
    assert nested.at_threshold(scores, labels) == (pytest.approx(2 / 3), pytest.approx(0.5))


def test_reports_of_other_frames_are_refused(tmp_path):
    shorter = dict(STEADY, frames=STEADY["frames"][:-1])
    entries = [("a", write(tmp_path, "a", STEADY), "", ""), ("b", write(tmp_path, "b", shorter), "", "")]
    with pytest.raises(SystemExit, match="same test frames"):
        nested.load_candidates([(n, nested.Path(p), f, m) for n, p, f, m in entries])


def test_cli_reads_a_round_file_and_writes_the_figures(tmp_path, capsys):
    runs = tmp_path / "runs"
    runs.mkdir()
    write(runs, "steady", STEADY)
    write(runs, "lucky", LUCKY)
    round_file = tmp_path / "round1.yaml"
    round_file.write_text(
        "candidates:\n"
        "  - {name: steady, family: baseline, method: ae, config: a.yaml}\n"
        "  - {name: lucky, family: b, method: nre, config: b.yaml}\n"
    )
    out = tmp_path / "nested.json"
    assert nested.main(["--round", str(round_file), "--runs", str(runs), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Test003: lucky (0.00%)" in printed and "nested leave-one-clip-out over 2 candidates" in printed
    figures = json.loads(out.read_text())
    assert figures["picks"]["Test001"]["candidate"] == "steady"
    assert [c["picked_for_clips"] for c in figures["candidates"]] == [2, 1]
    missing = tmp_path / "round2.yaml"
    missing.write_text("candidates:\n  - {name: absent, config: c.yaml}\n")
    with pytest.raises(SystemExit, match="no report for candidate absent"):
        nested.main(["--round", str(missing), "--runs", str(runs)])
