"""Initial mixtures: k-means on a frame subsample, or binary splitting from one Gaussian."""

from __future__ import annotations

import numpy as np

from spkver.gmm.chunks import iter_chunks
from spkver.gmm.model import GMM


def global_moments(arrays):
    """Mean and variance of all frames, per dimension (float64, chunked)."""
    total, sum1, sum2 = 0, 0.0, 0.0
    for block in iter_chunks(arrays, 16384):
        block = block.astype(np.float64)
        total += len(block)
        sum1 = sum1 + block.sum(0)
        sum2 = sum2 + (block**2).sum(0)
    mean = sum1 / total
    return mean, np.maximum(sum2 / total - mean**2, 0.0)


def sample_frames(arrays, n_samples, rng) -> np.ndarray:
    """Uniform random subset of frames (without replacement), in order."""
    sizes = np.array([len(a) for a in arrays])
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    total = int(offsets[-1])
    if n_samples >= total:
        return np.concatenate([np.asarray(a, dtype=np.float32) for a in arrays])
    picks = np.sort(rng.choice(total, size=n_samples, replace=False))
    owner = np.searchsorted(offsets, picks, side="right") - 1
    out = np.empty((n_samples, arrays[0].shape[1]), dtype=np.float32)
    for i in np.unique(owner):
        rows = owner == i
        out[rows] = arrays[i][picks[rows] - offsets[i]]
    return out


def _squared_distances(points, centers):
    return (
        (points**2).sum(1)[:, None] - 2.0 * points @ centers.T + (centers**2).sum(1)[None, :]
    )


def kmeans(points, n_clusters, rng, iterations=20):
    """k-means++ seeding then Lloyd iterations; returns centres and labels.

    Parameters
    ----------
    points : numpy.ndarray, (N, D)
    n_clusters : int
    rng : numpy.random.Generator
    iterations : int
        Lloyd iterations at most; stops early when no label changes.
    """
    points = np.asarray(points, dtype=np.float64)
    n = len(points)
    centers = np.empty((n_clusters, points.shape[1]))
    centers[0] = points[rng.integers(n)]
    closest = ((points - centers[0]) ** 2).sum(1)
    for k in range(1, n_clusters):
        total = closest.sum()
        idx = rng.choice(n, p=closest / total) if total > 0 else rng.integers(n)
        centers[k] = points[idx]
        np.minimum(closest, ((points - centers[k]) ** 2).sum(1), out=closest)
    labels = np.full(n, -1)
    for _ in range(iterations):
        new_labels = np.concatenate(
            [_squared_distances(points[i : i + 8192], centers).argmin(1) for i in range(0, n, 8192)]
        )
        if np.array_equal(new_labels, labels):
            break
        labels = new_labels
        counts = np.bincount(labels, minlength=n_clusters)
        sums = np.zeros_like(centers)
        np.add.at(sums, labels, points)
        empty = counts == 0
        centers[~empty] = sums[~empty] / counts[~empty, None]
        if empty.any():
            # An empty cluster takes the point farthest from its centre.
            far = ((points - centers[labels]) ** 2).sum(1)
            centers[empty] = points[np.argsort(far)[::-1][: int(empty.sum())]]
    return centers, labels


def init_kmeans(points, n_components, variance_floor, rng) -> GMM:
    """Initial mixture from k-means: cluster shares, centres and within-cluster variances."""
    centers, labels = kmeans(points, n_components, rng)
    counts = np.bincount(labels, minlength=n_components).astype(np.float64)
    variances = np.empty_like(centers)
    for k in range(n_components):
        members = points[labels == k]
        variances[k] = members.var(0) if len(members) > 1 else variance_floor / 1e-2
    weights = np.maximum(counts, 1.0)
    return GMM(weights / weights.sum(), centers, np.maximum(variances, variance_floor))


def split_into(weights, means, variances, src, dst, shift) -> None:
    """Split component(s) ``src`` in two, in place: ``dst`` gets ``μ + shift``, ``src`` keeps ``μ − shift``.

    Both halves take half the weight and the variance; ``shift`` is
    ``offset · σ`` (with a sign per dimension when re-seeding). The one
    component split, for binary-splitting initialisation and dead components.
    """
    means[dst] = means[src] + shift
    means[src] = means[src] - shift
    variances[dst] = variances[src]
    weights[src] = weights[src] * 0.5
    weights[dst] = weights[src]


def split_components(gmm: GMM, n_split, offset=0.2) -> GMM:
    """Split the ``n_split`` heaviest components into two, means ±offset·σ apart."""
    order = np.argsort(-gmm.weights, kind="stable")[:n_split]
    k, n = gmm.n_components, len(order)
    weights = np.concatenate([gmm.weights, np.zeros(n)])
    means = np.vstack([gmm.means, np.zeros((n, gmm.dim))])
    variances = np.vstack([gmm.variances, np.zeros((n, gmm.dim))])
    split_into(weights, means, variances, order, np.arange(k, k + n), offset * np.sqrt(gmm.variances[order]))
    return GMM(weights, means, variances)
