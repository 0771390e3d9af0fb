"""Latent clustering shared by the trainers: k-means, cosine neighbours within clusters,
far clusters, and the members nearest each centroid.

NRE uses it to keep its neighbour search tractable (search within a cluster,
not over every training patch), DEC for its centroid initialisation, and
`vad select` for representative frames.
"""

from __future__ import annotations

import numpy as np


def kmeans(latents: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """k-means++ initialised k-means: (labels (N,), centres (k, D)), the same for the same seed and data."""
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    latents = np.asarray(latents, dtype=np.float32)
    if not 1 <= k <= len(latents):
        raise ValueError(f"cannot make {k} clusters of {len(latents)} points")
    # One OpenMP thread: with more, sklearn adds the threads' partial centroid sums in whatever
    # order the threads finish, so the same seed could give other centroids from run to run.
    with threadpool_limits(limits=1, user_api="openmp"):
        model = KMeans(n_clusters=k, init="k-means++", n_init=1, random_state=seed).fit(latents)
    return model.labels_.astype(np.int64), model.cluster_centers_.astype(np.float32)


def nearest_to_centroids(latents: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """For each centre, the index of the closest point (Euclidean)."""
    latents = np.asarray(latents, dtype=np.float32)
    d2 = (latents**2).sum(1)[:, None] - 2 * latents @ centres.T + (centres**2).sum(1)[None]
    return d2.argmin(axis=0)


def nearest_members(latents: np.ndarray, labels: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """For each centre, the index of the closest point among its own cluster's members (so no point is picked twice)."""
    picks = np.empty(len(centres), dtype=np.int64)
    for j in range(len(centres)):
        members = np.flatnonzero(labels == j)
        if len(members) == 0:
            raise ValueError(f"cluster {j} has no members")
        picks[j] = members[nearest_to_centroids(latents[members], centres[j : j + 1])[0]]
    return picks


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def cosine_neighbours(
    query: np.ndarray,
    query_labels: np.ndarray,
    pool: np.ndarray,
    pool_labels: np.ndarray,
    count: int = 1,
    same_set: bool = False,
    chunk: int = 4096,
) -> np.ndarray:
    """(Nq, count) indices into `pool` of each query's most cosine-similar pool members in its own cluster.

    same_set: query and pool are the same array, so a point is not its own neighbour.
    A cluster with fewer members than asked repeats the ones it has (a singleton yields itself).
    """
    query, pool = _unit(np.asarray(query, np.float32)), _unit(np.asarray(pool, np.float32))
    out = np.empty((len(query), count), dtype=np.int64)
    for cluster in np.unique(query_labels):
        q_idx = np.flatnonzero(query_labels == cluster)
        p_idx = np.flatnonzero(pool_labels == cluster)
        if len(p_idx) == 0:
            raise ValueError(f"cluster {cluster} has queries but no pool members")
        for start in range(0, len(q_idx), chunk):
            rows = q_idx[start : start + chunk]
            sims = query[rows] @ pool[p_idx].T
            if same_set:
                sims[np.arange(len(rows)), np.searchsorted(p_idx, rows)] = -np.inf  # not its own neighbour
            available = len(p_idx) - (1 if same_set else 0)
            if available < 1:
                out[rows] = rows[:, None]
                continue
            take = min(count, available)
            top = np.argpartition(-sims, take - 1, axis=1)[:, :take]
            order = np.take_along_axis(-sims, top, axis=1).argsort(axis=1)
            best = p_idx[np.take_along_axis(top, order, axis=1)]
            out[rows] = best[:, np.arange(count) % take]
    return out


def far_clusters(centres: np.ndarray, fraction: float = 0.5) -> np.ndarray:
    """(K, F) for each cluster, the F = ceil(fraction * (K-1)) clusters whose centres are least cosine-similar."""
    k = len(centres)
    if k < 2:
        raise ValueError("far clusters need at least two clusters")
    sims = _unit(centres) @ _unit(centres).T
    np.fill_diagonal(sims, np.inf)
    far = max(1, int(np.ceil(fraction * (k - 1))))
    return np.argsort(sims, axis=1)[:, :far]


def sample_from_clusters(
    clusters: np.ndarray, labels: np.ndarray, rng: np.random.Generator, count: int = 1
) -> np.ndarray:
    """(len(clusters), count) random member indices of the given clusters (labels: cluster of each point)."""
    order = np.argsort(labels, kind="stable")
    sizes = np.bincount(labels, minlength=int(clusters.max()) + 1)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    clusters = np.repeat(clusters[:, None], count, axis=1)
    if np.any(sizes[clusters] == 0):
        raise ValueError("cannot sample from an empty cluster")
    offsets = (rng.random(clusters.shape) * sizes[clusters]).astype(np.int64)
    return order[starts[clusters] + offsets]
