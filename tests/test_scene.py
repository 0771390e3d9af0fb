"""The generated scene (training/scene.py): clips, labels, and what they show."""

import csv
import json

import cv2
import numpy as np
import pytest

from streamer.cli import main
from streamer.footage import open_footage
from streamer.patches import PatchSpec, flow_speed
from training.scene import KINDS, Scene, SceneSpec, anomaly_schedule, generate

SMALL = SceneSpec(height=90, width=120)


def test_the_scene_writes_footage_and_a_label_for_every_test_frame(tmp_path):
    description = generate(
        tmp_path, seed=3, train_minutes=0.05, calibrate_minutes=0.05, test_seconds=6, spec=SMALL, progress=False
    )
    clips = {c.name: c for c in open_footage([tmp_path / "test"])}
    assert sorted(clips) == sorted(KINDS)
    with (tmp_path / "labels.csv").open() as f:
        rows = list(csv.DictReader(f))
    for kind in KINDS:
        labels = [int(r["label"]) for r in rows if r["clip"] == kind]
        assert len(labels) == sum(1 for _ in clips[kind].frames()) == 60
        assert 0 < sum(labels) < 60 and labels[0] == 0  # every clip starts normal, then shows its anomalies
        runs = description["anomalous_frames"][kind]
        assert [n + 1 for n, label in enumerate(labels) if label] == [n for a, b in runs for n in range(a, b + 1)]
        assert sum(labels) == description["anomalous_frame_counts"][kind]
    assert len(description["anomalous_frames"]["left_object"]) == 2  # the first bag is picked up again
    assert sum(1 for _ in open_footage([tmp_path / "train"])[0].frames()) == 30
    assert json.loads((tmp_path / "scene.json").read_text())["seed"] == 3
    frame = next(iter(open_footage([tmp_path / "calibrate"])[0].frames())).image
    assert frame.shape == (90, 120)
    preview = cv2.imread(str(tmp_path / "preview.png"), cv2.IMREAD_GRAYSCALE)
    assert preview.shape == (2 * (90 + 20), 3 * (120 + 4))  # six captioned frames, three a row


def test_the_same_seed_draws_the_same_frames():
    one, two = Scene(SMALL, 5), Scene(SMALL, 5)
    for _ in range(40):
        one.step(), two.step()
    assert np.array_equal(one.render(), two.render())
    assert not np.array_equal(one.render(), Scene(SMALL, 6).render())


def test_the_runner_moves_faster_than_anyone_else():
    """Optical flow (as the patches measure it) is higher on the fast mover than on the walkers around it."""
    spec = PatchSpec(motion="flow")
    scene = Scene(SceneSpec(walkers=0.0), seed=1)  # no walkers arriving: the runner alone, then one walker
    runner = anomaly_schedule(scene, "fast", 300)
    scene.add(next(iter(runner.values())))
    peaks = {}
    for kind in ("runner", "walker"):
        previous = scene.render()
        speeds = []
        for _ in range(15):
            scene.step()
            current = scene.render()
            speeds.append(np.percentile(flow_speed(previous, current, spec), 99.9))
            previous = current
        peaks[kind] = np.median(speeds)
        scene.movers = [scene.walker(-1)]
    assert peaks["runner"] > 2 * peaks["walker"]


def test_scene_cli(tmp_path, capsys):
    assert main(["scene", "--out", str(tmp_path), "--train-minutes", "0.05", "--size", "90x120", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "test/fast.mp4: anomalous frames" in printed and (tmp_path / "labels.csv").is_file()
    with pytest.raises(SystemExit):  # argparse: the scene needs at least 60x60
        main(["scene", "--out", str(tmp_path), "--size", "20x20"])
