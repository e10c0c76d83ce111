"""MFCC analysis: frames, mel filterbank, log-mel spectra, cepstra and deltas.

Every function here is pure: arrays in, arrays out. The MFCCs equal
``librosa.feature.mfcc`` for the same settings (tests/test_features.py), but
are computed here so that extraction needs no librosa import (2-3 s) in each
worker process.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from spkver.features.config import FeatureConfig
from spkver.features.pitch import yin

# YIN's frame: long enough for two periods at 62.5 Hz, the lowest voices.
PITCH_FRAME_MS = 32.0


def hz_to_mel(hz):
    """Slaney's mel scale: linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / (200.0 / 3)
    log_part = 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(hz >= 1000.0, log_part, linear)


def mel_to_hz(mel):
    """Inverse of :func:`hz_to_mel`."""
    mel = np.asarray(mel, dtype=np.float64)
    linear = mel * (200.0 / 3)
    log_part = 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0))
    return np.where(mel >= 15.0, log_part, linear)


def mel_filterbank(sample_rate, n_fft, n_mels=64, fmin=0.0, fmax=None):
    """Triangular mel filters with Slaney area normalisation.

    Returns
    -------
    numpy.ndarray, shape (n_mels, n_fft // 2 + 1), float32
        Equal to ``librosa.filters.mel`` with ``htk=False, norm="slaney"``.
    """
    fmax = sample_rate / 2 if fmax is None else fmax
    bin_hz = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    widths = np.diff(edges)
    offsets = edges[:, None] - bin_hz[None, :]
    rising = -offsets[:-2] / widths[:-1, None]
    falling = offsets[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights.astype(np.float32)


def frame_signal(signal, n_fft, hop_length, centre=True):
    """Frames of ``n_fft`` samples every ``hop_length``, as a strided view.

    With ``centre`` the signal is zero-padded by ``n_fft // 2`` on both sides
    (librosa's centring), giving ``1 + len(signal) // hop_length`` frames.
    """
    signal = np.asarray(signal, dtype=np.float32)
    padded = np.pad(signal, (n_fft // 2, n_fft // 2)) if centre else signal
    n_frames = 1 + (len(padded) - n_fft) // hop_length
    return np.lib.stride_tricks.as_strided(
        padded,
        shape=(n_frames, n_fft),
        strides=(padded.strides[0] * hop_length, padded.strides[0]),
        writeable=False,
    )


def analysis_window(win_length, n_fft):
    """Periodic Hann window of ``win_length``, zero-padded to ``n_fft`` at the centre."""
    n = np.arange(win_length)
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / win_length)
    left = (n_fft - win_length) // 2
    out = np.zeros(n_fft, dtype=np.float32)
    out[left : left + win_length] = window
    return out


def preemphasize(signal, coefficient=0.97):
    """``y[t] = x[t] - coefficient * x[t-1]`` (first sample kept)."""
    signal = np.asarray(signal, dtype=np.float32)
    if coefficient == 0 or len(signal) == 0:
        return signal
    out = signal.copy()
    out[1:] -= np.float32(coefficient) * signal[:-1]
    return out


def stream_frames(blocks, frame_length, hop_length, preemphasis=0.0):
    """Centred frames of a signal given as consecutive blocks, as it is and pre-emphasised.

    Yields pairs of (n_i, frame_length) arrays whose concatenations equal
    ``frame_signal(x, frame_length, hop_length)`` and
    ``frame_signal(preemphasize(x, preemphasis), frame_length, hop_length)``
    for the concatenated blocks ``x``, holding only about one block in memory.
    """
    pad = frame_length // 2
    buffer = np.zeros((2, pad), dtype=np.float32)  # rows: the signal, the signal pre-emphasised
    skip = 0  # samples to drop before the next frame starts, when a hop reaches past the buffer
    previous = np.float32(0.0)
    coefficient = np.float32(preemphasis)

    def frames_ready():
        nonlocal buffer, skip
        dropped = min(skip, buffer.shape[1])
        buffer, skip = buffer[:, dropped:], skip - dropped
        count = 0 if buffer.shape[1] < frame_length else 1 + (buffer.shape[1] - frame_length) // hop_length
        if not count:
            return None
        frames = tuple(frame_signal(row, frame_length, hop_length, centre=False)[:count] for row in buffer)
        skip = count * hop_length
        return frames

    for block in blocks:
        block = np.asarray(block, dtype=np.float32)
        if len(block) == 0:
            continue
        emphasised = block.copy()
        if preemphasis:
            emphasised[0] -= coefficient * previous
            emphasised[1:] -= coefficient * block[:-1]
        previous = block[-1]
        buffer = np.concatenate([buffer, np.stack([block, emphasised])], axis=1)
        frames = frames_ready()
        if frames:
            yield frames
    buffer = np.concatenate([buffer, np.zeros((2, pad), dtype=np.float32)], axis=1)
    frames = frames_ready()
    if frames:
        yield frames


def context_frame_length(config: FeatureConfig) -> int:
    """Length of the frames the analysis reads: the FFT's, or YIN's when pitch is on and that is longer.

    Both are centred on the same instants (:func:`_centred`).
    """
    if not config.pitch:
        return config.fft_size
    length = max(config.fft_size, pitch_frame_length(config))
    return length + length % 2  # even, so that frame i stays centred on sample i * hop


def pitch_frame_length(config: FeatureConfig) -> int:
    """YIN's frame: :data:`PITCH_FRAME_MS` of audio, an even number of samples."""
    length = int(round(config.sample_rate * PITCH_FRAME_MS / 1000.0))
    return length + length % 2


def _centred(frames, length):
    """The middle ``length`` samples of each frame (frames and slice centred on the same instant)."""
    start = frames.shape[1] // 2 - length // 2
    return frames[:, start : start + length]


class Spectra(NamedTuple):
    """What the analysis of an utterance gives, frame by frame."""

    log_mel: np.ndarray  # (n, n_mels) log-mel energies, dB, before the top_db floor
    energy_db: np.ndarray  # (n,) windowed frame energy, dBFS
    vad_log_mel: np.ndarray | None  # (n, vad_bands) the spectral VAD's coarser bands, dB; None without it
    pitch: np.ndarray | None  # (n, 2) log F0 (ln Hz) and YIN's aperiodicity; None unless config.pitch


def _log_power(power, fbank):
    return (10.0 * np.log10(np.maximum(power @ fbank.T, 1e-10))).astype(np.float32)


def make_filterbanks(config: FeatureConfig):
    """The feature filterbank, and the spectral VAD's (None unless ``config.vad == "spectral"``)."""
    fbank = mel_filterbank(config.sample_rate, config.fft_size, config.n_mels, config.fmin, config.fmax)
    vad = None
    if config.vad == "spectral":
        vad = mel_filterbank(config.sample_rate, config.fft_size, config.vad_bands, config.fmin, config.fmax)
    return fbank, vad


def frame_spectra(frames, emphasised, config: FeatureConfig, filterbanks=None, window=None) -> Spectra:
    """:class:`Spectra` of a block of centred frames (n, :func:`context_frame_length`), raw and pre-emphasised.

    The FFT reads the pre-emphasised frames, YIN the raw ones (pre-emphasis
    weakens the fundamental). ``filterbanks`` is the pair made by
    :func:`make_filterbanks` (made here when not given).
    """
    window = analysis_window(config.win_length, config.fft_size) if window is None else window
    fbank, vad_fbank = filterbanks or make_filterbanks(config)
    windowed = _centred(emphasised, config.fft_size) * window
    power = (np.abs(np.fft.rfft(windowed, axis=1)) ** 2).astype(np.float32)
    energy = 10.0 * np.log10(np.einsum("ij,ij->i", windowed, windowed) / config.win_length + 1e-20)
    vad = None if vad_fbank is None else _log_power(power, vad_fbank)
    pitch = None
    if config.pitch:
        f0, aperiodicity = yin(_centred(frames, pitch_frame_length(config)), config.sample_rate)
        pitch = np.stack([np.log(f0), aperiodicity], axis=1).astype(np.float32)
    return Spectra(_log_power(power, fbank), energy.astype(np.float32), vad, pitch)


def spectra_blocks(blocks, config: FeatureConfig, frames_per_step=2048) -> Spectra:
    """:class:`Spectra` of a signal given as consecutive blocks (pre-emphasised for the spectra)."""
    window = analysis_window(config.win_length, config.fft_size)
    banks = make_filterbanks(config)
    parts = [
        frame_spectra(frames[start : start + frames_per_step], emphasised[start : start + frames_per_step],
                      config, banks, window)
        for frames, emphasised in stream_frames(blocks, context_frame_length(config), config.hop_length,
                                                config.preemphasis)
        for start in range(0, len(frames), frames_per_step)
    ]
    if not parts:
        vad = None if banks[1] is None else np.zeros((0, config.vad_bands), np.float32)
        pitch = np.zeros((0, 2), np.float32) if config.pitch else None
        return Spectra(np.zeros((0, config.n_mels), np.float32), np.zeros(0, np.float32), vad, pitch)
    return Spectra(*(None if parts[0][i] is None else np.concatenate([p[i] for p in parts]) for i in range(4)))


@functools.cache
def dct_matrix(n_mels: int, n_ceps: int) -> np.ndarray:
    """The first ``n_ceps`` rows of the orthonormal DCT-II of length ``n_mels``, as an (n_mels, n_ceps) matrix.

    ``x @ dct_matrix(n, k)`` equals ``scipy.fft.dct(x, type=2, norm="ortho")[:, :k]`` (tested); a
    matrix product here spares every command that extracts features the 0.15 s import of scipy.fft.
    """
    n = np.arange(n_mels)
    basis = np.cos(np.pi / n_mels * (n[:, None] + 0.5) * np.arange(n_ceps)[None, :]) * np.sqrt(2.0 / n_mels)
    basis[:, 0] /= np.sqrt(2.0)
    basis.flags.writeable = False
    return basis


def cepstra(log_mel, config: FeatureConfig):
    """MFCCs (n, n_ceps) of log-mel energies: ``top_db`` floor, then DCT-II (orthonormal)."""
    if config.top_db is not None and log_mel.size:
        log_mel = np.maximum(log_mel, log_mel.max() - config.top_db)
    basis = dct_matrix(log_mel.shape[1], config.n_ceps)
    out = np.empty((len(log_mel), config.n_ceps), dtype=np.float32)
    # In float64, a block of frames at a time: an hour of audio in one product would take 300 MB more.
    for start in range(0, len(log_mel), CEPSTRA_BLOCK):
        out[start:start + CEPSTRA_BLOCK] = log_mel[start:start + CEPSTRA_BLOCK].astype(np.float64) @ basis
    return out


CEPSTRA_BLOCK = 1 << 15


def mfcc_and_energy_blocks(blocks, config: FeatureConfig, frames_per_step=2048):
    """MFCCs (frames × n_ceps) and frame energy (dBFS) of a signal given as blocks.

    The signal is pre-emphasised first; the rest equals
    ``librosa.feature.mfcc(y=preemphasized, n_mfcc=n_ceps, n_fft, hop_length,
    win_length, n_mels, fmin, fmax)`` transposed (with ``top_db`` as set).
    """
    spectra = spectra_blocks(blocks, config, frames_per_step)
    return cepstra(spectra.log_mel, config), spectra.energy_db


def mfcc_and_energy(signal, config: FeatureConfig):
    """:func:`mfcc_and_energy_blocks` of a whole signal."""
    return mfcc_and_energy_blocks([signal], config)


def deltas(features, width=2):
    """Regression deltas over ``±width`` frames, edges repeated (HTK formula).

    ``d[t] = Σ_{n=1..N} n (c[t+n] - c[t-n]) / (2 Σ n²)``.
    """
    features = np.asarray(features, dtype=np.float32)
    if len(features) == 0:
        return features.copy()
    padded = np.pad(features, ((width, width), (0, 0)), mode="edge")
    n_frames = len(features)
    out = np.zeros_like(features)
    for n in range(1, width + 1):
        out += n * (padded[width + n : width + n + n_frames] - padded[width - n : width - n + n_frames])
    return out / np.float32(2 * sum(n * n for n in range(1, width + 1)))


