"""NRE: neighbourhood-relational encoding (after Sabokrou et al.).

1. Pre-train a conv autoencoder A on normal patches (pixel MSE).
2. Encode every training patch with A: R_A(X), the ReLU'd latent.
3. k-means the latents into K clusters, so neighbours are searched within a cluster.
4. For each training patch X: X0 = its T most cosine-similar patches in its cluster;
   X_inf = T random patches from clusters whose centres are far from X's.
5. Initialise E_phi + D from A and train, with A frozen and X' = D(E_phi(X)), on
     L = l1 (1 - cos(R_A(X), R_A(X')))
       + l2 sum_i (1 - cos(R_A(X'), R_A(X0_i)))
       + l3 sum_i cos(R_A(X'), R_A(X_inf_i))
   so a reconstruction keeps the meaning of its input and of its normal
   neighbourhood, and moves away from unrelated normal patterns.
6. Anomaly score: the reconstruction error ||X - D(E_phi(X))||^2 (mean per pixel).
"""

from __future__ import annotations

import copy
import logging

import numpy as np
import torch
import torch.nn.functional as F

from .clustering import cosine_neighbours, far_clusters, kmeans, sample_from_clusters
from .config import NREConfig
from .loops import as_float, fit
from .nets import ConvAutoencoder

log = logging.getLogger(__name__)


@torch.no_grad()
def encode(model: ConvAutoencoder, patches: np.ndarray, batch_size: int = 2048) -> np.ndarray:
    model.eval()
    return np.concatenate(
        [model.encode(as_float(patches[i : i + batch_size])).numpy() for i in range(0, len(patches), batch_size)]
    )


class NeighbourhoodLoss:
    """The NRE objective on batches of one patch set, neighbours and far samples drawn from the training set."""

    def __init__(
        self,
        cfg: NREConfig,
        frozen: ConvAutoencoder,
        model: ConvAutoencoder,
        patches: np.ndarray,
        latents: torch.Tensor,
        neighbours: np.ndarray,
        clusters: np.ndarray,
        train_latents: torch.Tensor,
        train_clusters: np.ndarray,
        far: np.ndarray,
        rng: np.random.Generator,
    ):
        self.cfg, self.frozen, self.model = cfg, frozen, model
        self.patches, self.latents, self.neighbours, self.clusters = patches, latents, neighbours, clusters
        self.train_latents, self.train_clusters, self.far, self.rng = train_latents, train_clusters, far, rng

    def __call__(self, idx: np.ndarray) -> torch.Tensor:
        l1, l2, l3 = self.cfg.lambdas
        t = self.cfg.neighbours
        recon_latent = self.frozen.encode(self.model(as_float(self.patches[idx])))  # R_A(X'), (B, L)
        loss = l1 * (1 - F.cosine_similarity(self.latents[idx], recon_latent, dim=1))
        if l2:
            near = self.train_latents[torch.from_numpy(self.neighbours[idx])]  # (B, T, L)
            loss = loss + l2 * (1 - F.cosine_similarity(recon_latent[:, None], near, dim=2)).sum(1)
        if l3:
            choice = self.rng.integers(self.far.shape[1], size=(len(idx), t))
            far_cluster = self.far[self.clusters[idx][:, None], choice]  # (B, T) clusters far from each X's
            picks = sample_from_clusters(far_cluster.reshape(-1), self.train_clusters, self.rng).reshape(len(idx), t)
            away = self.train_latents[torch.from_numpy(picks)]
            loss = loss + l3 * F.cosine_similarity(recon_latent[:, None], away, dim=2).sum(1)
        return loss.mean()


def train_nre(
    cfg: NREConfig,
    pretrained: ConvAutoencoder,
    train: np.ndarray,
    val: np.ndarray,
    rng: np.random.Generator,
    seed: int = 0,
    progress: bool = True,
) -> tuple[ConvAutoencoder, dict]:
    """Steps 2-5 above on a pre-trained A; returns E_phi + D and a summary of the neighbourhood build."""
    frozen = copy.deepcopy(pretrained).eval()
    for p in frozen.parameters():
        p.requires_grad_(False)
    train_latents = encode(frozen, train)
    val_latents = encode(frozen, val)
    k = min(cfg.clusters, len(train))
    clusters, centres = kmeans(train_latents, k, seed)
    log.info(
        "NRE: %d training latents in %d clusters (sizes %d-%d)",
        len(train),
        k,
        np.bincount(clusters).min(),
        np.bincount(clusters).max(),
    )
    neighbours = cosine_neighbours(train_latents, clusters, train_latents, clusters, cfg.neighbours, same_set=True)
    val_clusters = ((val_latents[:, None] - centres[None]) ** 2).sum(-1).argmin(1)
    val_neighbours = cosine_neighbours(val_latents, val_clusters, train_latents, clusters, cfg.neighbours)
    far = far_clusters(centres, cfg.far_fraction)

    model = copy.deepcopy(pretrained)  # E_phi + D start from A's weights
    train_latents_t = torch.from_numpy(train_latents)
    shared = dict(
        cfg=cfg, frozen=frozen, model=model, train_latents=train_latents_t, train_clusters=clusters, far=far, rng=rng
    )
    history = fit(
        model,
        NeighbourhoodLoss(patches=train, latents=train_latents_t, neighbours=neighbours, clusters=clusters, **shared),
        len(train),
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        optimizer=torch.optim.Adam(model.parameters(), lr=cfg.lr),
        rng=rng,
        val_loss_fn=NeighbourhoodLoss(
            patches=val,
            latents=torch.from_numpy(val_latents),
            neighbours=val_neighbours,
            clusters=val_clusters,
            **shared,
        ),
        n_val=len(val),
        desc="nre",
        progress=progress,
    )
    cluster_sizes = np.bincount(clusters, minlength=k)
    return model, {
        "clusters": int(k),
        "cluster_size_min": int(cluster_sizes.min()),
        "cluster_size_max": int(cluster_sizes.max()),
        "history": history,
    }
