"""Diagonal-covariance Gaussian mixtures trained by EM.

The E-step is two matrix products per chunk of frames (as in Kaldi's
``DiagGmm``): with ``z = [x², x, 1]``, every weighted log-density is
``z @ P`` for a (2D+1) × K matrix ``P`` built once per iteration, and the
statistics ``[Σγx², Σγx, Σγ]`` are ``γᵀ @ z``. Chunks keep the working set
at chunk × K whatever the number of frames; sums are kept in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from spkver.errors import SpkverError
from spkver.kernels import softmax_rows
from spkver.threads import single_blas_thread

LOG_2PI = math.log(2.0 * math.pi)


@dataclass
class GMM:
    """A diagonal-covariance Gaussian mixture.

    Attributes
    ----------
    weights : numpy.ndarray, shape (K,)
    means : numpy.ndarray, shape (K, D)
    variances : numpy.ndarray, shape (K, D)
    """

    weights: np.ndarray
    means: np.ndarray
    variances: np.ndarray
    _projections: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        self.weights = np.asarray(self.weights, dtype=np.float64)
        self.means = np.asarray(self.means, dtype=np.float64)
        self.variances = np.asarray(self.variances, dtype=np.float64)
        if self.means.ndim != 2:
            raise ValueError("means must be a (components, dimensions) array")
        k, d = self.means.shape
        if self.weights.shape != (k,) or self.variances.shape != (k, d):
            raise ValueError("weights, means and variances disagree in shape")
        # The one guard on mixture parameters, wherever a mixture is made (EM, MAP, files).
        if not (np.isfinite(self.weights).all() and np.isfinite(self.means).all()
                and np.isfinite(self.variances).all()):
            raise ValueError("mixture parameters are not finite")
        if (self.variances <= 0).any() or (self.weights < 0).any():
            raise ValueError("mixture has negative weights or non-positive variances")

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def projection(self, dtype=np.float32) -> np.ndarray:
        """The (2D+1) × K matrix ``P`` with ``[x², x, 1] @ P = log w_k + log N(x; μ_k, σ²_k)``.

        Computed once per dtype (a GMM's arrays are not modified after creation).
        """
        key = np.dtype(dtype).str
        if key not in self._projections:
            self._projections[key] = self._make_projection(dtype)
        return self._projections[key]

    def _make_projection(self, dtype):
        precision = 1.0 / self.variances
        const = (
            np.log(np.maximum(self.weights, 1e-300))
            - 0.5 * (self.dim * LOG_2PI + np.log(self.variances).sum(1))
            - 0.5 * (self.means**2 * precision).sum(1)
        )
        return np.vstack([-0.5 * precision.T, (self.means * precision).T, const[None, :]]).astype(dtype)

    def log_weighted_densities(self, frames, dtype=np.float32) -> np.ndarray:
        """``log w_k + log N(x_n; μ_k, σ²_k)`` for every frame and component, (N, K)."""
        return augment(frames, dtype) @ self.projection(dtype)

    def frame_log_likelihood(self, frames, dtype=np.float64) -> np.ndarray:
        """Per-frame ``log Σ_k w_k N(x_n; μ_k, σ²_k)``, shape (N,)."""
        out = [logsumexp_rows(self.log_weighted_densities(c, dtype)) for c in iter_chunks([frames], 4096)]
        return np.concatenate(out) if out else np.zeros(0)

    def score(self, frames, dtype=np.float64) -> float:
        """Average log-likelihood per frame."""
        return float(self.frame_log_likelihood(frames, dtype).mean())


def augment(frames, dtype=np.float32, out=None) -> np.ndarray:
    """``[x², x, 1]`` for a block of frames, shape (N, 2D+1), written into ``out`` if given."""
    frames = np.asarray(frames, dtype=dtype)  # x² in the working precision (no copy when it matches)
    n, d = frames.shape
    z = np.empty((n, 2 * d + 1), dtype=dtype) if out is None else out[:n]
    np.multiply(frames, frames, out=z[:, :d])
    z[:, d : 2 * d] = frames
    z[:, 2 * d] = 1.0
    return z


def logsumexp_rows(scores: np.ndarray) -> np.ndarray:
    """Row-wise log-sum-exp (float64 result)."""
    top = scores.max(axis=1, keepdims=True)
    return (top[:, 0].astype(np.float64)) + np.log(np.exp(scores - top).sum(axis=1, dtype=np.float64))


def iter_chunks(arrays, chunk_size):
    """Yield blocks of at most ``chunk_size`` frames from a list of (n_i, D) arrays.

    Short utterances are packed together so that each block is large enough
    to keep the matrix products efficient.
    """
    pending, count = [], 0
    for array in arrays:
        start = 0
        while start < len(array):
            take = min(chunk_size - count, len(array) - start)
            pending.append(array[start : start + take])
            count += take
            start += take
            if count == chunk_size:
                yield pending[0] if len(pending) == 1 else np.concatenate(pending)
                pending, count = [], 0
    if count:
        yield pending[0] if len(pending) == 1 else np.concatenate(pending)


def default_chunk_size(n_components: int) -> int:
    """Frames per block: 1024 (up to 4096 for K < 128), at most 2 MiB of float32 scores, at least 256.

    Small enough that a block's [x², x, 1] and scores stay in cache (L2 or L3) between
    the two products and the posterior pass, large enough to keep the
    products efficient: for K = 64 a 1024-frame block's fixed costs (BLAS
    calls and packing, the statistics' float64 sum) show, and 2048 frames
    run 5–8% faster on two workers; for K = 256–512, 1024 frames are a few
    percent ahead of 512 and 2048 (``scripts/bench_em.py --kernel-only``).
    Hence about 2^17 frame·components per block, 1024 to 4096 frames (4096
    keeps [x², x, 1] at 2 MiB for D = 60 even for K = 1).
    """
    k = max(n_components, 1)
    frames = int(np.clip((1 << 17) // k, 1024, 4096))
    return max(256, min(frames, (1 << 19) // k))


@dataclass
class Statistics:
    """Zeroth-, first- and second-order statistics of frames against a GMM.

    Statistics add (``a + b``), so accumulation splits over workers.
    """

    zeroth: np.ndarray
    first: np.ndarray
    second: np.ndarray
    log_likelihood: float = 0.0
    n_frames: int = 0

    @classmethod
    def zeros(cls, n_components, dim):
        return cls(np.zeros(n_components), np.zeros((n_components, dim)), np.zeros((n_components, dim)))

    def __add__(self, other: Statistics) -> Statistics:
        return Statistics(
            self.zeroth + other.zeroth,
            self.first + other.first,
            self.second + other.second,
            self.log_likelihood + other.log_likelihood,
            self.n_frames + other.n_frames,
        )

    @property
    def average_log_likelihood(self) -> float:
        return self.log_likelihood / max(self.n_frames, 1)


def accumulate(gmm: GMM, arrays, dtype=np.float32, chunk_size=None) -> Statistics:
    """E-step: responsibilities of every frame, summed into :class:`Statistics`.

    Parameters
    ----------
    gmm : GMM
    arrays : list of numpy.ndarray
        Frames, (n_i, D) each; memory-mapped arrays work and are read a chunk
        at a time.
    dtype : numpy dtype
        Precision of the per-chunk products (float32 by default, float64 for
        reference runs); sums are float64 either way.
    chunk_size : int, optional
        Frames per block; :func:`default_chunk_size` by default.
    """
    if isinstance(arrays, np.ndarray):
        arrays = [arrays]
    k, d = gmm.n_components, gmm.dim
    projection = gmm.projection(dtype)
    chunk_size = chunk_size or default_chunk_size(k)
    # Buffers reused by every chunk: a fresh multi-MiB array per chunk costs page faults.
    z_buffer = np.empty((chunk_size, 2 * d + 1), dtype=dtype)
    score_buffer = np.empty((chunk_size, k), dtype=dtype)
    chunk_sums = np.empty((k, 2 * d + 1), dtype=dtype)
    sums = np.zeros((k, 2 * d + 1))
    log_likelihood, n_frames = 0.0, 0
    for block in iter_chunks(arrays, chunk_size):
        n = len(block)
        z, scores = augment(block, dtype, z_buffer), score_buffer[:n]
        np.matmul(z, projection, out=scores)
        log_likelihood += softmax_rows(scores)
        n_frames += n
        np.matmul(scores.T, z, out=chunk_sums)
        sums += chunk_sums
    if not (np.isfinite(sums).all() and np.isfinite(log_likelihood)):  # the guard on statistics, where made
        raise SpkverError("statistics are not finite: the features hold non-finite or absurd values")
    return Statistics(sums[:, 2 * d].copy(), sums[:, d : 2 * d].copy(), sums[:, :d].copy(), log_likelihood, n_frames)


def m_step(stats: Statistics, variance_floor, min_count=1.0):
    """Maximum-likelihood update from statistics.

    ``π_k = N_k / N``, ``μ_k = F_k / N_k``, ``σ²_k = S_k / N_k − μ_k²``,
    variances floored at ``variance_floor``.

    Returns
    -------
    gmm : GMM
    dead : numpy.ndarray of bool
        Components with fewer than ``min_count`` frames of responsibility;
        their parameters are placeholders the caller must re-seed.
    """
    count = stats.zeroth
    dead = count < min_count
    safe = np.where(dead, 1.0, count)[:, None]
    means = stats.first / safe
    variances = np.maximum(stats.second / safe - means**2, variance_floor)
    weights = count / count.sum()
    return GMM(weights, means, variances), dead


def reseed_dead(gmm: GMM, dead, rng, offset=0.2):
    """Give each dead component half of the heaviest live component (split along ±offset·σ)."""
    weights, means, variances = gmm.weights.copy(), gmm.means.copy(), gmm.variances.copy()
    for k in np.flatnonzero(dead):
        live = np.where(dead, -np.inf, weights)
        src = int(np.argmax(live))
        direction = offset * np.sqrt(variances[src]) * rng.choice([-1.0, 1.0], size=gmm.dim)
        means[k] = means[src] + direction
        means[src] = means[src] - direction
        variances[k] = variances[src]
        weights[src] *= 0.5
        weights[k] = weights[src]
        dead = dead.copy()
        dead[k] = False
    return GMM(weights / weights.sum(), means, variances)


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


def split_components(gmm: GMM, n_split, offset=0.2) -> GMM:
    """Split the ``n_split`` heaviest components into two, means ±offset·σ apart."""
    order = np.argsort(-gmm.weights, kind="stable")[:n_split]
    shift = offset * np.sqrt(gmm.variances[order])
    means = np.vstack([gmm.means, gmm.means[order] + shift])
    means[order] -= shift
    weights = np.concatenate([gmm.weights, gmm.weights[order] / 2])
    weights[order] /= 2
    variances = np.vstack([gmm.variances, gmm.variances[order]])
    return GMM(weights, means, variances)


@dataclass
class TrainingResult:
    """A trained mixture and how training went."""

    gmm: GMM
    history: list = field(default_factory=list)
    converged: bool = False
    reseeded: int = 0
    variance_floor: np.ndarray | None = None


@dataclass
class EMState:
    """Where EM stands after ``step`` M-steps: enough to resume bit-for-bit."""

    gmm: GMM
    history: list
    step: int
    reseeded: int
    rng_state: dict


def em_iterations(gmm, arrays, iterations, variance_floor, rng, tol=1e-4, dtype=np.float32,
                  on_iteration=None, chunk_size=None, engine=None, state: EMState | None = None,
                  on_checkpoint=None):
    """Run EM from ``gmm``: at most ``iterations`` M-steps, fewer once the gain is small.

    The average log-likelihood is measured at every E-step; training stops
    when its relative gain falls below ``tol`` (the model is then left as it
    is) or after ``iterations`` M-steps (a last E-step measures the final
    model). ``history[i]`` is the average log-likelihood after ``i`` M-steps.

    ``engine`` (:class:`spkver.engine.Engine`) computes the statistics in
    parallel; ``on_checkpoint`` receives an :class:`EMState` after every
    M-step, and ``state`` resumes from one.
    """
    history, converged, reseeded, start = [], False, 0, 0
    if state is not None:
        gmm, history, start, reseeded = state.gmm, list(state.history), state.step, state.reseeded
        rng.bit_generator.state = state.rng_state
    for step in range(start, iterations + 1):
        if engine is not None:
            stats = engine.accumulate(gmm, dtype, chunk_size)
        else:
            stats = accumulate(gmm, arrays, dtype, chunk_size)
        average = stats.average_log_likelihood
        gain = None if not history else (average - history[-1]) / max(abs(history[-1]), 1e-12)
        history.append(average)
        if on_iteration is not None:
            on_iteration(step, average, gain)
        if gain is not None and gain < tol:
            converged = True
            break
        if step == iterations:
            break
        gmm, dead = m_step(stats, variance_floor)
        if dead.any():
            reseeded += int(dead.sum())
            gmm = reseed_dead(gmm, dead, rng)
        if on_checkpoint is not None:
            on_checkpoint(EMState(gmm, list(history), step + 1, reseeded, rng.bit_generator.state))
    return TrainingResult(gmm, history, converged, reseeded, variance_floor)


def train(arrays, n_components, iterations=20, init="kmeans", seed=0, tol=1e-4,
          variance_floor_ratio=1e-3, kmeans_frames=None, split_iterations=3,
          dtype=np.float32, on_iteration=None, chunk_size=None, engine=None,
          resume: EMState | None = None, on_checkpoint=None) -> TrainingResult:
    """Fit a diagonal GMM to frames by EM.

    Parameters
    ----------
    arrays : list of numpy.ndarray
        Training frames, (n_i, D) each (memory-mapped arrays are streamed).
    n_components : int
        K, the number of Gaussians.
    iterations : int
        Maximum EM iterations (M-steps), 20 by default.
    init : {"kmeans", "split"}
        ``kmeans``: k-means++ then Lloyd on a frame subsample (default);
        ``split``: binary splitting 1 → 2 → 4 … with ``split_iterations`` EM
        iterations per size (SIDEKIT, MSR Identity Toolbox).
    seed : int
        Random seed; same data and seed give the same model.
    tol : float
        Stop once the relative gain in average log-likelihood is below this.
    variance_floor_ratio : float
        Variances are floored at this fraction of the global variance.
    kmeans_frames : int, optional
        Subsample size for k-means; default ``max(20000, 100 K)`` capped at
        200 000 frames.
    engine : spkver.engine.Engine, optional
        Parallel or distributed computation of the statistics.
    resume, on_checkpoint
        Resume from an :class:`EMState`; receive one after every M-step.

    The whole fit runs with one BLAS thread in this process (workers bring the
    parallelism), so the model is the same on any machine of the same kind.
    """
    with single_blas_thread():
        return _train(arrays, n_components, iterations, init, seed, tol, variance_floor_ratio, kmeans_frames,
                      split_iterations, dtype, on_iteration, chunk_size, engine, resume, on_checkpoint)


def _train(arrays, n_components, iterations, init, seed, tol, variance_floor_ratio, kmeans_frames, split_iterations,
           dtype, on_iteration, chunk_size, engine, resume, on_checkpoint) -> TrainingResult:
    rng = np.random.default_rng(seed)
    total = sum(len(a) for a in arrays)
    if total < n_components:
        raise ValueError(f"{total} frames cannot train {n_components} components")
    mean, global_var = global_moments(arrays)
    floor = np.maximum(variance_floor_ratio * global_var, 1e-10)
    if resume is not None:
        gmm = resume.gmm
    elif init == "kmeans":
        n_sample = kmeans_frames or min(max(20000, 100 * n_components), 200000)
        points = sample_frames(arrays, min(n_sample, total), rng)
        gmm = init_kmeans(points, n_components, floor, rng)
    elif init == "split":
        gmm = GMM(np.ones(1), mean[None, :], np.maximum(global_var, floor)[None, :])
        while gmm.n_components < n_components:
            gmm = split_components(gmm, min(gmm.n_components, n_components - gmm.n_components))
            gmm = em_iterations(gmm, arrays, split_iterations, floor, rng, 0.0, dtype,
                                chunk_size=chunk_size, engine=engine).gmm
    else:
        raise ValueError(f"unknown init {init!r}: use 'kmeans' or 'split'")
    return em_iterations(gmm, arrays, iterations, floor, rng, tol, dtype, on_iteration, chunk_size,
                         engine, resume, on_checkpoint)
