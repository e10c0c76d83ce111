"""i-vector post-processing: centring, LDA, WCCN and length normalisation, and cosine scoring.

Each is fitted on the training i-vectors (labels where needed) and applied
as an affine map; length normalisation (Garcia-Romero & Espy-Wilson 2011)
scales each vector to length √d, which makes i-vectors closer to Gaussian
as PLDA assumes.
"""

from __future__ import annotations

import numpy as np


def class_scatter(x, labels) -> tuple[np.ndarray, np.ndarray]:
    """Within-class and between-class covariances of ``x`` (n, d) with ``labels`` (n,): each (d, d).

    Within: the average over vectors of the deviation from their class mean;
    between: the average over classes of the class mean's deviation from the
    overall mean.
    """
    x = np.asarray(x, dtype=np.float64)
    labels = np.asarray(labels)
    mean = x.mean(axis=0)
    d = x.shape[1]
    within, between = np.zeros((d, d)), np.zeros((d, d))
    classes = np.unique(labels)
    for label in classes:
        members = x[labels == label]
        class_mean = members.mean(axis=0)
        deviation = members - class_mean
        within += deviation.T @ deviation
        between += np.outer(class_mean - mean, class_mean - mean)
    return within / len(x), between / len(classes)


def lda(x, labels, dim: int) -> np.ndarray:
    """LDA projection (d, dim): the directions of largest between- to within-class variance.

    Solves ``S_b v = λ S_w v`` (within-class scatter regularised by 1e-6 of its
    trace); columns are scaled so that the projected within-class covariance is
    the identity.
    """
    from scipy.linalg import eigh

    within, between = class_scatter(x, labels)
    d = within.shape[0]
    if not 1 <= dim <= d:
        raise ValueError(f"LDA dimension must be between 1 and {d}")
    within = within + 1e-6 * np.trace(within) / d * np.eye(d)
    values, vectors = eigh(between, within)
    return vectors[:, np.argsort(-values)[:dim]]


def wccn(x, labels) -> np.ndarray:
    """WCCN projection (d, d): ``B`` with ``BBᵀ = W⁻¹``, W the within-class covariance (Hatch et al. 2006)."""
    within, _ = class_scatter(x, labels)
    d = within.shape[0]
    # Regularised against the data's total spread: the within-class scatter itself may be zero
    # (one dimension after LDA, length-normalised to ±1).
    spread = np.trace(np.atleast_2d(np.cov(np.asarray(x, dtype=np.float64).T, bias=True))) / d
    within = within + (1e-6 * np.trace(within) / d + 1e-12 * spread + 1e-300) * np.eye(d)
    return np.linalg.cholesky(np.linalg.inv(within))


def length_normalise(x) -> np.ndarray:
    """Each row scaled to length √d (d its dimension); a zero row stays zero."""
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x * (np.sqrt(x.shape[1]) / np.where(norms > 0, norms, 1.0))


def cosine_scores(enrollments, tests) -> np.ndarray:
    """Cosine similarity of every enrollment (M, d) with every test (T, d): (M, T)."""
    a, b = np.atleast_2d(enrollments), np.atleast_2d(tests)
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-300)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-300)
    return a @ b.T
