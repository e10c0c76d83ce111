"""Compiled inner loop of the E-step: per-frame max, exp, sum and normalisation in one pass.

numpy's float32 max, ``exp`` and sum cost about 3 ns per element on AVX2
CPUs, a quarter of the E-step. This loop (numba, already installed with librosa)
computes ``exp(t)`` as ``2**n · p(r)``: ``p`` a degree-6 polynomial of the
remainder ``r ∈ (−½, ½]``, and ``2**n`` built directly in the float's
exponent bits. Two LLVM intrinsics make every loop vectorisable (numba's own
``max`` branches on NaN, and numba has no bit-cast): the whole softmax costs
about 0.5 ns per element (``scripts/bench_em.py --kernel-only``).
Relative error is below 1e-5, the float32 rounding of the shifted
log-densities themselves. Without numba, :func:`softmax_rows` uses numpy.
"""

from __future__ import annotations

import functools

import numpy as np

# Posteriors below 2**-66 (1.4e-20) become 0. Such a posterior changes no float32 sum, but its
# products with the features can fall below the smallest normal float32, and on Intel cores every
# subnormal result takes a microcode assist: the statistics' product γᵀ·[x², x, 1] ran 10 to 160
# times slower on chunks with such posteriors (Xeon, OpenBLAS), and the E-step at 5% of GEMM.
POSTERIOR_FLOOR = 2.0**-66


def _numpy_softmax_rows(scores):
    top = scores.max(axis=1, keepdims=True)
    scores -= top
    np.exp(scores, out=scores)
    total = scores.sum(axis=1, keepdims=True)
    scores /= total
    scores[scores < POSTERIOR_FLOOR] = 0
    return float(top.sum(dtype=np.float64) + np.log(total.astype(np.float64)).sum())


@functools.cache
def compiled_softmax_rows():
    """The compiled kernel, imported at its first use (numba takes a second to import); None without numba."""
    try:
        from spkver.gmm._fused import fused_softmax_rows
    except ImportError:  # numba (or llvmlite) missing
        return None
    return fused_softmax_rows


def softmax_rows(scores) -> float:
    """Posteriors from log-densities, in place: ``scores[i] ← softmax(scores[i])``.

    Parameters
    ----------
    scores : numpy.ndarray, (N, K), C-contiguous
        Log-densities of N frames against K components (float32 takes the
        compiled path).

    Returns
    -------
    float
        ``Σ_i log Σ_j exp(scores[i, j])`` in float64: the frames' total log-likelihood.
    """
    kernel = compiled_softmax_rows()
    if kernel is not None and scores.dtype == np.float32 and scores.flags.c_contiguous:
        return kernel(scores, np.float32(POSTERIOR_FLOOR))
    return _numpy_softmax_rows(scores)
