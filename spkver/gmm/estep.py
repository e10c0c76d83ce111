"""The E-step: responsibilities of frames summed into zeroth-, first- and second-order statistics.

It is two matrix products per chunk of frames (as in Kaldi's ``DiagGmm``):
with ``z = [x², x, 1]``, every weighted log-density is ``z @ P`` for a
(2D+1) × K matrix ``P`` built once per iteration, and the statistics
``[Σγx², Σγx, Σγ]`` are ``γᵀ @ z``. Chunks keep the working set at chunk × K
whatever the number of frames; sums are kept in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spkver.errors import SpkverError
from spkver.gmm.chunks import default_chunk_size, iter_chunks
from spkver.gmm.kernels import softmax_rows
from spkver.gmm.model import GMM, augment


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
