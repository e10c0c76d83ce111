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
        Empty (0 rows) when the VAD finds no speech. Columns, for each
        normalisation of ``config.norms`` (a system, ``config.views``): the
        cepstra, their Δ and ΔΔ, normalised that way; with ``config.pitch``,
        then log F0, its Δ and ΔΔ, and the aperiodicity (not normalised).
    """
    spectra = spectra_blocks(blocks, config)
    mask = speech_mask(spectra, config)
    first = cepstra(spectra.log_mel, config)
    if config.log_energy:
        first[:, 0] = spectra.energy_db
    warp_window = max(1, int(round(1000.0 * config.warp_window_s / config.hop_ms)))
    cepstral = with_deltas(first, config)[mask]
    pitch = None
    if spectra.pitch is not None:
        pitch = np.hstack([with_deltas(spectra.pitch[:, :1], config), spectra.pitch[:, 1:]])[mask]
    del spectra, first  # every frame's spectra: an hour of audio's are 150 MB, no longer needed
    # One block per system (config.views): its cepstra normalised its way, then the pitch columns, written
    # in place, so that an hour of audio holds its speech frames' cepstra and its features at most.
    features = np.empty((len(cepstral), config.dim), dtype=np.float32)
    width = cepstral.shape[1]
    for view, norm in zip(config.views, config.norms):
        normalise(cepstral, norm, warp_window, out=features[:, view.start:view.start + width])
        if pitch is not None:
            features[:, view.start + width:view.stop] = pitch
    return features


def with_deltas(static, config: FeatureConfig):
    """``static`` (n, d) with its ``config.deltas`` orders of regression deltas appended, (n, d (1 + deltas))."""
    parts = [static]
    for _ in range(config.deltas):
        parts.append(deltas(parts[-1], config.delta_window))
    return np.hstack(parts) if len(parts) > 1 else static
