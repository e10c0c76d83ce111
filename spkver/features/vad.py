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
    return evidence_of_ratios(10.0 ** (excess / 10.0))


def evidence_of_ratios(ratios):
    """:func:`speech_evidence` of band powers given over the noise's, (..., n_bands): the mean of ``γ − 1 − ln γ``
    with ``γ`` the ratio floored at 1."""
    gamma = np.maximum(ratios, 1.0)
    return (gamma - 1.0 - np.log(gamma)).mean(axis=-1)


def runs(mask):
    """Start and stop indices and values of the runs of equal values in a boolean array (not empty)."""
    change = np.flatnonzero(mask[1:] != mask[:-1]) + 1
    starts = np.concatenate([[0], change])
    stops = np.concatenate([change, [len(mask)]])
    return starts, stops, mask[starts]


# Edge growth (step 3 of spectral_speech_mask): the share of the noise's own blocks let through, and the frames
# that make the noise reference (at least 15 frames, 150 ms at the default hop, from speech). With fewer noise
# blocks than 1 / GROW_FALSE_ALARMS (2 s of noise) nothing grows: trimmed clips keep their margins from the
# pause bridging instead.
GROW_FALSE_ALARMS = 0.005
GROW_GUARD_FRAMES = 15
# Noise blocks that set each threshold, at most (evenly spread): 50 above the quantile, and work and memory that
# do not grow with the recording.
GROW_NOISE_BLOCKS = 10_000
# Frames of log-mel turned into power at a time, for the noise's mean.
_POWER_CHUNK = 1 << 16


def grown_regions(mask, log_mel, max_frames):
    """``mask`` with each speech region grown outward over the frames beside it that do not sound like the noise.

    A word's weak edge (a fricative at the noise's level in its own bands) does
    not stand out frame by frame, but a block of its frames does. The noise
    is the frames at least :data:`GROW_GUARD_FRAMES` from speech. For each
    length L up to ``max_frames``, the L frames beyond a region's edge pass
    when the evidence of their mean power over the noise's mean
    (:func:`evidence_of_ratios`, as :func:`speech_evidence`) exceeds the
    ``1 −`` :data:`GROW_FALSE_ALARMS` quantile of the same statistic over the
    noise's own blocks of L frames, and the longest passing block is taken
    (so a region can overshoot a weak edge by a frame or two).
    Growth stops at the next region, and nothing grows with fewer than
    ``1 / GROW_FALSE_ALARMS`` noise frames.

    Parameters
    ----------
    mask : numpy.ndarray of bool, shape (n_frames,)
    log_mel : numpy.ndarray, shape (n_frames, n_bands)
        The detector's log-mel energies, dB.
    max_frames : int

    Returns
    -------
    numpy.ndarray of bool, shape (n_frames,)
    """
    n = len(mask)
    if max_frames < 1 or not mask.any():
        return mask
    speech_count = np.concatenate([[0], np.cumsum(mask)])
    window = np.arange(n)
    quiet = (speech_count[np.minimum(window + GROW_GUARD_FRAMES + 1, n)]
             - speech_count[np.maximum(window - GROW_GUARD_FRAMES, 0)]) == 0
    noise_starts = np.flatnonzero(quiet)
    if len(noise_starts) < 1 / GROW_FALSE_ALARMS:
        return mask

    def power(rows):  # of the frames ``rows``, float64 (log-mel stays the only full-length array)
        return 10.0 ** (np.asarray(log_mel[rows], dtype=np.float64) / 10.0)

    noise_total = sum(power(noise_starts[i:i + _POWER_CHUNK]).sum(axis=0)
                      for i in range(0, len(noise_starts), _POWER_CHUNK))
    noise_power = noise_total / len(noise_starts)
    noise_starts = noise_starts[np.linspace(0, len(noise_starts) - 1, min(len(noise_starts), GROW_NOISE_BLOCKS),
                                            dtype=int)]
    quiet_count = np.concatenate([[0], np.cumsum(quiet)])
    starts, stops, speech = runs(mask)
    starts, stops = starts[speech], stops[speech]
    edges = {-1: starts, 1: stops}  # where each region ends on either side (its first frame, one past its last)
    room = {-1: np.minimum(starts - np.concatenate([[0], stops[:-1]]), max_frames),
            1: np.minimum(np.concatenate([starts[1:], [n]]) - stops, max_frames)}
    sums = {side: np.zeros((len(starts), log_mel.shape[1])) for side in edges}
    grow = {side: np.zeros(len(starts), dtype=int) for side in edges}
    noise_sums = np.zeros((len(noise_starts), log_mel.shape[1]))
    for length in range(1, max_frames + 1):
        whole = quiet_count[np.minimum(noise_starts + length, n)] - quiet_count[noise_starts] == length
        noise_starts, noise_sums = noise_starts[whole], noise_sums[whole]
        if len(noise_starts) < 1 / GROW_FALSE_ALARMS:
            break  # too few to set a threshold, and longer blocks are fewer still
        noise_sums += power(noise_starts + length - 1)
        threshold = np.quantile(evidence_of_ratios(noise_sums / (length * noise_power)), 1 - GROW_FALSE_ALARMS)
        for side, first in edges.items():
            fits = np.flatnonzero(room[side] >= length)
            if not len(fits):
                continue
            frame = first[fits] - length if side < 0 else first[fits] + length - 1
            sums[side][fits] += power(frame)
            passing = evidence_of_ratios(sums[side][fits] / (length * noise_power)) > threshold
            grow[side][fits[passing]] = length
    grown = mask.copy()
    for start, stop, before, after in zip(starts, stops, grow[-1], grow[1]):
        grown[start - before:stop + after] = True
    return grown


def spectral_speech_mask(log_mel, threshold=2.0, min_pause_frames=20, grow_frames=10):
    """Speech frames by per-band excess over the recording's noise floor (the ``spectral`` VAD).

    1. Each band's noise floor is a low percentile of its level
       (:func:`band_noise_floor`), and each frame's evidence of speech is
       :func:`speech_evidence`, averaged over 3 frames.
    2. Hysteresis: a region where the evidence exceeds ``threshold / 2`` is
       speech if its evidence somewhere exceeds ``threshold``, so word edges
       and weak consonants next to vowels stay, and noise seldom starts a region.
    3. Each region grows outward by up to ``grow_frames`` over frames that,
       taken together, do not sound like the noise (:func:`grown_regions`):
       weak word edges that no single frame shows.
    4. Pauses shorter than ``min_pause_frames`` (also at the start and end)
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
    starts, stops, above = runs(evidence > threshold / 2)
    mask = np.zeros(n, dtype=bool)
    strong = np.concatenate([[0], np.cumsum(evidence > threshold)])
    for start, stop, value in zip(starts, stops, above):
        if value and strong[stop] > strong[start]:
            mask[start:stop] = True
    mask = grown_regions(mask, log_mel, grow_frames)
    if mask.any():
        starts, stops, speech = runs(mask)
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
                                    int(round(config.vad_min_pause_ms / config.hop_ms)),
                                    int(round(config.vad_grow_ms / config.hop_ms)))
        if mask.any():
            return mask
    return energy_speech_mask(spectra.energy_db, config.vad_range_db, config.vad_floor_db)
