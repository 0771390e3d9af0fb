"""Density in latent space (training/density.py) and the appearance -> motion network (training/crossmodal.py)."""

import numpy as np
import pytest
import torch

from streamer import config
from streamer.model import PatchModel, create_session
from streamer.patches import PatchSpec
from training.config import TrainConfig
from training.crossmodal import CrossModalScore
from training.density import DensityScore, NearestDistance, k_center_coreset
from training.export import check_parity, export_onnx
from training.nets import ConvAutoencoder, ReconstructionScore


def test_nearest_distance_is_the_mean_over_the_nearest_bank_codes():
    bank = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 5.0]])
    z = torch.tensor([[0.0, 1.0], [3.0, 4.0]])
    # squared distances: (0, 1) is 1, 10, 16 away; (3, 4) is 25, 16, 10 away
    assert NearestDistance(bank, 1)(z).tolist() == pytest.approx([1.0, 10.0], rel=1e-5)
    assert NearestDistance(bank, 2)(z).tolist() == pytest.approx([5.5, 13.0], rel=1e-5)
    with pytest.raises(ValueError, match="neighbours"):
        NearestDistance(bank, 4)


def test_k_center_coreset_picks_the_farthest_codes_first():
    codes = torch.tensor([[0.0], [0.1], [0.2], [10.0], [5.0], [5.1]])
    picked = k_center_coreset(codes, 3, np.random.default_rng(0))
    assert len(set(picked.tolist())) == 3
    # whatever the first pick, one of each of the three groups ends up in the bank
    assert {int(codes[i, 0].round()) for i in picked} == {0, 5, 10}


def test_density_score_runs_the_encoder_once_and_fuses_by_spread(tmp_path):
    torch.manual_seed(0)
    autoencoder = ConvAutoencoder(2, (4, 8, 8), 6)
    own = ReconstructionScore(autoencoder)
    x = torch.rand(20, 2, 30, 30)
    with torch.no_grad():
        bank = autoencoder.encoder(x[:5])
        nearest = NearestDistance(bank, 1)
        fused = DensityScore(autoencoder.encoder, nearest, own, (2.0, 4.0))(x)
        alone = DensityScore(autoencoder.encoder, nearest)(x)
        assert alone[:5].tolist() == pytest.approx([0.0] * 5, abs=1e-3)  # the bank's own codes
        assert fused.tolist() == pytest.approx((own(x) / 2 + alone / 4).tolist(), rel=1e-5)
    path = tmp_path / "fused.onnx"
    module = DensityScore(autoencoder.encoder, nearest, own, (2.0, 4.0))
    export_onnx(module, path, PatchSpec(motion="flow"))
    session, _ = create_session(path, device="cpu")
    patches = np.random.default_rng(1).integers(0, 256, (300, 2, 30, 30), dtype=np.uint8)
    assert check_parity(module, session, patches)["max_abs_diff"] <= 1e-5


def test_crossmodal_score_predicts_the_other_channels_from_the_first():
    torch.manual_seed(0)
    score = CrossModalScore(ConvAutoencoder(1, (4, 8, 8), 6, out_channels=3))
    x = torch.rand(4, 4, 30, 30)
    changed_motion, changed_look = x.clone(), x.clone()
    changed_motion[:, 1:] = 1 - changed_motion[:, 1:]
    changed_look[:, :1] = 1 - changed_look[:, :1]
    with torch.no_grad():
        prediction = score.network(x[:, :1])
        assert prediction.shape == (4, 3, 30, 30)
        expected = (prediction - x[:, 1:]).square().flatten(1).mean(1)
        assert score(x).tolist() == pytest.approx(expected.tolist())
        # the code, and so the prediction, depends on the look alone
        assert torch.equal(score.encoder(x), score.encoder(changed_motion))
        assert not torch.equal(score.encoder(x), score.encoder(changed_look))


@pytest.mark.parametrize(
    "method, density",
    [("ae", "density"), ("ics", "fused"), ("crossmodal", "own"), ("crossmodal", "fused")],
)
def test_tiny_end_to_end_with_density_and_crossmodal(method, density, synthetic_ped2, tiny_config, tmp_path):
    from training.train import train_model

    out = tmp_path / f"{method}_{density}"
    overrides = {
        "method": method,
        "data": {"root": str(synthetic_ped2)},
        "out": str(out),
        "patches": {"motion": "flowbins", "appearance": True, "flow_signed": method == "crossmodal"},
        "ics": {"epochs": 2, "batch_size": 64, "lr": 0.001},
        "density": {"score": density, "bank": 64, "neighbours": 2},
    }
    card = train_model(config.load(tiny_config, TrainConfig, overrides), progress=False)
    assert card.method == method and card.parity["max_abs_diff"] <= card.parity["tolerance"]
    assert card.training["validation"]["auc"] is not None
    if density != "own":
        assert (
            card.training["density"]["bank"] == 64 and "nearest of 64 normal training codes" in card.score_description
        )
    if density == "fused":
        assert card.training["density"]["spreads"]["on"] == "validation"
    channels = card.patch.channels
    assert channels == (6 if method == "crossmodal" else 4)
    scores = PatchModel(out.with_suffix(".onnx"), device="cpu").raw_scores(
        np.random.default_rng(0).integers(0, 256, (16, channels, 30, 30), dtype=np.uint8)
    )
    assert scores.shape == (16,) and np.isfinite(scores).all()


def test_crossmodal_needs_a_plain_appearance_channel(synthetic_ped2, tiny_config, tmp_path):
    from training.train import train_model

    overrides = {"method": "crossmodal", "data": {"root": str(synthetic_ped2)}, "out": str(tmp_path / "x")}
    overrides["patches"] = {"motion": "flowbins", "appearance": True, "appearance_mask": True}
    with pytest.raises(ValueError, match="plain appearance channel"):
        train_model(config.load(tiny_config, TrainConfig, overrides), progress=False)
