"""The features of one utterance: MFCC (+Δ, ΔΔ), speech frames only, normalised."""

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
    """Features of one utterance: MFCC (+Δ, ΔΔ), speech frames only, normalised.

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
        Empty (0 rows) when the VAD finds no speech.
    """
    spectra = spectra_blocks(blocks, config)
    mask = speech_mask(spectra, config)
    parts = [cepstra(spectra.log_mel, config)]
    if config.log_energy:
        parts[0][:, 0] = spectra.energy_db
    del spectra
    for _ in range(config.deltas):
        parts.append(deltas(parts[-1], config.delta_window))
    features = np.hstack(parts) if len(parts) > 1 else parts[0]
    warp_window = max(1, int(round(1000.0 * config.warp_window_s / config.hop_ms)))
    return np.ascontiguousarray(normalise(features[mask], config.norm, warp_window), dtype=np.float32)
