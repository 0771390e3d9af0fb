"""DEC, SDAE + k-means and ICS: hand-computed cases, ONNX parity of each scoring graph, end-to-end tiny runs."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from streamer import config
from streamer.model import PatchModel, create_session
from streamer.patches import PatchSpec
from training.config import TrainConfig
from training.dec import CentroidDistance, kl_divergence, soft_assignment, target_distribution
from training.export import check_parity, export_onnx
from training.ics import (
    ICSLoss,
    ICSNet,
    classification_loss,
    closeness_loss,
    dispersion_loss,
    intra_class_loss,
    split_atypical,
)
from training.loops import mean_loss
from training.nets import ConvAutoencoder
from training.sdae import SDAE, SDAEEncoder
from training.ssim import C1, ssim


def test_student_t_soft_assignment_by_hand():
    # z = (0, 0); centroids at squared distances 1 and 4: kernels 1/2 and 1/5, normalised 5/7 and 2/7.
    q = soft_assignment(torch.zeros(1, 2), torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
    assert q[0].tolist() == pytest.approx([5 / 7, 2 / 7])


def test_target_distribution_by_hand():
    # f = (1.2, 0.8). Row 1: (.64/1.2, .04/.8) = (8/15, 1/20) -> (32/35, 3/35).
    # Row 2: (.16/1.2, .36/.8) = (2/15, 9/20) -> (8/35, 27/35).
    p = target_distribution(torch.tensor([[0.8, 0.2], [0.4, 0.6]], dtype=torch.float64))
    assert p.tolist() == [pytest.approx([32 / 35, 3 / 35]), pytest.approx([8 / 35, 27 / 35])]


def test_kl_divergence_by_hand():
    p = torch.tensor([[0.5, 0.5], [0.25, 0.75]])
    q = torch.tensor([[0.25, 0.75], [0.25, 0.75]])
    # Row 1: .5 ln 2 + .5 ln(2/3) = .5 ln(4/3); row 2: 0. Mean over rows.
    assert float(kl_divergence(p, q)) == pytest.approx(0.25 * math.log(4 / 3))


class FirstTwo(torch.nn.Module):
    """An 'encoder' whose code is the first two pixels."""

    def forward(self, x):
        return x.flatten(1)[:, :2]


def test_centroid_distance_is_to_the_nearest_centroid():
    x = torch.zeros(2, 1, 30, 30)
    x[0, 0, 0, :2] = torch.tensor([0.3, 0.0])  # code (.3, 0): distances .3 and .5
    x[1, 0, 0, :2] = torch.tensor([0.3, 0.4])  # code (.3, .4): distances .5 and .3
    scorer = CentroidDistance(FirstTwo(), torch.tensor([[0.0, 0.0], [0.6, 0.4]]))
    assert scorer(x).tolist() == pytest.approx([0.3, 0.3])
    scorer = CentroidDistance(FirstTwo(), torch.tensor([[0.0, 0.0]]))
    assert scorer(x).tolist() == pytest.approx([0.3, 0.5])


def test_sdae_layers_and_linear_bottleneck():
    sdae = SDAE(1800)
    assert [(m.in_features, m.out_features) for m in sdae.encoders] == [
        (1800, 500),
        (500, 500),
        (500, 2000),
        (2000, 10),
    ]
    x = torch.rand(64, 2, 30, 30)
    z = sdae.encode(x)
    assert z.shape == (64, 10) and (z < 0).any()  # linear: a ReLU'd code would never be negative
    assert (sdae.encode(x, layers=1) >= 0).all()  # hidden layers are ReLU'd
    assert sdae(x).shape == x.shape


def test_ics_losses_by_hand():
    # sigmoid(0) = 1/2, sigmoid(ln 3) = 3/4.
    logits = torch.tensor([0.0, math.log(3)])
    assert float(closeness_loss(logits)) == pytest.approx((math.log(2) + math.log(4)) / 2)  # -log(1 - d)
    assert float(dispersion_loss(logits)) == pytest.approx((math.log(2) - math.log(0.75)) / 2)  # -log d
    bce = intra_class_loss(torch.tensor([math.log(3), math.log(3)]), torch.tensor([1, 0]))
    assert float(bce) == pytest.approx((-math.log(0.75) - math.log(0.25)) / 2)


def test_ssim_split_ratio():
    similarity = np.random.default_rng(0).permutation(np.arange(20, dtype=float))
    atypical, threshold = split_atypical(similarity, 0.1)
    assert atypical.sum() == 2 and sorted(similarity[atypical]) == [0.0, 1.0] and threshold == 1.0
    assert split_atypical(similarity, 0.25)[0].sum() == 5
    assert split_atypical(similarity[:3], 0.1)[0].sum() == 1  # never an empty atypical class


def test_ssim_by_hand():
    a = torch.rand(3, 2, 30, 30)
    assert ssim(a, a).tolist() == pytest.approx([1, 1, 1], abs=1e-5)
    # Constant patches: no variance, so only the luminance term (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1) is left.
    x, y = torch.full((1, 2, 30, 30), 0.2), torch.full((1, 2, 30, 30), 0.2)
    y[:, 1] = 0.6
    luminance = (2 * 0.2 * 0.6 + C1) / (0.2**2 + 0.6**2 + C1)
    assert float(ssim(x, y)) == pytest.approx((1 + luminance) / 2, rel=1e-4)  # channel mean


def test_ics_loss_alternates_the_pair_step_and_a_balanced_classification_step():
    torch.manual_seed(0)
    net = ICSNet(ConvAutoencoder(1, (4, 4, 4), 4).encoder, 4)
    patches = np.random.default_rng(0).integers(0, 256, (10, 1, 30, 30), dtype=np.uint8)
    atypical = np.arange(10) < 3
    loss = ICSLoss(net, patches, atypical, np.random.default_rng(0))
    got = [loss(np.arange(8)).item() for _ in range(2)]  # batches of 8: 4 pairs of each class, then 4 + 4 patches

    rng = np.random.default_rng(0)  # the same draws, by hand
    typical, atypical_idx = np.flatnonzero(~atypical), np.flatnonzero(atypical)
    with torch.no_grad():

        def z(idx):
            return net.features(torch.from_numpy(patches[idx]).float() / 255)

        (ti, tj), (ai, aj) = rng.choice(typical, size=(2, 4)), rng.choice(atypical_idx, size=(2, 4))
        pairs = closeness_loss(net.distance_logit(z(ti), z(tj))) + dispersion_loss(net.distance_logit(z(ai), z(aj)))
        picked = np.concatenate([rng.choice(typical, size=4), rng.choice(atypical_idx, size=4)])
        bce = intra_class_loss(net.atypicality_logit(z(picked)), torch.tensor([0] * 4 + [1] * 4))
    assert got == pytest.approx([float(pairs), float(bce)], rel=1e-5)
    with pytest.raises(ValueError, match="both typical and atypical"):
        ICSLoss(net, patches, np.zeros(10, bool), np.random.default_rng(0))


def test_ics_scores_the_logit_which_float32_does_not_round_to_a_ceiling():
    torch.manual_seed(0)
    net = ICSNet(ConvAutoencoder(1, (4, 4, 4), 4).encoder, 4)
    with torch.no_grad():
        net.head.bias.fill_(30.0)  # confidently atypical patches
        scores = net(torch.rand(2, 1, 30, 30))
    assert torch.sigmoid(scores).eq(1.0).all()  # as probabilities both would be exactly 1
    assert scores[0] != scores[1]


def test_ics_validation_loss_weighs_both_classes_alike():
    torch.manual_seed(0)
    net = ICSNet(ConvAutoencoder(1, (4, 4, 4), 4).encoder, 4)
    patches = np.random.default_rng(0).integers(0, 256, (8, 1, 30, 30), dtype=np.uint8)
    atypical = np.arange(8) < 2
    with torch.no_grad():
        logits = net.atypicality_logit(net.features(torch.from_numpy(patches).float() / 255))
        each = F.binary_cross_entropy_with_logits(logits, torch.from_numpy(atypical).float(), reduction="none")
    balanced = (each[atypical].mean() + each[~atypical].mean()) / 2
    assert mean_loss(classification_loss(net, patches, atypical), 8, 3) == pytest.approx(float(balanced), rel=1e-5)


@pytest.mark.parametrize("method", ["sdae_kmeans", "ics"])
def test_onnx_parity_of_scoring_graphs(method, tmp_path):
    torch.manual_seed(0)
    spec = PatchSpec(motion="flow")
    if method == "sdae_kmeans":  # DEC exports the same graph with other centroids
        module = CentroidDistance(SDAEEncoder(SDAE(1800, (32, 32, 64), 4)), torch.randn(5, 4))
    else:
        module = ICSNet(ConvAutoencoder(2, (8, 16, 16), 8).encoder, 8)
    path = tmp_path / "m.onnx"
    export_onnx(module, path, spec)
    session, _ = create_session(path, device="cpu")
    patches = np.random.default_rng(1).integers(0, 256, (300, 2, 30, 30), dtype=np.uint8)
    assert check_parity(module, session, patches)["max_abs_diff"] <= 1e-5


def test_bad_method_settings_are_listed(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "method: dec\ndec: {clusters: 1}\nics: {atypical_fraction: 1.5, ssim_window: 4}\nsdae: {dropout: 1.0}\n"
    )
    with pytest.raises(config.ConfigError) as e:
        config.load(path, TrainConfig)
    problems = "\n".join(e.value.problems)
    assert "dec: DEC needs at least 2 clusters" in problems
    assert "ics: atypical_fraction must be in (0, 1)" in problems
    assert "sdae: dropout must be in [0, 1)" in problems
    path.write_text("method: kmeans\n")
    with pytest.raises(config.ConfigError, match="method: must be one of"):
        config.load(path, TrainConfig)


METHOD_SETTINGS = {
    "sdae": {"hidden": [64, 64, 128], "bottleneck": 4, "pretrain_epochs": 2, "finetune_epochs": 3, "batch_size": 64},
    "dec": {"clusters": 3, "update_interval": 4, "max_epochs": 2, "batch_size": 64},
    "ics": {"epochs": 2, "batch_size": 64, "lr": 0.001},
}


@pytest.mark.parametrize("method", ["sdae_kmeans", "dec", "ics"])
def test_tiny_end_to_end(method, synthetic_ped2, tiny_config, tmp_path):
    from training.train import train_model

    out = tmp_path / method
    overrides = {"method": method, "data": {"root": str(synthetic_ped2)}, "out": str(out), **METHOD_SETTINGS}
    card = train_model(config.load(tiny_config, TrainConfig, overrides), progress=False)
    assert card.method == method and card.parity["max_abs_diff"] <= card.parity["tolerance"]
    assert card.encoder and (tmp_path / card.encoder["file"]).is_file()
    assert card.training["validation"]["auc"] is not None
    if method == "dec":
        assert card.training["dec"]["iterations"] >= 1 and "DEC-refined" in card.score_description
    if method == "ics":
        assert card.training["ics"]["atypical_training_patches"] >= 1
    scores = PatchModel(out.with_suffix(".onnx"), device="cpu").raw_scores(
        np.random.default_rng(0).integers(0, 256, (16, 2, 30, 30), dtype=np.uint8)
    )
    assert scores.shape == (16,) and np.isfinite(scores).all()


def test_dec_refines_the_baselines_saved_sdae(synthetic_ped2, tiny_config, tmp_path):
    from training.train import train_model

    def run(method, **sdae):
        overrides = {"method": method, "data": {"root": str(synthetic_ped2)}, "out": str(tmp_path / method)}
        overrides.update(METHOD_SETTINGS, sdae={**METHOD_SETTINGS["sdae"], **sdae})
        return train_model(config.load(tiny_config, TrainConfig, overrides), progress=False)

    baseline = run("sdae_kmeans")
    checkpoint = str(tmp_path / "sdae_kmeans.sdae.npz")
    dec = run("dec", checkpoint=checkpoint)
    assert dec.training["sdae_checkpoint"] == checkpoint
    assert dec.training["sdae_history"] == baseline.training["sdae_history"]
    assert dec.training["kmeans"] == baseline.training["kmeans"]  # same network, same codes, same k-means
    with pytest.raises(ValueError, match="holds layers"):
        run("dec", checkpoint=checkpoint, bottleneck=5)


@pytest.mark.parametrize("method", ["nre", "dec", "ics"])
def test_same_seed_same_bytes_other_seed_other_network(method, synthetic_ped2, tiny_config, tmp_path):
    """A seed and a thread count fix the network: the exported graphs are byte for byte the same."""
    from training.train import train_model

    def run(name, seed):
        overrides = {"method": method, "seed": seed, "data": {"root": str(synthetic_ped2)}, "out": str(tmp_path / name)}
        card = train_model(config.load(tiny_config, TrainConfig, {**overrides, **METHOD_SETTINGS}), progress=False)
        return card, (tmp_path / name).with_suffix(".onnx").read_bytes(), (tmp_path / card.encoder["file"]).read_bytes()

    first, graph, encoder = run("first", seed=0)
    again, graph_again, encoder_again = run("again", seed=0)
    _, other_graph, _ = run("other", seed=1)
    assert graph == graph_again and encoder == encoder_again
    assert again.onnx_sha256 == first.onnx_sha256 and again.scoring.threshold == first.scoring.threshold
    assert other_graph != graph
    assert (first.training["seed"], first.training["threads"]) == (0, 1)  # tiny_config asks for one thread


def test_float16_weights_halve_the_graph_and_keep_its_scores(tmp_path):
    from onnx import TensorProto, load

    from training.export import ExportError, halve_weights, store_weights_as_float16

    torch.manual_seed(0)
    module = CentroidDistance(SDAEEncoder(SDAE(1800, (64, 64, 128), 10)), torch.randn(5, 10))
    full, half = tmp_path / "full.onnx", tmp_path / "half.onnx"
    export_onnx(module, full, PatchSpec(motion="flow"))
    export_onnx(module, half, PatchSpec(motion="flow"))
    assert store_weights_as_float16(half) == 4  # the four weight matrices; the small biases and centroids stay float32
    assert half.stat().st_size < 0.55 * full.stat().st_size
    large = {t.name for t in load(str(full)).graph.initializer if np.prod(t.dims) >= 1024}
    stored = {t.name: t.data_type for t in load(str(half)).graph.initializer}
    assert len(large) == 4 and {n for n, t in stored.items() if t == TensorProto.FLOAT16} == {
        f"{n}.float16" for n in large
    }
    patches = np.random.default_rng(1).integers(0, 256, (300, 2, 30, 30), dtype=np.uint8)
    session, _ = create_session(half, device="cpu")
    assert check_parity(module, session, patches, tolerance=1e-2)["max_abs_diff"] > 0  # rounded, but close

    export_onnx(module, half, PatchSpec(motion="flow"))
    session, _ = create_session(half, device="cpu")
    _, entry = halve_weights(half, session, patches, quantile=0.99, tolerance=0.01)
    assert 0 < entry["max_calibrated_diff"] <= 0.01 and entry["tensors"] == 4
    export_onnx(module, half, PatchSpec(motion="flow"))
    with pytest.raises(ExportError, match="float16 weights move patch scores"):
        halve_weights(half, create_session(half, device="cpu")[0], patches, quantile=0.99, tolerance=1e-9)


def test_float16_export_of_a_trained_model(synthetic_ped2, tiny_config, tmp_path):
    """The same seed exported both ways: the same network, half the bytes, the same operating point."""
    from training.train import train_model

    def run(weights):
        overrides = {"method": "sdae_kmeans", "data": {"root": str(synthetic_ped2)}, "out": str(tmp_path / weights)}
        overrides.update(METHOD_SETTINGS, export={"weights": weights})
        return train_model(config.load(tiny_config, TrainConfig, overrides), progress=False)

    full, half = run("float32"), run("float16")
    assert "float16" not in full.parity and half.parity["float16"]["max_calibrated_diff"] <= 0.01
    assert half.encoder["weights"] == "float16" and full.encoder["weights"] == "float32"
    for name in ("float16.onnx", "float16.encoder.onnx"):
        assert (tmp_path / name).stat().st_size < 0.55 * (tmp_path / name.replace("16", "32")).stat().st_size
    assert half.scoring.threshold == pytest.approx(full.scoring.threshold, rel=1e-2)
    scores = PatchModel(tmp_path / "float16.onnx", device="cpu").raw_scores(
        np.random.default_rng(0).integers(0, 256, (16, 2, 30, 30), dtype=np.uint8)
    )
    assert np.isfinite(scores).all()
