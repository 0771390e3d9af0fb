"""`vad select`: representative frames by k-means on encoder latents, the random baseline, training on a selection."""

import json
import shutil

import numpy as np
import pytest

from streamer import config
from streamer.cli import main
from streamer.model import ModelError
from training.clustering import nearest_members, nearest_to_centroids
from training.config import TrainConfig
from training.select import SelectionError, read_manifest, select


def test_nearest_members_stay_in_their_cluster():
    pts = np.array([[0.0], [0.9], [1.0], [3.0]], np.float32)
    labels = np.array([0, 0, 1, 1])
    centres = np.array([[1.0], [1.8]], np.float32)
    assert nearest_to_centroids(pts, centres).tolist() == [2, 2]  # globally, point 2 is nearest both centres
    assert nearest_members(pts, labels, centres).tolist() == [1, 2]  # within clusters: two different frames


def test_select_writes_frames_and_manifest(tiny_model, synthetic_ped2, tmp_path):
    out = tmp_path / "sel"
    manifest = select([synthetic_ped2 / "Train"], 4, out, model=tiny_model, progress=False)
    assert manifest["frames_considered"] == 60 and sum(manifest["cluster_sizes"]) == 60
    chosen = [(c["clip"], c["frame"]) for c in manifest["chosen"]]
    assert len(set(chosen)) == 4
    assert all((out / c["file"]).is_file() for c in manifest["chosen"])
    assert read_manifest(out / "manifest.json") == chosen
    assert json.loads((out / "manifest.json").read_text())["method"] == "kmeans"


def test_random_selection_needs_no_model(synthetic_ped2, tmp_path):
    one = select([synthetic_ped2 / "Train" / "Train001"], 5, tmp_path / "a", random=True, seed=1)
    again = select([synthetic_ped2 / "Train" / "Train001"], 5, tmp_path / "b", random=True, seed=1)
    assert one["chosen"] == again["chosen"] and one["cluster_sizes"] is None
    assert len({c["frame"] for c in one["chosen"]}) == 5


def test_selection_errors(tiny_model, synthetic_ped2, tmp_path):
    clip = synthetic_ped2 / "Train" / "Train001"
    with pytest.raises(SelectionError, match="cannot choose 21 frames out of 20"):
        select([clip], 21, tmp_path / "x", random=True)
    with pytest.raises(SelectionError, match="needs --model"):
        select([clip], 2, tmp_path / "x")
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(tiny_model, bare / "m.onnx")
    card = json.loads(tiny_model.with_suffix(".json").read_text())
    card["encoder"] = None
    (bare / "m.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="names no encoder graph"):
        select([clip], 2, tmp_path / "x", model=bare / "m.onnx")
    assert main(["select", "--source", str(clip), "--k", "0", "--out", str(tmp_path / "x"), "--random"]) == 2
    assert main(["select", "--source", str(tmp_path / "missing"), "--k", "2", "--out", str(tmp_path / "x")]) == 2


def test_training_on_a_selection_fits_on_the_chosen_frames_only(synthetic_ped2, tiny_config, tmp_path):
    from training.train import train_model

    manifest = select([synthetic_ped2 / "Train" / "Train001"], 6, tmp_path / "sel", random=True)
    out = tmp_path / "m"
    overrides = {
        "data": {"root": str(synthetic_ped2), "frames_file": str(tmp_path / "sel" / "manifest.json")},
        "out": str(out),
    }
    card = train_model(config.load(tiny_config, TrainConfig, overrides), progress=False)
    assert card.training["fitting_frames"] == len(manifest["chosen"]) == 6
    assert card.training["frames"] == 60  # the other frames are still read: motion history, calibration
