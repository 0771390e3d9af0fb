import json

import cv2
import pytest

from streamer.cli import main
from streamer.evaluation import evaluate_ped2, operating_point
from streamer.model import BUNDLED_MODEL, ModelCard, card_path_for

from .conftest import needs_ped2, ped2_root

README_DEFAULT_EER = 0.1171  # README, "Results on UCSD Ped2", the default (DEC) row: change both together


def test_eval_cli_writes_report_and_roc(tiny_model, synthetic_ped2, tmp_path, capsys):
    out = tmp_path / "eval"
    assert (
        main(["eval", "ped2", "--data", str(synthetic_ped2), "--model", str(tiny_model), "--out", str(out), "--quiet"])
        == 0
    )
    printed = capsys.readouterr().out
    assert "causal pooled (headline)" in printed and "non-causal" in printed
    report = json.loads((out / "report.json").read_text())
    for key in ("eer", "auc", "eer_normalized", "auc_normalized"):
        assert 0.0 <= report[key] <= 1.0
    frames = report["frames"]
    assert len(frames) == 40 and frames[0] == {**frames[0], "video": "Test001", "frame": 1, "label": 0}
    assert [f["label"] for f in frames[:20]] == [0] * 10 + [1] * 10
    assert set(report["at_threshold"]["recall_by_clip"]) == {"Test001", "Test002"}
    assert "recall by clip:  Test001" in printed
    roc = cv2.imread(str(out / "roc.png"))
    assert roc is not None and roc.shape[0] > 100
    # A model trained on slow movers must notice the fast one in this easy synthetic case.
    assert report["auc"] > 0.8, report["auc"]
    point = report["at_threshold"]
    assert point["threshold"] == ModelCard.load(card_path_for(tiny_model)).scoring.threshold
    assert point == operating_point(frames, point["threshold"]) and f"at threshold {point['threshold']:.4g}" in printed


def test_operating_point_by_hand():
    frames = [
        {"video": "a", "score": s, "label": y}
        for s, y in [(0.1, 0), (2.0, 0), (1.0, 0), (3.0, 1), (0.5, 1)]  # normal frames: one of three at 2 or more
    ] + [{"video": "b", "score": 2.0, "label": 1}]
    point = operating_point(frames, 2.0)  # a score equal to the threshold is flagged, as the alerter does
    assert point["recall"] == pytest.approx(2 / 3) and point["false_alarm_rate"] == pytest.approx(1 / 3)
    assert point["recall_by_clip"] == {"a": 0.5, "b": 1.0}


def test_eval_skips_and_reports_a_corrupt_test_frame(tiny_model, synthetic_ped2, tmp_path):
    import shutil

    root = tmp_path / "UCSDped2"
    shutil.copytree(synthetic_ped2, root)
    (root / "Test" / "Test001" / "005.png").write_bytes(b"corrupt")
    report = evaluate_ped2(tiny_model, root, progress=False)
    assert report["frames_skipped"] == 1 and report["frames_scored"] == 39
    assert [f["frame"] for f in report["frames"][:5]] == [1, 2, 3, 4, 6]


def test_eval_cli_errors_are_clear(tiny_model, tmp_path, capsys):
    assert main(["eval", "ped2", "--data", str(tmp_path), "--model", str(tiny_model), "--quiet"]) == 2
    assert "UCSD Ped2 not found" in capsys.readouterr().err
    assert main(["eval", "ped2", "--model", str(tmp_path / "x.onnx"), "--quiet"]) == 2
    assert "model not found" in capsys.readouterr().err


def test_train_cli_rejects_bad_config(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("autoencoder: {epochs: -}\nfoo: 1\n")
    assert main(["train", "ae", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "foo: unknown setting" in err and "autoencoder.epochs" in err


def test_train_nre_cli(synthetic_ped2, tiny_config, tmp_path, capsys):
    out = tmp_path / "nre"
    assert (
        main(
            ["train", "nre", "--config", str(tiny_config), "--data", str(synthetic_ped2), "--out", str(out), "--quiet"]
        )
        == 0
    )
    card = ModelCard.load(card_path_for(out.with_suffix(".onnx")))
    assert card.method == "nre" and card.training["nre"]["clusters"] == 3
    assert "validation" in card.training and 0 <= card.training["validation"]["auc"] <= 1


def test_frame_step_trains_on_every_kth_frame(synthetic_ped2, tiny_config, tmp_path):
    from streamer import config
    from training.config import TrainConfig
    from training.train import train_model

    def patches(step: int) -> int:
        overrides = {"data": {"root": str(synthetic_ped2), "frame_step": step}, "out": str(tmp_path / f"s{step}")}
        overrides["autoencoder"] = {"epochs": 1}
        card = train_model(config.load(tiny_config, TrainConfig, overrides), progress=False)
        assert card.training["frames"] == 60  # calibration still uses every frame
        return card.training["training_patches"]

    assert 0.35 < patches(2) / patches(1) < 0.65


@needs_ped2
@pytest.mark.slow
def test_bundled_model_reproduces_the_readme_figure(tmp_path):
    """The default model's causal pooled EER on all 2010 test frames, as the README's table states it."""
    report = evaluate_ped2(BUNDLED_MODEL, ped2_root(), tmp_path, progress=False)
    assert report["frames_scored"] == 2010
    assert report["eer"] == pytest.approx(README_DEFAULT_EER, abs=5e-4)


def copy_ped2(synthetic_ped2, tmp_path):
    import shutil

    root = tmp_path / "UCSDped2"
    shutil.copytree(synthetic_ped2, root)
    return root


def test_a_clip_whose_first_frame_has_another_size_is_scored_whole(tiny_model, synthetic_ped2, tmp_path):
    root = copy_ped2(synthetic_ped2, tmp_path)
    first = root / "Test" / "Test001" / "001.png"
    cv2.imwrite(str(first), cv2.resize(cv2.imread(str(first), cv2.IMREAD_GRAYSCALE), (45, 30)))
    report = evaluate_ped2(tiny_model, root, progress=False)
    # Every frame is resized to the card's working size, as the daemon does: none is dropped for its size.
    assert report["frames_skipped"] == 0 and report["frames_scored"] == 40


def test_eval_with_skipped_frames_says_so_and_fails_unless_allowed(tiny_model, synthetic_ped2, tmp_path, capsys):
    root = copy_ped2(synthetic_ped2, tmp_path)
    (root / "Test" / "Test002" / "003.png").write_bytes(b"corrupt")
    args = ["eval", "ped2", "--data", str(root), "--model", str(tiny_model), "--quiet"]
    assert main(args) == 1
    captured = capsys.readouterr()
    assert "causal pooled (headline)" in captured.out
    assert "vad: error: 1 of 40 test frames were not scored" in captured.err and "--allow-skipped" in captured.err
    assert main([*args, "--allow-skipped"]) == 0
    assert "1 skipped" in capsys.readouterr().out


@pytest.mark.parametrize(
    "ground_truth, problem",
    [
        ("[11:20];\nTestVideoFile{end+1}.gt_frame = [11:25]", "Test002: range 11:25 runs past the clip's 20 frames"),
        ("[11:2x];\nTestVideoFile{end+1}.gt_frame = [11:20]", "cannot parse MATLAB range '11:2x'"),
        ("[];\nTestVideoFile{end+1}.gt_frame = []", "all 40 scored frames are labelled normal: EER and AUC need both"),
        ("[1:20];\nTestVideoFile{end+1}.gt_frame = [1:20]", "all 40 scored frames are labelled abnormal"),
    ],
)
def test_eval_data_problems_are_errors_not_tracebacks(
    tiny_model, synthetic_ped2, tmp_path, capsys, ground_truth, problem
):
    root = copy_ped2(synthetic_ped2, tmp_path)
    (root / "Test" / "UCSDped2.m").write_text(f"TestVideoFile{{end+1}}.gt_frame = {ground_truth};\n")
    assert main(["eval", "ped2", "--data", str(root), "--model", str(tiny_model), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vad: error: ") and problem in err and "Traceback" not in err


def test_eval_argument_and_card_problems_are_errors_not_tracebacks(tiny_model, synthetic_ped2, tmp_path, capsys):
    import shutil

    args = ["eval", "ped2", "--data", str(synthetic_ped2), "--quiet"]
    for bad in (["--window", "0"], ["--pipeline", "--scorers", "0"], ["--threads", "-1"]):
        with pytest.raises(SystemExit) as exit:
            main([*args, "--model", str(tiny_model), *bad])
        assert exit.value.code == 2 and f"argument {bad[-2]}: must be >= " in capsys.readouterr().err
    model = tmp_path / "m.onnx"
    shutil.copy(tiny_model, model)
    card = json.loads(card_path_for(tiny_model).read_text())
    card["gate"] = {"motion_threshold": "high"}
    card_path_for(model).write_text(json.dumps(card))
    assert main([*args, "--model", str(model)]) == 2
    assert (
        "vad: error: invalid model card: gate must be null or have a finite motion_threshold" in capsys.readouterr().err
    )


def test_an_interrupted_pipeline_eval_leaves_no_temporary_folder(tiny_model, synthetic_ped2, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    from .pipeline_helpers import wait_for

    env = {**os.environ, "TMPDIR": str(tmp_path)}
    command = [sys.executable, "-m", "streamer.cli", "eval", "ped2", "--data", str(synthetic_ped2), "--quiet"]
    process = subprocess.Popen([*command, "--model", str(tiny_model), "--pipeline"], env=env)
    try:
        wait_for(lambda: list(tmp_path.glob("vad-eval-*")), 30, "the evaluation's run folder")
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 130
    finally:
        process.kill()
    assert list(tmp_path.glob("vad-eval-*")) == []
