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

import numpy as np

LOG2E = 1.4426950408889634
# Taylor coefficients of 2**r = exp(r ln 2), highest power first, for r in [-0.5, 0.5].
COEFFICIENTS = (1.5403530393381606e-4, 1.3333558146428443e-3, 9.618129107628477e-3,
                5.550410866482158e-2, 2.402265069591007e-1, 6.931471805599453e-1, 1.0)
# exp(x − max) is clamped at exp(−87): 2**−125.5 is still a normal float32.
LOWEST_EXPONENT = -87.0


def _numpy_softmax_rows(scores):
    top = scores.max(axis=1, keepdims=True)
    scores -= top
    np.exp(scores, out=scores)
    total = scores.sum(axis=1, keepdims=True)
    scores /= total
    return float(top.sum(dtype=np.float64) + np.log(total.astype(np.float64)).sum())


def _compile():
    try:
        from spkver._fused import fused_softmax_rows
    except ImportError:  # numba (or llvmlite) missing
        return None
    return fused_softmax_rows


_FUSED = None
_TRIED = False


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
    global _FUSED, _TRIED
    if not _TRIED:
        _TRIED = True
        _FUSED = _compile()
    if _FUSED is not None and scores.dtype == np.float32 and scores.flags.c_contiguous:
        return _FUSED(scores)
    return _numpy_softmax_rows(scores)
