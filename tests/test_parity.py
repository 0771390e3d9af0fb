"""`vad eval ped2 --pipeline`: the multi-process pipeline scores exactly like the offline evaluation."""

import json

import numpy as np
import pytest

from streamer.cli import main
from streamer.evaluation import evaluate_ped2


@pytest.mark.parametrize("model", ["tiny_model", "banded_model"])
def test_eval_through_the_pipeline_matches_offline(model, synthetic_ped2, tmp_path, capsys, request):
    tiny_model = request.getfixturevalue(model)
    offline = evaluate_ped2(tiny_model, synthetic_ped2, progress=False)
    args = ["eval", "ped2", "--pipeline", "--scorers", "2", "--data", str(synthetic_ped2), "--model", str(tiny_model)]
    assert main([*args, "--out", str(tmp_path), "--quiet"]) == 0
    assert "multi-process pipeline, 2 scorer process(es)" in capsys.readouterr().out
    piped = json.loads((tmp_path / "report.json").read_text())
    position = [(f["video"], f["frame"], f["label"]) for f in offline["frames"]]
    assert [(f["video"], f["frame"], f["label"]) for f in piped["frames"]] == position
    for key in ("score", "unsmoothed"):
        np.testing.assert_allclose([f[key] for f in piped["frames"]], [f[key] for f in offline["frames"]], atol=1e-6)
    assert piped["eer"] == offline["eer"] and piped["auc"] == offline["auc"]
    assert piped["frames_skipped"] == 0
    assert [f["moving"] for f in piped["frames"]] == [f["moving"] for f in offline["frames"]]
    assert piped["frames_busier_than_training"] == offline["frames_busier_than_training"]


def test_eval_counts_the_frames_busier_than_any_training_frame(banded_model, tiny_model, synthetic_ped2):
    report = evaluate_ped2(banded_model, synthetic_ped2, progress=False)
    moving = np.array([f["moving"] for f in report["frames"]])
    assert report["training_moving_max"] == 10
    assert report["frames_busier_than_training"] == (moving > 10).sum()
    assert 0 < report["frames_busier_than_training"] < len(moving)  # the synthetic clips straddle the card's 10
    plain = evaluate_ped2(tiny_model, synthetic_ped2, progress=False)  # no gate: every patch counts, as in training
    assert plain["training_moving_max"] == 15 and plain["frames_busier_than_training"] == 0


def test_eval_through_the_pipeline_resets_at_each_clip(tiny_model, synthetic_ped2, tmp_path):
    """Clip 2 alone scores the same as clip 2 after clip 1: nothing carries over between recordings."""
    import shutil

    root = tmp_path / "UCSDped2"
    shutil.copytree(synthetic_ped2, root)
    shutil.rmtree(root / "Test" / "Test001")
    (root / "Test" / "UCSDped2.m").write_text("TestVideoFile{end+1}.gt_frame = [11:20];\n")
    alone = evaluate_ped2(tiny_model, root, progress=False, pipeline=True)["frames"]
    both = evaluate_ped2(tiny_model, synthetic_ped2, progress=False, pipeline=True)["frames"]
    np.testing.assert_allclose([f["score"] for f in alone], [f["score"] for f in both[20:]], atol=1e-6)
