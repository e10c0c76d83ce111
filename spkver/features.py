"""Acoustic features: MFCC + Δ + ΔΔ, energy VAD, per-utterance CMVN.

Every function here is pure: arrays in, arrays out. The MFCCs equal
``librosa.feature.mfcc`` for the same settings (tests/test_features.py), but
are computed here so that extraction needs no librosa import (2-3 s) in each
worker process.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields

import numpy as np
import scipy.fft

NORMALISATIONS = ("none", "cmn", "cmvn")


@dataclass(frozen=True)
class FeatureConfig:
    """How features are computed; stored in every model file.

    Attributes
    ----------
    sample_rate : int
        Audio is resampled to this rate, Hz. Default 16000; use 8000 for
        telephone speech.
    window_ms, hop_ms : float
        Analysis window and hop, 25 ms and 10 ms (the HTK/Kaldi standard).
    n_fft : int or None
        FFT size; None takes the next power of two at or above the window
        (512 at 16 kHz, 256 at 8 kHz).
    n_mels : int
        Mel bands, 40 (Slaney mel scale and area normalisation, as librosa).
    fmin, fmax : float or None
        Band edges of the mel filterbank in Hz; ``fmax=None`` is the Nyquist
        frequency.
    n_ceps : int
        Cepstra kept, c0 included: 20 (Reynolds et al. 2000 use 19 + energy).
    preemphasis : float
        First-order pre-emphasis coefficient, 0.97 (HTK); 0 disables it.
    top_db : float or None
        Log-mel floor below each utterance's maximum, 80 dB (librosa's
        ``power_to_db`` default); None disables it.
    deltas : int
        0, 1 or 2: append Δ, or Δ and ΔΔ (default 2, giving 60 dimensions).
    delta_window : int
        Half-width N of the regression window for deltas, 2 (HTK, Kaldi).
    vad : bool
        Drop non-speech frames by frame energy.
    vad_range_db : float
        Keep frames within this many dB of the utterance's loudest frame.
    vad_floor_db : float
        Never keep frames quieter than this (dBFS), so silence has no speech.
    norm : str
        Per-utterance normalisation over speech frames: ``"cmn"`` (mean,
        default), ``"cmvn"`` (mean and variance) or ``"none"``.
    """

    sample_rate: int = 16000
    window_ms: float = 25.0
    hop_ms: float = 10.0
    n_fft: int | None = None
    n_mels: int = 40
    fmin: float = 20.0
    fmax: float | None = None
    n_ceps: int = 20
    preemphasis: float = 0.97
    top_db: float | None = 80.0
    deltas: int = 2
    delta_window: int = 2
    vad: bool = True
    vad_range_db: float = 30.0
    vad_floor_db: float = -65.0
    norm: str = "cmn"

    def __post_init__(self):
        problems = []
        if self.sample_rate < 1000:
            problems.append("sample rate must be at least 1000 Hz")
        if self.window_ms <= 0 or self.hop_ms <= 0:
            problems.append("window and hop must be positive")
        if self.n_mels < 1 or not 1 <= self.n_ceps <= self.n_mels:
            problems.append("need 1 <= n_ceps <= n_mels")
        if self.deltas not in (0, 1, 2):
            problems.append("deltas must be 0, 1 or 2")
        if self.delta_window < 1:
            problems.append("delta window must be at least 1")
        if self.norm not in NORMALISATIONS:
            problems.append(f"norm must be one of {', '.join(NORMALISATIONS)}")
        if self.fmin < 0 or self.fmin >= self.nyquist_fmax:
            problems.append("need 0 <= fmin < fmax <= sample_rate / 2")
        if self.fft_size < self.win_length:
            problems.append("n_fft must be at least the window length")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def win_length(self) -> int:
        return int(round(self.sample_rate * self.window_ms / 1000.0))

    @property
    def hop_length(self) -> int:
        return max(1, int(round(self.sample_rate * self.hop_ms / 1000.0)))

    @property
    def fft_size(self) -> int:
        return self.n_fft or 1 << (self.win_length - 1).bit_length()

    @property
    def nyquist_fmax(self) -> float:
        return float(self.fmax if self.fmax is not None else self.sample_rate / 2)

    @property
    def dim(self) -> int:
        """Feature dimension: cepstra times (1 + number of delta orders)."""
        return self.n_ceps * (1 + self.deltas)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> FeatureConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown feature settings: {', '.join(sorted(unknown))}")
        return cls(**values)

    def fingerprint(self) -> str:
        """Short stable hash of the settings (keys feature caches)."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


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


def mel_filterbank(sample_rate, n_fft, n_mels=40, fmin=0.0, fmax=None):
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


def stream_frames(blocks, n_fft, hop_length, preemphasis=0.0):
    """Centred analysis frames of a signal given as consecutive blocks.

    Yields (n_i, n_fft) arrays whose concatenation equals
    ``frame_signal(preemphasize(concatenated blocks), n_fft, hop_length)``,
    holding only about one block in memory.
    """
    pad = n_fft // 2
    buffer = np.zeros(pad, dtype=np.float32)
    previous = np.float32(0.0)
    coefficient = np.float32(preemphasis)

    def ready(buf):
        return 0 if len(buf) < n_fft else 1 + (len(buf) - n_fft) // hop_length

    for block in blocks:
        block = np.asarray(block, dtype=np.float32)
        if len(block) == 0:
            continue
        emphasized = block.copy()
        if preemphasis:
            emphasized[0] -= coefficient * previous
            emphasized[1:] -= coefficient * block[:-1]
        previous = block[-1]
        buffer = np.concatenate([buffer, emphasized])
        count = ready(buffer)
        if count:
            yield frame_signal(buffer, n_fft, hop_length, centre=False)[:count]
            buffer = buffer[count * hop_length :]
    buffer = np.concatenate([buffer, np.zeros(pad, dtype=np.float32)])
    count = ready(buffer)
    if count:
        yield frame_signal(buffer, n_fft, hop_length, centre=False)[:count]


def log_mel_and_energy(frames, config: FeatureConfig, fbank=None, window=None):
    """Log-mel energies in dB (n, n_mels) and windowed frame energy in dBFS (n,)."""
    n_fft = config.fft_size
    window = analysis_window(config.win_length, n_fft) if window is None else window
    fbank = mel_filterbank(config.sample_rate, n_fft, config.n_mels, config.fmin, config.fmax) \
        if fbank is None else fbank
    windowed = frames * window
    power = np.abs(np.fft.rfft(windowed, axis=1)) ** 2
    log_mel = 10.0 * np.log10(np.maximum(power.astype(np.float32) @ fbank.T, 1e-10))
    energy = 10.0 * np.log10(np.einsum("ij,ij->i", windowed, windowed) / config.win_length + 1e-20)
    return log_mel.astype(np.float32), energy.astype(np.float32)


def mfcc_and_energy_blocks(blocks, config: FeatureConfig, frames_per_step=2048):
    """MFCCs (frames × n_ceps) and frame energy (dBFS) of a signal given as blocks.

    The signal is pre-emphasised first; the rest equals
    ``librosa.feature.mfcc(y=preemphasized, n_mfcc=n_ceps, n_fft, hop_length,
    win_length, n_mels, fmin, fmax)`` transposed (with ``top_db`` as set).
    """
    n_fft = config.fft_size
    window = analysis_window(config.win_length, n_fft)
    fbank = mel_filterbank(config.sample_rate, n_fft, config.n_mels, config.fmin, config.fmax)
    log_mels, energies = [], []
    for frames in stream_frames(blocks, n_fft, config.hop_length, config.preemphasis):
        for start in range(0, len(frames), frames_per_step):
            log_mel, energy = log_mel_and_energy(frames[start : start + frames_per_step], config, fbank, window)
            log_mels.append(log_mel)
            energies.append(energy)
    log_mel = np.concatenate(log_mels) if log_mels else np.zeros((0, config.n_mels), np.float32)
    energy_db = np.concatenate(energies) if energies else np.zeros(0, np.float32)
    if config.top_db is not None and log_mel.size:
        np.maximum(log_mel, log_mel.max() - config.top_db, out=log_mel)
    cepstra = scipy.fft.dct(log_mel, type=2, norm="ortho", axis=1)[:, : config.n_ceps]
    return cepstra.astype(np.float32), energy_db


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


def speech_mask(energy_db, range_db=30.0, floor_db=-65.0):
    """Frames whose energy is within ``range_db`` of the loudest and above ``floor_db``.

    The loudest frame of a clip above the floor is always kept, so a short
    voiced clip never loses every frame; silence loses them all.
    """
    energy_db = np.asarray(energy_db)
    if energy_db.size == 0:
        return np.zeros(0, dtype=bool)
    threshold = max(float(energy_db.max()) - range_db, floor_db)
    return energy_db >= threshold


def normalise(features, mode="cmn"):
    """Per-utterance cepstral mean (``cmn``) or mean and variance (``cmvn``) normalisation."""
    if mode == "none" or len(features) == 0:
        return features
    out = features - features.mean(axis=0, keepdims=True)
    if mode == "cmvn":
        out /= np.maximum(features.std(axis=0, keepdims=True), 1e-5)
    return out.astype(np.float32, copy=False)


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
        Settings; defaults give 60-dimensional CMN'd MFCC + Δ + ΔΔ.

    Returns
    -------
    numpy.ndarray, shape (n_speech_frames, config.dim), float32
        Empty (0 rows) when the VAD finds no speech.
    """
    cepstra, energy_db = mfcc_and_energy_blocks(blocks, config)
    parts = [cepstra]
    for _ in range(config.deltas):
        parts.append(deltas(parts[-1], config.delta_window))
    features = np.hstack(parts) if len(parts) > 1 else cepstra
    if config.vad:
        features = features[speech_mask(energy_db, config.vad_range_db, config.vad_floor_db)]
    return np.ascontiguousarray(normalise(features, config.norm), dtype=np.float32)
