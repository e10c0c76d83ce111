"""Fundamental frequency of each analysis frame: the YIN estimator (de Cheveigné and Kawahara 2002).

A speaker's pitch is a cue that cepstra after mean normalisation keep only
indirectly, and one that no channel changes; :func:`yin` gives it frame by
frame from the same centred frames as the spectra. Pure functions over
arrays; checked against ``librosa.yin`` and against synthetic voices of known
pitch (tests/test_pitch.py).
"""

from __future__ import annotations

import numpy as np

# YIN's absolute threshold on the normalised difference: the first dip below it is the period.
YIN_THRESHOLD = 0.1


def difference_function(frames, max_period, window):
    """YIN's squared difference ``d(τ) = Σ_{j<W} (x_j − x_{j+τ})²`` for τ = 0 … ``max_period``.

    Parameters
    ----------
    frames : numpy.ndarray, shape (n_frames, frame_length)
        Needs ``frame_length >= window + max_period``.
    max_period : int
        Largest lag, samples.
    window : int
        Integration window W, samples.

    Returns
    -------
    numpy.ndarray, shape (n_frames, max_period + 1), float64
    """
    x = np.asarray(frames, dtype=np.float64)[:, : window + max_period]
    size = 1 << (x.shape[1] - 1).bit_length()  # lags up to max_period of a W-sample window never wrap
    # r(τ) = Σ_{j<W} x_j x_{j+τ}: the frame correlated with its own first W samples, by FFT.
    correlation = np.fft.irfft(np.conj(np.fft.rfft(x[:, :window], size)) * np.fft.rfft(x, size), size)
    energy = np.zeros((len(x), x.shape[1] + 1))
    np.cumsum(x * x, axis=1, out=energy[:, 1:])
    shifted_energy = energy[:, window : window + max_period + 1] - energy[:, : max_period + 1]  # Σ_{j<W} x_{j+τ}²
    return np.maximum(shifted_energy[:, :1] + shifted_energy - 2.0 * correlation[:, : max_period + 1], 0.0)


def normalised_difference(difference):
    """YIN's cumulative-mean-normalised difference ``d'(τ) = d(τ) τ / Σ_{k=1..τ} d(k)``, ``d'(0) = 1``.

    Where the differences are rounding noise against the frame's energy
    (``d(0)`` is 0, so that is taken from the largest), as in digital silence
    or a constant offset, ``d'`` is 1: no periodicity.
    """
    lags = np.arange(difference.shape[1])
    cumulative = np.cumsum(difference[:, 1:], axis=1)
    scale = difference.max(axis=1, keepdims=True)
    out = np.ones_like(difference)
    safe = cumulative > 1e-9 * scale * lags[1:]
    out[:, 1:] = np.where(safe, difference[:, 1:] * lags[1:] / np.where(safe, cumulative, 1.0), 1.0)
    return out


def yin(frames, sample_rate, fmin=60.0, fmax=400.0, threshold=YIN_THRESHOLD):
    """Fundamental frequency and aperiodicity of each frame (YIN).

    The period is the first lag in ``[sample_rate / fmax, sample_rate / fmin]``
    whose normalised difference dips below ``threshold`` (the bottom of that
    dip), else the lag of its minimum, refined by parabolic interpolation.
    Unvoiced frames get a frequency too (the best the frame offers) with a
    high aperiodicity, as YIN and ``librosa.yin`` do.

    Parameters
    ----------
    frames : numpy.ndarray, shape (n_frames, frame_length)
        Centred analysis frames; the integration window is what is left of a
        frame after the longest period (at least that period is needed).
    sample_rate : int
    fmin, fmax : float
        Search range, Hz: 60-400 Hz covers adult and child voices.
    threshold : float
        YIN's absolute threshold, 0.1.

    Returns
    -------
    f0 : numpy.ndarray, shape (n_frames,), float64
        Hz, within [fmin, fmax] up to the interpolation.
    aperiodicity : numpy.ndarray, shape (n_frames,), float64
        The normalised difference at the period: near 0 for a periodic
        (voiced) frame, near 1 for noise or silence.
    """
    frames = np.asarray(frames)
    frame_length = frames.shape[1]
    min_period = max(2, int(np.floor(sample_rate / fmax)))
    max_period = min(int(np.ceil(sample_rate / fmin)), frame_length // 2)
    if len(frames) == 0 or max_period <= min_period:
        return np.full(len(frames), float(fmax)), np.ones(len(frames))
    window = frame_length - max_period - 1  # one lag beyond the longest period, for the interpolation
    dprime = normalised_difference(difference_function(frames, max_period + 1, window))
    search = dprime[:, min_period : max_period + 1]
    below = search < threshold
    # First lag below the threshold, then down to the bottom of its dip; else the global minimum.
    first = np.where(below.any(axis=1), below.argmax(axis=1), search.argmin(axis=1))
    rising = np.concatenate([search[:, 1:] > search[:, :-1], np.ones((len(search), 1), bool)], axis=1)
    rising &= np.arange(search.shape[1])[None, :] >= first[:, None]
    bottom = np.where(below.any(axis=1), rising.argmax(axis=1), first)
    period = (bottom + min_period).astype(np.float64)
    rows = np.arange(len(dprime))
    lag = bottom + min_period
    left, centre, right = dprime[rows, lag - 1], dprime[rows, lag], dprime[rows, lag + 1]
    curvature = left - 2.0 * centre + right
    shift = np.where(curvature > 0, 0.5 * (left - right) / np.where(curvature > 0, curvature, 1.0), 0.0)
    period += np.clip(shift, -1.0, 1.0)
    return sample_rate / period, np.clip(centre, 0.0, None)
