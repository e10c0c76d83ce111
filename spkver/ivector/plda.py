"""Two-covariance PLDA (Ioffe 2006; Kaldi's ``ivector-compute-plda``): training by EM and LLR scoring.

An i-vector ``x`` of speaker ``s`` is ``μ + y_s + ε`` with speaker factor
``y_s ~ N(0, B)`` and session noise ``ε ~ N(0, W)``. Training finds μ, B and W
by EM on labelled i-vectors; scoring uses the transform V that makes W the
identity and B diagonal (``VᵀWV = I``, ``VᵀBV = diag(ψ)``), where the
likelihood ratio of n enrollment i-vectors against one test i-vector is a sum
over dimensions, exactly, for any n.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LOG_2PI = float(np.log(2 * np.pi))


@dataclass
class PLDA:
    """A trained two-covariance PLDA in its diagonal form.

    Attributes
    ----------
    mean : numpy.ndarray, shape (d,)
    transform : numpy.ndarray, shape (d, d)
        V: ``(x − mean) @ V`` has within-speaker covariance I and between-speaker covariance diag(ψ).
    psi : numpy.ndarray, shape (d,)
        The between-speaker variances ψ in that space, non-negative.
    """

    mean: np.ndarray
    transform: np.ndarray
    psi: np.ndarray

    def project(self, x) -> np.ndarray:
        return (np.asarray(x, dtype=np.float64) - self.mean) @ self.transform

    def llr(self, enrollment_means, counts, tests) -> np.ndarray:
        """Log-likelihood ratios, same speaker against different speakers.

        Parameters
        ----------
        enrollment_means : numpy.ndarray, shape (M, d)
            Each model's mean enrollment i-vector.
        counts : array-like, shape (M,)
            Each model's number of enrollment i-vectors.
        tests : numpy.ndarray, shape (T, d)
            One i-vector per test.

        Returns
        -------
        numpy.ndarray, shape (M, T)
        """
        u_e = self.project(np.atleast_2d(enrollment_means))
        u_t = self.project(np.atleast_2d(tests))
        n = np.asarray(counts, dtype=np.float64)[:, None]
        psi = self.psi[None, :]
        # Given the enrollments, the speaker factor is N(nψ/(nψ+1)·ū, ψ/(nψ+1)) per dimension;
        # the test adds the unit within-speaker variance.
        mean = n * psi / (n * psi + 1) * u_e  # (M, d)
        variance = psi / (n * psi + 1) + 1  # (M, d)
        same = -0.5 * (np.log(variance).sum(1)[:, None]
                       + ((u_t**2) @ (1 / variance).T).T - 2 * (mean / variance) @ u_t.T
                       + ((mean**2) / variance).sum(1)[:, None])
        other = -0.5 * (np.log(1 + self.psi).sum() + (u_t**2) @ (1 / (1 + self.psi)))
        return same - other[None, :]


def _groups(labels):
    """Indices of each distinct label, in order of first appearance."""
    order: dict = {}
    for index, label in enumerate(labels):
        order.setdefault(label, []).append(index)
    return [np.array(v) for v in order.values()]


def _covariance_form(x, groups):
    """Sample mean, and initial B and W (between speaker means, within speakers)."""
    mean = x.mean(axis=0)
    centred = x - mean
    d = x.shape[1]
    within = np.zeros((d, d))
    speaker_means = np.array([centred[g].mean(axis=0) for g in groups])
    for g, m in zip(groups, speaker_means):
        deviation = centred[g] - m
        within += deviation.T @ deviation
    within /= len(x)
    between = speaker_means.T @ speaker_means / len(groups)
    return mean, centred, between, within


def log_likelihood(x, labels, mean, between, within) -> float:
    """The marginal log-likelihood of labelled vectors under a two-covariance model (exact).

    Per speaker with n vectors of mean x̄: ``Σ_i log N(x_i; x̄, W) + log N(x̄; μ, B + W/n)
    + (d/2) log 2π + ½ log|W| − (d/2) log n``.
    """
    x = np.asarray(x, dtype=np.float64)
    d = x.shape[1]
    _, log_det_w = np.linalg.slogdet(within)
    inverse_w = np.linalg.inv(within)
    total = 0.0
    for g in _groups(labels):
        n = len(g)
        speaker_mean = x[g].mean(axis=0)
        deviation = x[g] - speaker_mean
        total += -0.5 * (n * (d * LOG_2PI + log_det_w) + np.einsum("ij,jk,ik->", deviation, inverse_w, deviation))
        covariance = between + within / n
        _, log_det = np.linalg.slogdet(covariance)
        offset = speaker_mean - mean
        total += -0.5 * (d * LOG_2PI + log_det + offset @ np.linalg.solve(covariance, offset))
        total += 0.5 * d * LOG_2PI + 0.5 * log_det_w - 0.5 * d * np.log(n)
    return float(total)


def train_plda(x, labels, *, iterations: int = 10, on_iteration=None) -> PLDA:
    """Fit a two-covariance PLDA to i-vectors ``x`` (n, d) of speakers ``labels`` (n,) by EM.

    The mean is the sample mean; B and W start from the between- and
    within-speaker scatter and each EM iteration cannot lower
    :func:`log_likelihood` (``on_iteration(step, log_likelihood)`` sees it
    before every iteration and after the last).

    Raises
    ------
    ValueError
        Fewer than two speakers, or no speaker with two or more vectors.
    """
    x = np.asarray(x, dtype=np.float64)
    groups = _groups(labels)
    if len(groups) < 2 or max(len(g) for g in groups) < 2:
        raise ValueError("PLDA needs at least two speakers and a speaker with two or more recordings")
    mean, centred, between, within = _covariance_form(x, groups)
    d = x.shape[1]
    ridge = 1e-6 * np.trace(within) / d + 1e-12  # keeps W invertible on degenerate data
    within += ridge * np.eye(d)
    between += ridge * np.eye(d)
    sums = np.array([centred[g].sum(axis=0) for g in groups])
    counts = np.array([len(g) for g in groups], dtype=np.float64)
    for step in range(iterations + 1):
        if on_iteration is not None:
            on_iteration(step, log_likelihood(x, labels, mean, between, within))
        if step == iterations:
            break
        inverse_b, inverse_w = np.linalg.inv(between), np.linalg.inv(within)
        # Posterior of each speaker's factor y: precision B⁻¹ + n W⁻¹, mean cov · W⁻¹ Σ_i (x_i − μ).
        covariances = np.linalg.inv(inverse_b[None] + counts[:, None, None] * inverse_w[None])
        factors = np.einsum("sij,sj->si", covariances, sums @ inverse_w)
        second = covariances + factors[:, :, None] * factors[:, None, :]
        new_between = second.mean(axis=0)
        # Σ_i E[(x_i − μ − y)(x_i − μ − y)ᵀ] = Σ_i x̃x̃ᵀ − Σ_s (sums_s ŷᵀ + ŷ sums_sᵀ) + Σ_s n_s E[yyᵀ]
        new_within = centred.T @ centred - sums.T @ factors - factors.T @ sums
        new_within += np.einsum("s,sij->ij", counts, second)
        new_within /= len(x)
        between = _floored(0.5 * (new_between + new_between.T), ridge)
        within = _floored(0.5 * (new_within + new_within.T), ridge)
    return diagonal_form(mean, between, within)


def _floored(covariance, ridge):
    """``covariance``, plus ``ridge`` on its diagonal only if its smallest eigenvalue is below ``ridge``.

    With fewer vectors than dimensions (length-normalised vectors lie on a
    sphere) the within-speaker scatter is singular, and W must stay
    invertible; well-determined covariances are left exact, so EM keeps
    climbing to the maximum-likelihood estimate.
    """
    if np.linalg.eigvalsh(covariance)[0] < ridge:
        return covariance + ridge * np.eye(len(covariance))
    return covariance


def diagonal_form(mean, between, within) -> PLDA:
    """The :class:`PLDA` of μ, B and W: V with ``VᵀWV = I`` and ``VᵀBV = diag(ψ)``."""
    lower = np.linalg.cholesky(within)
    inverse_lower = np.linalg.inv(lower)
    psi, rotation = np.linalg.eigh(inverse_lower @ between @ inverse_lower.T)
    order = np.argsort(-psi)
    transform = inverse_lower.T @ rotation[:, order]
    return PLDA(np.asarray(mean, dtype=np.float64), transform, np.maximum(psi[order], 0.0))
