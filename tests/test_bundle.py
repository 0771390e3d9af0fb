"""benchmarks/research/bundle.py: a selected candidate copied into the package, float16 weights checked."""

import json

import numpy as np

from streamer.model import PatchModel, card_path_for, sha256_of

from .test_run_round import research_script


def test_a_candidate_is_bundled_with_float16_weights(synthetic_ped2, tiny_model, tmp_path, monkeypatch, capsys):
    bundle = research_script("bundle")
    monkeypatch.setattr(bundle, "MODELS", tmp_path)
    assert bundle.main([str(tiny_model), "picked", "--float16", "--data", str(synthetic_ped2), "--frames", "5"]) == 0
    bundled = tmp_path / "picked.onnx"
    card = json.loads(card_path_for(bundled).read_text())
    check = card["parity"]["float16"]
    assert card["onnx_sha256"] == sha256_of(bundled) != sha256_of(tiny_model)
    assert check["tensors"] > 0 and 0 < check["max_calibrated_diff"] <= check["tolerance"]
    assert card["bundled_from"] == str(tiny_model) and "float16" in capsys.readouterr().out
    spec = PatchModel(tiny_model).card.patch
    patches = np.random.default_rng(0).integers(0, 256, (8, spec.channels, spec.size, spec.size), dtype=np.uint8)
    original, halved = PatchModel(tiny_model).raw_scores(patches), PatchModel(bundled).raw_scores(patches)
    assert np.allclose(original, halved, atol=check["tolerance"] * check["score_spread"])
