"""The features of one utterance: MFCC and pitch (+Δ, ΔΔ), speech frames only, cepstra normalised."""

from __future__ import annotations

import numpy as np

from spkver.features.config import FeatureConfig
from spkver.features.mfcc import cepstra, deltas, spectra_blocks
from spkver.features.normalise import normalise
from spkver.features.vad import speech_mask


def extract(signal, config: FeatureConfig = FeatureConfig()):
    """Features of one utterance (:func:`extract_blocks` of a whole signal)."""
    return extract_blocks([signal], config)


def extract_blocks(blocks, config: FeatureConfig = FeatureConfig()):
    """Features of one utterance: MFCC and pitch (+Δ, ΔΔ), speech frames only, cepstra normalised.

    Parameters
    ----------
    blocks : iterable of numpy.ndarray
        Consecutive pieces of mono audio at ``config.sample_rate`` (one
        array for a whole signal); only the features are held in memory.
    config : FeatureConfig
        Settings; see :class:`FeatureConfig` for the defaults.

    Returns
    -------
    numpy.ndarray, shape (n_speech_frames, config.dim), float32
        Empty (0 rows) when the VAD finds no speech. Columns: cepstra, their
        Δ and ΔΔ (normalised by ``config.norm``); with ``config.pitch``, then
        log F0, its Δ and ΔΔ, and the aperiodicity (not normalised).
    """
    spectra = spectra_blocks(blocks, config)
    mask = speech_mask(spectra, config)
    first = cepstra(spectra.log_mel, config)
    if config.log_energy:
        first[:, 0] = spectra.energy_db
    warp_window = max(1, int(round(1000.0 * config.warp_window_s / config.hop_ms)))
    features = normalise(with_deltas(first, config)[mask], config.norm, warp_window)
    if spectra.pitch is not None:
        pitch = [with_deltas(spectra.pitch[:, :1], config), spectra.pitch[:, 1:]]
        features = np.hstack([features, *(part[mask] for part in pitch)])
    return np.ascontiguousarray(features, dtype=np.float32)


def with_deltas(static, config: FeatureConfig):
    """``static`` (n, d) with its ``config.deltas`` orders of regression deltas appended, (n, d (1 + deltas))."""
    parts = [static]
    for _ in range(config.deltas):
        parts.append(deltas(parts[-1], config.delta_window))
    return np.hstack(parts) if len(parts) > 1 else static
