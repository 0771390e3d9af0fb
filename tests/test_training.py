import numpy as np
import pytest
import torch

from streamer.patches import PatchSpec
from streamer.scoring import ScoringSettings, smooth_series
from training.calibration import CalibrationSample, calibrate, fit_gate
from training.clustering import cosine_neighbours, far_clusters, kmeans, nearest_to_centroids, sample_from_clusters
from training.config import NREConfig
from training.export import ExportError, check_parity
from training.nets import ConvAutoencoder, ReconstructionScore
from training.nre import NeighbourhoodLoss


def test_cosine_neighbours_stay_within_clusters():
    # Cluster 0: three vectors; cluster 1: two. Cosine, not Euclidean: [10, 1] is nearest to [1, 0.2].
    latents = np.array([[1, 0.2], [10, 1], [0, 1], [1, 1], [2, 2.1]], np.float32)
    labels = np.array([0, 0, 0, 1, 1])
    nn = cosine_neighbours(latents, labels, latents, labels, count=1, same_set=True)
    assert nn[:, 0].tolist() == [1, 0, 0, 4, 3]
    two = cosine_neighbours(latents, labels, latents, labels, count=2, same_set=True)
    assert two[2].tolist() == [0, 1]  # [0,1] vs [1,.2]: cos .196; vs [10,1]: cos .0995
    # A singleton cluster has no other member: it yields itself.
    assert cosine_neighbours(latents[:1], np.array([5]), latents[:1], np.array([5]), same_set=True).tolist() == [[0]]


def test_far_clusters_and_sampling():
    centres = np.array([[1, 0], [0.9, 0.1], [0.1, 1], [-1, 0]], np.float32)
    far = far_clusters(centres, fraction=1 / 3)
    assert far[:, 0].tolist() == [3, 3, 3, 0]
    labels = np.array([0, 0, 1, 2, 2, 2])
    picks = sample_from_clusters(np.array([2, 1, 0]), labels, np.random.default_rng(0), count=50)
    assert set(labels[picks[0]]) == {2} and set(labels[picks[1]]) == {1} and set(labels[picks[2]]) == {0}
    assert len(set(picks[0])) == 3  # every member of cluster 2 gets drawn


def test_kmeans_and_nearest_to_centroids():
    rng = np.random.default_rng(0)
    pts = np.concatenate([rng.normal(0, 0.1, (50, 2)), rng.normal(5, 0.1, (50, 2))]).astype(np.float32)
    labels, centres = kmeans(pts, 2, seed=0)
    assert len(set(labels[:50])) == 1 and len(set(labels[50:])) == 1 and labels[0] != labels[50]
    nearest = nearest_to_centroids(pts, centres)
    assert np.allclose(pts[nearest], centres, atol=0.1)


class LinearEncoder(torch.nn.Module):
    """A stand-in for A whose latent is known in closed form."""

    def encode(self, x):
        return x.flatten(1)[:, :2]

    def forward(self, x):
        return x


def test_nre_loss_by_hand():
    # One patch X whose reconstruction X' = X has latent r' = [1, 0].
    patches = np.zeros((1, 1, 30, 30), np.uint8)
    patches[0, 0, 0, 0] = 255
    model = LinearEncoder()
    latents = torch.tensor([[1.0, 1.0]])  # R_A(X)        cos(r', .) = 1/sqrt 2
    train_latents = torch.tensor([[0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]])
    neighbours = np.array([[0]])  # X0: [0, 1]        cos = 0
    cfg = NREConfig(lambdas=(0.6, 0.2, 0.2), neighbours=1)
    loss = NeighbourhoodLoss(
        cfg,
        model,
        model,
        patches,
        latents,
        neighbours,
        clusters=np.array([0]),
        train_latents=train_latents,
        train_clusters=np.array([0, 1, 1]),
        far=np.array([[1]]),
        rng=np.random.default_rng(0),
    )(np.array([0]))
    # X_inf from cluster 1: [1, 0] (cos 1) or [-1, 0] (cos -1).
    base = 0.6 * (1 - 2**-0.5) + 0.2 * (1 - 0)
    assert float(loss) in (pytest.approx(base + 0.2), pytest.approx(base - 0.2))


def test_parity_failure_is_loud():
    spec = PatchSpec(motion="none")
    ae = ConvAutoencoder(1, (4, 4, 4), 4)
    module = ReconstructionScore(ae)

    class ShiftedSession:  # an "export" whose scores are off by 0.1
        def get_inputs(self):
            return [type("I", (), {"name": "patches"})()]

        def run(self, _, feed):
            with torch.no_grad():
                return [module(torch.from_numpy(feed["patches"])).numpy() + 0.1]

    patches = np.random.default_rng(0).integers(0, 256, (8, spec.channels, 30, 30), dtype=np.uint8)
    with pytest.raises(ExportError, match="differ from PyTorch"):
        check_parity(module, ShiftedSession(), patches)


def test_fit_gate_hides_at_most_the_allowed_share():
    energy = np.array([0, 0, 1, 2, 3, 4, 5, 6, 7, 8], float)
    calibrated = np.array([0, 0, 0, 2, 0, 2, 2, 2, 2, 2], float)  # unusual at energies 2, 4, 5, 6, 7, 8
    gate = fit_gate(energy, calibrated, max_hidden=1 / 6)
    assert gate["motion_threshold"] == 4.0  # hides the one at energy 2, not the one at 4
    assert fit_gate(energy, calibrated, max_hidden=0)["motion_threshold"] == 2.0


def test_calibrate_fits_count_bands_on_frame_scores_and_thresholds_after_them():
    # 2 clips of 300 frames, 4 positions; the gate passes 1 to 4 of them, and scores rise with the count.
    rng = np.random.default_rng(0)
    frames, positions = 600, 4
    moving = rng.integers(1, 5, frames)
    energy = (np.arange(positions)[None, :] < moving[:, None]) * 20.0
    raw = np.where(energy > 0, moving[:, None] + rng.random((frames, positions)), 0.0)
    data = CalibrationSample(raw, energy, np.repeat([0, 1], frames // 2), np.ones(frames, bool), frames)
    settings = ScoringSettings(aggregation="max", smoothing="mean", window=2)
    plain = calibrate(data, settings, "global", gate_max_hidden=0.0, threshold_quantile=0.9)
    banded = calibrate(data, settings, "global", gate_max_hidden=0.0, threshold_quantile=0.9, count_bands=4)
    assert plain.count_bands is None
    assert plain.training_moving_max == banded.training_moving_max == moving.max() == 4
    assert banded.count_bands.edges.tolist() == [2, 3, 4]  # one band per count
    frame_max = np.where(energy > 0, plain.calibration.apply(raw), 0.0).max(axis=1)  # gated-out patches count 0
    for count in range(1, 5):
        in_band = moving == count
        assert banded.count_bands.loc[count - 1] == pytest.approx(np.median(frame_max[in_band]), abs=1e-6)
    calibrated = np.array([banded.count_bands.apply(s, c) for s, c in zip(frame_max, moving)])
    smoothed = np.concatenate([smooth_series(calibrated[:300], settings), smooth_series(calibrated[300:], settings)])
    assert banded.threshold == pytest.approx(np.quantile(smoothed, 0.9), abs=1e-6)  # thresholded after the bands
    assert abs(np.median(calibrated)) < 0.1  # every band centred: crowded frames no longer score higher


def test_nre_far_samples_come_from_far_clusters_for_a_whole_batch():
    """X_inf for every patch of a batch is drawn from a cluster far from that patch's own."""
    rng = np.random.default_rng(0)
    patches = rng.integers(0, 256, (6, 1, 30, 30), dtype=np.uint8)
    model = LinearEncoder()
    train_latents = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]])
    clusters = np.array([0, 0, 1, 1])
    batch_clusters = np.array([0, 1, 0, 1, 0, 1])
    cfg = NREConfig(lambdas=(0.0, 0.0, 1.0), neighbours=2)
    loss = NeighbourhoodLoss(
        cfg,
        model,
        model,
        patches,
        torch.zeros(6, 2),
        np.zeros((6, 2), np.int64),
        batch_clusters,
        train_latents=train_latents,
        train_clusters=clusters,
        far=np.array([[1], [0]]),
        rng=rng,
    )
    # Each patch's reconstruction latent is its first two pixels; make it point along its own cluster.
    patches[:, 0, 0, :2] = 0
    patches[batch_clusters == 0, 0, 0, 0] = 255
    patches[batch_clusters == 1, 0, 0, 1] = 255
    value = float(loss(np.arange(6)))
    # Far members are nearly orthogonal to the patch's own direction: cos <= 0.1, two of them.
    assert 0 <= value <= 2 * 0.1
