"""EM training of a diagonal GMM: M-step, re-seeding of dead components, iterations and resume.

The statistics come from :func:`spkver.gmm.estep.accumulate`, here or through
an :class:`spkver.gmm.engine.Engine` (in parallel, bit-identically).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from spkver.errors import SpkverError
from spkver.gmm.estep import Statistics, accumulate
from spkver.gmm.initialise import global_moments, init_kmeans, sample_frames, split_components, split_into
from spkver.gmm.model import GMM
from spkver.run import single_blas_thread


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
        split_into(weights, means, variances, src, k,
                   offset * np.sqrt(variances[src]) * rng.choice([-1.0, 1.0], size=gmm.dim))
        dead = dead.copy()
        dead[k] = False
    return GMM(weights / weights.sum(), means, variances)


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


def em_iterations(gmm, arrays, iterations, variance_floor, rng, *, tol=1e-4, dtype=np.float32,
                  on_iteration=None, chunk_size=None, engine=None, state: EMState | None = None,
                  on_checkpoint=None):
    """Run EM from ``gmm``: at most ``iterations`` M-steps, fewer once the gain is small.

    The average log-likelihood is measured at every E-step; training stops
    when its relative gain falls below ``tol`` (the model is then left as it
    is) or after ``iterations`` M-steps (a last E-step measures the final
    model). ``history[i]`` is the average log-likelihood after ``i`` M-steps.

    ``engine`` (:class:`spkver.gmm.engine.Engine`) computes the statistics in
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


def train(arrays, n_components, *, iterations=20, init="kmeans", seed=0, tol=1e-4,
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
    engine : spkver.gmm.engine.Engine, optional
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
            gmm = em_iterations(gmm, arrays, split_iterations, floor, rng, tol=0.0, dtype=dtype,
                                chunk_size=chunk_size, engine=engine).gmm
    else:
        raise ValueError(f"unknown init {init!r}: use 'kmeans' or 'split'")
    return em_iterations(gmm, arrays, iterations, floor, rng, tol=tol, dtype=dtype, on_iteration=on_iteration,
                         chunk_size=chunk_size, engine=engine, state=resume, on_checkpoint=on_checkpoint)


# EM needs several frames per Gaussian to estimate 2·D+1 parameters sensibly.
MIN_FRAMES_PER_COMPONENT = 10


# --components auto: one component per this many speech frames (nearest power of two), within
# these bounds. Measured on short clips and long recordings at 8 and 16 kHz (README).
FRAMES_PER_COMPONENT = 800


AUTO_COMPONENTS = (16, 2048)


def auto_components(n_frames: int) -> int:
    """The default number of components: the power of two nearest ``n_frames / 800``, from 16 to 2048.

    Fewer than 16 only when there are fewer than 160 frames (at least 10 frames per component).
    """
    low, high = AUTO_COMPONENTS
    k = 2 ** round(math.log2(max(n_frames / FRAMES_PER_COMPONENT, 1)))
    k = min(max(k, low), high)
    while k > 1 and k * MIN_FRAMES_PER_COMPONENT > n_frames:
        k //= 2
    return k


def components_for(n_frames: int, requested, allow_fewer: bool) -> int:
    """The number of components to train (``requested``, or :func:`auto_components` for None).

    Raises SpkverError when the data is too short for the number requested.
    """
    if requested is None:
        requested = auto_components(n_frames)
        if requested * MIN_FRAMES_PER_COMPONENT <= n_frames:
            return requested
    needed = requested * MIN_FRAMES_PER_COMPONENT
    if n_frames >= needed:
        return requested
    if allow_fewer and n_frames >= MIN_FRAMES_PER_COMPONENT:
        return max(1, n_frames // MIN_FRAMES_PER_COMPONENT)
    if allow_fewer:  # not even one component can be trained: only more audio helps
        raise SpkverError(f"{n_frames} speech frames are too few for even one component (need "
                          f"{MIN_FRAMES_PER_COMPONENT}); give more audio")
    raise SpkverError(
        f"{n_frames} speech frames are too few for {requested} components: need at least {needed} "
        f"({MIN_FRAMES_PER_COMPONENT} per component); give more audio, lower --components, "
        "or pass --allow-fewer-components"
    )
