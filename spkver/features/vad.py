"""Voice-activity detection: which frames of an utterance are speech (spectral or energy rule)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from spkver.features.config import FeatureConfig
    from spkver.features.mfcc import Spectra


def energy_speech_mask(energy_db, range_db=30.0, floor_db=-65.0):
    """Frames whose energy is within ``range_db`` of the loudest and above ``floor_db`` (the ``energy`` VAD).

    spkver's rule before version 0.3, kept for models trained with it. The
    loudest frame of a clip above the floor is always kept, so a short voiced
    clip never loses every frame; silence loses them all.
    """
    energy_db = np.asarray(energy_db)
    if energy_db.size == 0:
        return np.zeros(0, dtype=bool)
    threshold = max(float(energy_db.max()) - range_db, floor_db)
    return energy_db >= threshold


# Per-band noise floor: this percentile of each band's level over the recording. A tenth of the
# frames must be pauses for it to be the noise; with less, it is the quietest speech, and the
# pause bridging below keeps short quiet stretches anyway.
NOISE_FLOOR_PERCENTILE = 10.0


# Frames with log-mel at or below 1e-10 (-100 dB) are digital silence; the floor never goes lower.
SILENCE_DB = -100.0


def band_noise_floor(log_mel, percentile=NOISE_FLOOR_PERCENTILE):
    """Noise level of each mel band, dB: a low percentile of the band over the recording.

    Parameters
    ----------
    log_mel : numpy.ndarray, shape (n_frames, n_mels)
        Log-mel energies in dB (before any ``top_db`` flooring).

    Returns
    -------
    numpy.ndarray, shape (n_mels,)
    """
    return np.maximum(np.percentile(log_mel, percentile, axis=0), SILENCE_DB)


def speech_evidence(log_mel, floor_db):
    """Per-frame evidence of speech: the mean over bands of a likelihood ratio against the noise floor.

    With ``γ`` a band's power over its noise power (at least 1), each band
    contributes ``γ − 1 − ln γ``, the log-likelihood ratio of "speech plus
    noise" against "noise" for a Gaussian band with the a-priori SNR set to
    its maximum-likelihood value ``γ − 1`` (Sohn, Kim and Sung 1999). It grows
    with the excess over the floor in every band, so speech is found where it
    stands out in some bands, even when noise fills the others.

    Returns
    -------
    numpy.ndarray, shape (n_frames,), float64
    """
    excess = np.maximum(np.asarray(log_mel, dtype=np.float64) - floor_db, 0.0)
    gamma = 10.0 ** (excess / 10.0)
    return (gamma - 1.0 - np.log(gamma)).mean(axis=1)


def _runs(mask):
    """Start and stop indices and values of the runs of equal values in a boolean array."""
    change = np.flatnonzero(mask[1:] != mask[:-1]) + 1
    starts = np.concatenate([[0], change])
    stops = np.concatenate([change, [len(mask)]])
    return starts, stops, mask[starts]


def spectral_speech_mask(log_mel, threshold=2.0, min_pause_frames=20):
    """Speech frames by per-band excess over the recording's noise floor (the ``spectral`` VAD).

    1. Each band's noise floor is a low percentile of its level
       (:func:`band_noise_floor`), and each frame's evidence of speech is
       :func:`speech_evidence`, averaged over 3 frames.
    2. Hysteresis: a region where the evidence exceeds ``threshold / 2`` is
       speech if its evidence somewhere exceeds ``threshold``, so word edges
       and weak consonants next to vowels stay, and noise seldom starts a region.
    3. Pauses shorter than ``min_pause_frames`` (also at the start and end)
       are kept: stop closures, short gaps between words and the margins of
       trimmed clips are part of speech.

    Returns
    -------
    numpy.ndarray of bool, shape (n_frames,)
        All False when nothing stands out (silence, or steady noise).
    """
    n = len(log_mel)
    if n == 0:
        return np.zeros(0, dtype=bool)
    evidence = speech_evidence(log_mel, band_noise_floor(log_mel))
    if n >= 3:
        padded = np.concatenate([evidence[:1], evidence, evidence[-1:]])
        evidence = (padded[:-2] + padded[1:-1] + padded[2:]) / 3.0
    starts, stops, above = _runs(evidence > threshold / 2)
    mask = np.zeros(n, dtype=bool)
    strong = np.concatenate([[0], np.cumsum(evidence > threshold)])
    for start, stop, value in zip(starts, stops, above):
        if value and strong[stop] > strong[start]:
            mask[start:stop] = True
    if mask.any():
        starts, stops, speech = _runs(mask)
        for start, stop, value in zip(starts, stops, speech):
            if not value and stop - start < min_pause_frames:
                mask[start:stop] = True
    return mask


def speech_mask(spectra: Spectra, config: FeatureConfig):
    """The speech frames of an utterance by ``config.vad``; all frames when it is ``"none"``.

    The ``spectral`` detector (default) falls back to the ``energy`` rule when it
    finds nothing, so a voiced clip without pauses (nothing to estimate the noise
    from) keeps its frames; silence and quiet noise keep none.
    """
    if config.vad == "none":
        return np.ones(len(spectra.energy_db), dtype=bool)
    if config.vad == "spectral":
        mask = spectral_speech_mask(spectra.vad_log_mel, config.vad_threshold,
                                    int(round(config.vad_min_pause_ms / config.hop_ms)))
        if mask.any():
            return mask
    return energy_speech_mask(spectra.energy_db, config.vad_range_db, config.vad_floor_db)
