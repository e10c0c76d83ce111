"""Verification scores: average per-frame log-likelihood ratio against the UBM."""

from __future__ import annotations

import numpy as np

from spkver.gmm import GMM, augment, iter_chunks, logsumexp_rows


def _gathered_log_densities(projection_t, z, top):
    """``log w_c + log N(x_n; c)`` of the listed components ``top`` (N, C) for each frame."""
    return np.matmul(projection_t[top], z[:, :, None])[:, :, 0]


def llr_scores(ubm: GMM, speakers, frames, top_c: int = 5, chunk_size: int = 4096):
    """Average log-likelihood ratio of ``frames`` for each speaker model.

    ``score = mean_n [log p(x_n | speaker) − log p(x_n | UBM)]``.

    Parameters
    ----------
    ubm : GMM
    speakers : list of GMM
        Models adapted from ``ubm`` (same component order).
    frames : numpy.ndarray, (N, D)
    top_c : int
        Fast scoring (Reynolds 2000): only the ``top_c`` best UBM components
        of each frame are evaluated, in both the UBM and the speaker models.
        0 (or ≥ K) sums over every component.

    Returns
    -------
    numpy.ndarray, shape (len(speakers),)
        Scores; NaN when ``frames`` is empty.
    """
    if len(frames) == 0:
        return np.full(len(speakers), np.nan)
    totals = np.zeros(len(speakers))
    full = top_c <= 0 or top_c >= ubm.n_components
    ubm_p32 = ubm.projection(np.float32)
    ubm_t64 = np.ascontiguousarray(ubm.projection(np.float64).T)
    speaker_p = [np.ascontiguousarray(s.projection(np.float64).T) for s in speakers]
    for block in iter_chunks([frames], chunk_size):
        z = augment(block, np.float64)
        if full:
            ubm_ll = logsumexp_rows(z @ ubm_t64.T)
            for i, pt in enumerate(speaker_p):
                totals[i] += float((logsumexp_rows(z @ pt.T) - ubm_ll).sum())
            continue
        # Rank in float32 (one GEMM), then evaluate the chosen few in float64.
        ranks = z.astype(np.float32) @ ubm_p32
        top = np.argpartition(-ranks, top_c - 1, axis=1)[:, :top_c]
        ubm_ll = logsumexp_rows(_gathered_log_densities(ubm_t64, z, top))
        for i, pt in enumerate(speaker_p):
            totals[i] += float((logsumexp_rows(_gathered_log_densities(pt, z, top)) - ubm_ll).sum())
    return totals / len(frames)
