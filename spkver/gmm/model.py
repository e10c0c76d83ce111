"""The diagonal-covariance Gaussian mixture and its log-densities as one matrix product."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from spkver.features.config import MAX_FEATURE_MAGNITUDE
from spkver.gmm.chunks import iter_chunks

LOG_2PI = math.log(2.0 * math.pi)


# The least variance a mixture may hold: the smallest normal float32, whose inverse is still finite.
SMALLEST_VARIANCE = float(np.finfo(np.float32).tiny)
# The largest log-density a mixture may reach in magnitude on any frame spkver accepts: a 1024th of float32's
# largest, room for the float32 products' partial sums and for MAP adaptation, which moves means at most across
# the features' range.
MAX_LOG_DENSITY = float(np.finfo(np.float32).max) / 1024


def log_density_bound(weights, means, variances) -> np.ndarray:
    """A bound on ``|log w_k + log N(x; μ_k, σ²_k)|`` over frames with every ``|x_d| ≤ MAX_FEATURE_MAGNITUDE``.

    It also bounds every partial sum of the product ``[x², x, 1] @ P`` that
    computes it (the sum of the terms' magnitudes is at most
    ``½ Σ_d (|x_d| + |μ_kd|)² / σ²_kd`` plus the normaliser's).

    Returns
    -------
    numpy.ndarray, shape (K,), float64; inf where it overflows float64
    """
    with np.errstate(over="ignore"):
        quadratic = 0.5 * ((MAX_FEATURE_MAGNITUDE + np.abs(means)) ** 2 / variances).sum(axis=1)
    normaliser = (np.abs(np.log(np.maximum(weights, 1e-300)))
                  + 0.5 * (means.shape[1] * LOG_2PI + np.abs(np.log(variances)).sum(axis=1)))
    return quadratic + normaliser


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
        # Variances are inverted in float32 too (the E-step's projection): a subnormal one would give inf.
        if (self.variances < SMALLEST_VARIANCE).any() or (self.weights < 0).any():
            raise ValueError("mixture has negative weights, or variances not positive or too small to invert")
        # Frames are scored in float32: finite parameters that overflow it there (means of 1e200, variances of
        # 1e-37) would make scores NaN or absurd, and the fault would surface far from the mixture that holds it.
        if not (log_density_bound(self.weights, self.means, self.variances) <= MAX_LOG_DENSITY).all():
            raise ValueError("mixture parameters are too large to evaluate in float32")

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
    """Log-sum-exp over axis 1 (float64 result): per frame, the log of its summed component densities.

    ``scipy.special.logsumexp(scores, axis=1)`` gives the same values (within
    2e-14) but took 2.5 to 4.7 times as long on scoring's arrays
    (``scripts/bench_logsumexp.py``), and scoring calls this on every chunk.
    """
    top = scores.max(axis=1, keepdims=True)
    return (top[:, 0].astype(np.float64)) + np.log(np.exp(scores - top).sum(axis=1, dtype=np.float64))
