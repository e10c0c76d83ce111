"""Per-utterance feature normalisation: cepstral mean (and variance), or feature warping."""

from __future__ import annotations

import functools
from statistics import NormalDist

import numpy as np

FEATURE_NORMS = ("cmn", "cmvn", "warp", "none")


@functools.lru_cache(maxsize=8)
def _warp_quantiles(width: int) -> np.ndarray:
    """Φ⁻¹(j / (2 width)) at index j, 1 ≤ j < 2 width: every value (r + 0.5) / width takes (r a half-integer rank).

    A table from the standard library's inverse CDF keeps scipy off the scoring path.
    """
    normal = NormalDist()
    return np.array([0.0] + [normal.inv_cdf(j / (2 * width)) for j in range(1, 2 * width)], dtype=np.float32)


def _rank_indices(x) -> np.ndarray:
    """For each value of ``x`` (n, dim), ``2 below + ties + 1`` within its column (``ties`` counting the
    value itself): the quantile index of :func:`warp` when the window is the whole column.

    Sorted, a run of equal values spans positions [first, end): each has ``below = first`` and
    ``ties + 1 = end - first``, so its index is ``first + end``.
    """
    n = len(x)
    order = np.argsort(x, axis=0, kind="stable")
    ordered = np.take_along_axis(x, order, axis=0)
    position = np.arange(n)[:, None]
    differs = ordered[1:] != ordered[:-1]
    starts = np.vstack([np.ones((1, x.shape[1]), bool), differs])
    ends = np.vstack([differs, np.ones((1, x.shape[1]), bool)])
    first = np.maximum.accumulate(np.where(starts, position, 0), axis=0)
    end = np.minimum.accumulate(np.where(ends, position + 1, n)[::-1], axis=0)[::-1]
    indices = np.empty(x.shape, dtype=np.intp)
    np.put_along_axis(indices, order, first + end, axis=0)
    return indices


def warp(features, window=301, block=32, out=None):
    """Feature warping: each value → the standard-normal quantile of its rank in a sliding window.

    Pelecanos and Sridharan (2001): within ``window`` frames centred on frame t
    (shifted to stay inside the utterance; the whole utterance when it is
    shorter), a value whose rank is r (ties counted half) becomes
    ``Φ⁻¹((r + 0.5) / window)``. Each dimension ends up standard normal over
    any stretch of ``window`` frames, whatever the channel did to it.

    Parameters
    ----------
    features : numpy.ndarray, shape (n_frames, dim)
    window : int
        Frames in the sliding window (301: 3 s at a 10 ms hop).
    out : numpy.ndarray, shape (n_frames, dim), float32, optional
        Where to write the result (a new array by default).

    Returns
    -------
    numpy.ndarray, shape (n_frames, dim), float32
    """
    x = np.asarray(features, dtype=np.float32)
    n = len(x)
    out = np.empty(x.shape, dtype=np.float32) if out is None else out
    if n == 0:
        return out
    width = min(window, n)
    quantiles = _warp_quantiles(width)
    if n <= window:  # one window, the whole utterance: ranks by sorting, not by comparing every pair
        out[...] = quantiles[_rank_indices(x)]
        return out
    # (n - width + 1, dim, width): window j starts at frame j.
    windows = np.lib.stride_tricks.sliding_window_view(x, width, axis=0)
    for start in range(0, n, block):
        stop = min(start + block, n)
        first = np.clip(np.arange(start, stop) - width // 2, 0, n - width)
        # Away from the ends consecutive frames have consecutive windows: a slice of the view, not a copy.
        spans = windows[first[0]:first[-1] + 1] if first[-1] - first[0] == stop - start - 1 else windows[first]
        values = x[start:stop, :, None]
        # 2 below + ties + 1, the frame itself among the ties: the index of its quantile.
        out[start:stop] = quantiles[2 * (spans < values).sum(axis=2) + (spans == values).sum(axis=2)]
    return out


def normalise(features, mode="cmn", warp_window=301, out=None):
    """Per-utterance normalisation: cepstral mean (``cmn``), mean and variance (``cmvn``),
    feature warping over ``warp_window`` frames (``warp``, :func:`warp`) or ``none``.

    With ``out`` (float32, the shape of ``features``) the result is written there, so several
    normalisations of one long recording need no copies; otherwise ``none`` returns ``features``.
    """
    if out is None:
        if mode == "none" or len(features) == 0:
            return features
        out = np.empty(np.shape(features), dtype=np.float32)
    if mode == "warp":
        return warp(features, warp_window, out=out)
    if mode == "none" or len(features) == 0:
        out[...] = features
        return out
    # float32 in place; other input in its own precision, rounded once into ``out``.
    centred = np.subtract(features, features.mean(axis=0, keepdims=True),
                          out=out if features.dtype == np.float32 else None)
    if mode == "cmvn":
        centred /= np.maximum(features.std(axis=0, keepdims=True), 1e-5)
    if centred is not out:
        out[...] = centred
    return out
