import json
import shutil

import numpy as np
import pytest

from streamer.model import ModelCard, ModelError, PatchModel, card_path_for, session_scores


def copy_model(src, dst_dir):
    dst = dst_dir / "m.onnx"
    shutil.copy(src, dst)
    shutil.copy(card_path_for(src), card_path_for(dst))
    return dst


def test_loads_and_scores(tiny_model):
    model = PatchModel(tiny_model, device="cpu")
    assert model.provider == "CPUExecutionProvider"
    spec = model.card.patch
    patches = np.random.default_rng(0).integers(0, 256, (10, spec.channels, 30, 30), dtype=np.uint8)
    scores = model.raw_scores(patches)
    assert scores.shape == (10,) and np.all(np.isfinite(scores)) and np.all(scores >= 0)
    model.batch_size = 3  # batching does not change results
    assert np.allclose(model.raw_scores(patches), scores, atol=1e-7)


def test_reused_input_buffer_gives_the_plain_scores(tiny_model):
    """Batches converted into one reused buffer score exactly as freshly converted ones, before and after warm_up."""
    model = PatchModel(tiny_model, device="cpu", batch_size=8)
    spec = model.card.patch
    rng = np.random.default_rng(1)
    batches = [rng.integers(0, 256, (n, spec.channels, 30, 30), dtype=np.uint8) for n in (8, 3, 20, 1, 0)]
    plain = [session_scores(model.session, b, 8) for b in batches]
    assert [model.raw_scores(b).tolist() for b in batches] == [p.tolist() for p in plain]
    model.warm_up()
    assert [model.raw_scores(b).tolist() for b in batches] == [p.tolist() for p in plain]


def test_auto_device_falls_back_to_cpu(tiny_model):
    # On machines without a working GPU, 'auto' must still load (CUDA failing is not an error).
    assert PatchModel(tiny_model, device="auto").provider in ("CUDAExecutionProvider", "CPUExecutionProvider")


def test_missing_model_and_card(tiny_model, tmp_path):
    with pytest.raises(ModelError, match="model not found"):
        PatchModel(tmp_path / "none.onnx")
    m = copy_model(tiny_model, tmp_path)
    card_path_for(m).unlink()
    with pytest.raises(ModelError, match="model card not found"):
        PatchModel(m)


def test_corrupt_model_is_caught_by_its_checksum(tiny_model, tmp_path):
    m = copy_model(tiny_model, tmp_path)
    data = bytearray(m.read_bytes())
    data[len(data) // 2] ^= 0xFF
    m.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="does not match its card"):
        PatchModel(m)


def test_garbage_onnx_with_matching_card(tiny_model, tmp_path):
    m = copy_model(tiny_model, tmp_path)
    m.write_bytes(b"this is not an onnx file")
    card = json.loads(card_path_for(m).read_text())
    from streamer.model import sha256_of

    card["onnx_sha256"] = sha256_of(m)
    card_path_for(m).write_text(json.dumps(card))
    with pytest.raises(ModelError, match="cannot load ONNX model"):
        PatchModel(m)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c.update(format=99), "unsupported model card format"),
        (lambda c: c.pop("calibration"), "lacks the field 'calibration'"),
        (lambda c: c["patch"].update(motion="none"), "does not fit the card's patches"),
        (lambda c: c["calibration"].update(loc=[0.0] * 3, scale=[1.0] * 3), "calibrates 3 positions"),
        (lambda c: c["scoring"].update(window=0), "invalid model card"),
        (lambda c: c.update(count_bands={"edges": [5.0], "loc": [0.0], "scale": [1.0]}), "invalid model card"),
        (lambda c: c.update(training_moving_max=-1), "training_moving_max must be a count"),
        (lambda c: c.update(training_moving_max=2.5), "training_moving_max must be a count"),
        # json.loads reads NaN and Infinity: a card with them must not load and then alert on nothing or everything
        (lambda c: c["scoring"].update(threshold=float("nan")), "threshold must be a finite number"),
        (lambda c: c["scoring"].update(threshold=float("inf")), "threshold must be a finite number"),
        (lambda c: c["scoring"].update(threshold="2.0"), "invalid model card"),
        (lambda c: c["calibration"].update(quantile=1.5), r"calibration quantile must be in \(0, 1\)"),
        (lambda c: c["calibration"].update(quantile=0), r"calibration quantile must be in \(0, 1\)"),
        (lambda c: c.update(count_bands={"edges": [], "loc": [0.0], "scale": [1.0], "quantile": 1}), "quantile"),
        (lambda c: c.update(gate={"motion_threshold": "high"}), "gate must be null or have a finite motion_threshold"),
        (lambda c: c.update(gate={"motion_threshold": float("nan")}), "finite motion_threshold"),
        (lambda c: c.update(gate=[64.0]), "gate must be null or have a finite motion_threshold"),
    ],
)
def test_inconsistent_cards(tiny_model, tmp_path, edit, message):
    m = copy_model(tiny_model, tmp_path)
    card = json.loads(card_path_for(m).read_text())
    edit(card)
    card_path_for(m).write_text(json.dumps(card))
    with pytest.raises(ModelError, match=message):
        PatchModel(m)


def test_unreadable_card(tiny_model, tmp_path):
    m = copy_model(tiny_model, tmp_path)
    card_path_for(m).write_text("{ not json")
    with pytest.raises(ModelError, match="cannot read model card"):
        PatchModel(m)


def test_card_records_training_facts(tiny_model):
    card = ModelCard.load(card_path_for(tiny_model))
    assert card.parity["max_abs_diff"] <= card.parity["tolerance"]
    assert card.training["validation_clips"] == ["Train003"]
    assert set(card.score_percentiles) == {"p50", "p90", "p99", "p99.9"}
    assert card.scoring.threshold > 0 and "quantile" in card.threshold_rule


def test_count_bands_and_busiest_frame_round_trip_and_older_cards_without_them(banded_model, tiny_model, tmp_path):
    card = ModelCard.load(card_path_for(banded_model))
    assert card.count_bands.edges.tolist() == [10.0] and card.training_moving_max == 10
    assert ModelCard.from_dict(card.to_dict()).to_dict() == card.to_dict()
    m = copy_model(tiny_model, tmp_path)
    older = json.loads(card_path_for(m).read_text())
    older.pop("count_bands")  # cards written before count bands
    older.pop("training_moving_max")  # and before the busiest training frame was recorded
    card_path_for(m).write_text(json.dumps(older))
    assert PatchModel(m).card.count_bands is None
    assert PatchModel(m).card.training_moving_max is None
