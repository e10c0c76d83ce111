"""Per-utterance feature normalisation: cepstral mean (and variance), or feature warping."""

from __future__ import annotations

import numpy as np

FEATURE_NORMS = ("cmn", "cmvn", "warp", "none")


def warp(features, window=301, block=64):
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

    Returns
    -------
    numpy.ndarray, shape (n_frames, dim), float32
    """
    from scipy.special import ndtri

    x = np.asarray(features, dtype=np.float32)
    n = len(x)
    if n == 0:
        return x.copy()
    width = min(window, n)
    out = np.empty(x.shape, dtype=np.float32)
    # (n - width + 1, dim, width): window j starts at frame j.
    windows = np.lib.stride_tricks.sliding_window_view(x, width, axis=0)
    for start in range(0, n, block):
        t = np.arange(start, min(start + block, n))
        first = np.clip(t - width // 2, 0, n - width)
        values = x[t][:, :, None]
        below = (windows[first] < values).sum(axis=2)
        ties = (windows[first] == values).sum(axis=2) - 1
        out[t] = ndtri((below + 0.5 * ties + 0.5) / width)
    return out


def normalise(features, mode="cmn", warp_window=301):
    """Per-utterance normalisation: cepstral mean (``cmn``), mean and variance (``cmvn``),
    feature warping over ``warp_window`` frames (``warp``, :func:`warp`) or ``none``."""
    if mode == "none" or len(features) == 0:
        return features
    if mode == "warp":
        return warp(features, warp_window)
    out = features - features.mean(axis=0, keepdims=True)
    if mode == "cmvn":
        out /= np.maximum(features.std(axis=0, keepdims=True), 1e-5)
    return out.astype(np.float32, copy=False)
