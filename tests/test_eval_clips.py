"""`vad eval clips`: any footage with a labels CSV, scored and summarised as `vad eval ped2` does."""

import json

import pytest

from streamer import ped2
from streamer.cli import main
from streamer.evaluation import evaluate_clips, evaluate_ped2, read_labels
from streamer.sources import SourceError


def write_labels(path, rows, header="clip,frame,label"):
    path.write_text(header + "\n" + "".join(f"{c},{f},{label}\n" for c, f, label in rows))
    return path


def ped2_labels(root, path):
    """The synthetic Ped2 test clips' ground truth as a labels CSV."""
    rows = [(c.name, n, int(label)) for c in ped2.test_clips(root) for n, label in enumerate(c.labels, start=1)]
    return write_labels(path, rows)


def test_labels_csv_is_read_strictly(tmp_path):
    good = write_labels(tmp_path / "a.csv", [("gate", 2, 1), ("gate", 1, 0), ("yard", 1, 0), ("gate", 3, 0)])
    labels = read_labels(good)
    assert labels["gate"].tolist() == [0, 1, 0] and labels["yard"].tolist() == [0]
    problems = {
        "the header clip,frame,label": write_labels(tmp_path / "b.csv", [("gate", 1, 0)], header="video,frame,y"),
        "label 0 or 1": write_labels(tmp_path / "c.csv", [("gate", 1, 2)]),
        "whole numbers": write_labels(tmp_path / "d.csv", [("gate", "one", 0)]),
        "labelled twice, differently": write_labels(tmp_path / "e.csv", [("gate", 1, 0), ("gate", 1, 1)]),
        r"no label for frames \[2\]": write_labels(tmp_path / "f.csv", [("gate", 1, 0), ("gate", 3, 1)]),
        "holds no labels": write_labels(tmp_path / "g.csv", []),
        "cannot read labels": tmp_path / "missing.csv",
    }
    for message, path in problems.items():
        with pytest.raises(SourceError, match=message):
            read_labels(path)


def test_eval_clips_scores_footage_as_eval_ped2_scores_the_same_frames(tiny_model, synthetic_ped2, tmp_path):
    labels = ped2_labels(synthetic_ped2, tmp_path / "labels.csv")
    report = evaluate_clips(tiny_model, [synthetic_ped2 / "Test"], labels, tmp_path / "out", progress=False)
    reference = evaluate_ped2(tiny_model, synthetic_ped2, progress=False)
    for key in ("eer", "auc", "eer_normalized", "auc_normalized", "frames_scored", "frames"):
        assert report[key] == reference[key]
    assert report["clips"] == ["Test001", "Test002"] and report["labels"] == str(labels)
    written = json.loads((tmp_path / "out" / "report.json").read_text())
    assert written["eer"] == report["eer"] and (tmp_path / "out" / "roc.png").stat().st_size > 0


def test_eval_clips_cli_and_labels_that_do_not_fit_the_footage(tiny_model, synthetic_ped2, tmp_path, capsys):
    labels = ped2_labels(synthetic_ped2, tmp_path / "labels.csv")
    test, one = str(synthetic_ped2 / "Test"), str(synthetic_ped2 / "Test" / "Test001")
    for source in (test, one):  # a labels file may cover more clips than are scored
        args = ["eval", "clips", "--source", source, "--labels", str(labels), "--model", str(tiny_model), "--quiet"]
        assert main(args) == 0
        assert "causal pooled (headline):" in capsys.readouterr().out
    rows = [("Test001", n, int(n > 10)) for n in range(1, 21)]
    cases = {
        "has no labels for the clips": [("Test001", n, 0) for n in range(1, 21)],
        "past the 15 labelled": rows[:15],
        "but .* labels 25": rows + [("Test001", n, 0) for n in range(21, 26)],
        "EER and AUC need both kinds of frames": [(c, n, 0) for c, n, _ in rows],
    }
    sources = {"has no labels for the clips": test}
    for message, case in cases.items():
        path = write_labels(tmp_path / "case.csv", case)
        with pytest.raises(SourceError, match=message):
            evaluate_clips(tiny_model, [sources.get(message, one)], path, progress=False)
