"""Baum-Welch statistics of utterances against a UBM, centred and whitened for factor analysis.

For utterance ``u`` and component ``k`` with frame posteriors ``γ_tk``:
``N_uk = Σ_t γ_tk`` and ``F̃_uk = (Σ_t γ_tk x_t − N_uk μ_k) / σ_k``. In this
space the UBM covariances are the identity, so the total-variability model
needs neither means nor variances again (as in Kaldi's and SIDEKIT's
extractors). One row per utterance: ``[N_u1 … N_uK, F̃_u1 … F̃_uK]``, K·(1+D) values.
"""

from __future__ import annotations

import numpy as np

from spkver.errors import SpkverError
from spkver.gmm.chunks import default_chunk_size, iter_chunks
from spkver.gmm.kernels import softmax_rows
from spkver.gmm.model import GMM, augment


def raw_statistics(gmm: GMM, frames, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Zeroth- and first-order statistics of one utterance, ``N`` (K,) and ``F = Σ_t γ_t x_t`` (K, D), float64.

    Posteriors come from the E-step's product and softmax (in ``dtype``);
    the first-order sums are float64.
    """
    k, d = gmm.n_components, gmm.dim
    projection = gmm.projection(dtype)
    zeroth, first = np.zeros(k), np.zeros((k, d))
    for block in iter_chunks([frames], default_chunk_size(k)):
        posteriors = augment(block, dtype) @ projection
        softmax_rows(posteriors)
        zeroth += posteriors.sum(axis=0, dtype=np.float64)
        first += posteriors.T.astype(np.float64) @ np.asarray(block, dtype=np.float64)
    return zeroth, first


def normalise_statistics(gmm: GMM, zeroth, first) -> np.ndarray:
    """Rows ``[N, F̃]`` from raw statistics: ``zeroth`` (U, K), ``first`` (U, K, D) → (U, K·(1+D)) float64.

    ``F̃_k = (F_k − N_k μ_k) / σ_k``: centred on the UBM means, whitened by its deviations.
    """
    zeroth = np.atleast_2d(np.asarray(zeroth, dtype=np.float64))
    first = np.asarray(first, dtype=np.float64).reshape(len(zeroth), gmm.n_components, gmm.dim)
    centred = (first - zeroth[:, :, None] * gmm.means) / np.sqrt(gmm.variances)
    return np.hstack([zeroth, centred.reshape(len(zeroth), -1)])


def utterance_statistics(gmm: GMM, frames) -> np.ndarray:
    """The statistics row ``[N, F̃]`` of one utterance's frames (n, D), shape (K·(1+D),), float64."""
    zeroth, first = raw_statistics(gmm, frames)
    row = normalise_statistics(gmm, zeroth[None], first[None])[0]
    if not np.isfinite(row).all():  # the guard on statistics, where made
        raise SpkverError("statistics are not finite: the features hold non-finite or absurd values")
    return row


def statistics_rows(gmm: GMM, arrays, out=None) -> np.ndarray:
    """Statistics rows of many utterances, (U, K·(1+D)); written into ``out`` (e.g. a memory map) if given.

    Rows are computed one utterance at a time, so memory beyond ``out`` is one
    utterance's posteriors.
    """
    width = gmm.n_components * (1 + gmm.dim)
    if out is None:
        out = np.empty((len(arrays), width), dtype=np.float64)
    for index, frames in enumerate(arrays):
        out[index] = utterance_statistics(gmm, frames)
    return out
