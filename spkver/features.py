"""Acoustic features: MFCC + Δ + ΔΔ, energy VAD, per-utterance CMVN.

Every function here is pure: arrays in, arrays out. The MFCCs equal
``librosa.feature.mfcc`` for the same settings (tests/test_features.py), but
are computed here so that extraction needs no librosa import (2-3 s) in each
worker process.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, fields
from typing import NamedTuple

import numpy as np
import scipy.fft

NORMALISATIONS = ("cmn", "cmvn", "warp", "none")
VAD_METHODS = ("spectral", "energy", "none")
# Default band width of the mel filterbank, in HTK mels: 64 bands from 20 Hz to 8 kHz, 48 to 4 kHz.
MEL_BAND_WIDTH = 44.0
DEFAULT_CEPSTRA = 40
MAX_VAD_BANDS = 40


# Native rates at or below this are telephone-band: their features are computed at 8 kHz.
TELEPHONE_RATE = 8000


def feature_rate_for(native_rates) -> int:
    """The default feature rate for training audio recorded at ``native_rates`` (Hz; None = unknown).

    8000 when most recordings of known rate are telephone-band (≤ 8 kHz),
    else 16000: features at 16 kHz of 8 kHz audio would have an empty upper
    half, and 8 kHz features of wide-band audio lose little for speakers.
    """
    known = [r for r in native_rates if r]
    narrow = sum(r <= TELEPHONE_RATE for r in known)
    return TELEPHONE_RATE if known and 2 * narrow > len(known) else 16000


# Each setting's type and the largest value that makes sense: settings come from model files too,
# and a stored window of a million milliseconds would ask for an FFT gigabytes wide.
_SETTING_BOUNDS = {
    "sample_rate": (int, 384_000), "window_ms": (float, 1000), "hop_ms": (float, 1000), "n_fft": (int, 1 << 16),
    "n_mels": (int, 512), "fmin": (float, 192_000), "fmax": (float, 192_000), "n_ceps": (int, 512),
    "log_energy": (bool, None), "preemphasis": (float, 1), "top_db": (float, 1000), "deltas": (int, 2),
    "delta_window": (int, 50), "vad": (str, None), "vad_threshold": (float, 1e6), "vad_min_pause_ms": (float, 600_000),
    "vad_bands": (int, 512), "vad_range_db": (float, 1000), "vad_floor_db": (float, 1000), "norm": (str, None),
    "warp_window_s": (float, 3600),
}
_OPTIONAL = {"n_fft", "n_mels", "fmax", "n_ceps", "top_db", "vad_bands"}


def _check_setting_types(config) -> None:
    """Every setting of the right type, finite and within its bound (raises TypeError or ValueError)."""
    for name, (kind, bound) in _SETTING_BOUNDS.items():
        value = getattr(config, name)
        if value is None and name in _OPTIONAL:
            continue
        if kind is float:
            ok = type(value) in (int, float) and math.isfinite(value)
        else:
            ok = type(value) is kind
        if not ok:
            wanted = {float: "finite number", int: "whole number", bool: "true or false", str: "string"}[kind]
            raise TypeError(f"feature setting {name} = {value!r} is not a {wanted}")
        if bound is not None and abs(value) > bound:
            raise ValueError(f"feature setting {name} = {value!r} is out of range (at most {bound})")


def htk_mel(hz):
    """The HTK mel scale, ``2595 log10(1 + f / 700)``; used only to count default bands."""
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


@dataclass(frozen=True)
class FeatureConfig:
    """How features are computed; stored in every model file.

    The defaults were chosen by measurement on short clips and long recordings
    at 8 and 16 kHz (README, "Defaults and where they come from").

    Attributes
    ----------
    sample_rate : int
        Audio is resampled to this rate, Hz; default 16000. ``spkver
        train-ubm`` picks 8000 itself when the training audio is telephone-band.
    window_ms, hop_ms : float
        Analysis window and hop, 25 ms and 10 ms (the HTK/Kaldi standard).
    n_fft : int or None
        FFT size; None takes the next power of two at or above the window
        (512 at 16 kHz, 256 at 8 kHz).
    n_mels : int or None
        Mel bands (Slaney mel scale and area normalisation, as librosa).
        None (default) gives bands about 44 mel (HTK scale) wide between
        ``fmin`` and ``fmax``: 64 at 16 kHz, 48 at 8 kHz.
    fmin, fmax : float or None
        Band edges of the mel filterbank in Hz, 20 Hz and the Nyquist
        frequency (``fmax=None``).
    n_ceps : int or None
        Cepstra kept, c0 included; None (default) keeps 40, or every band when
        there are fewer.
    log_energy : bool
        Replace c0 by the frame's log energy in dB (HTK's ``_E``); off by
        default (c0 measured better on long recordings).
    preemphasis : float
        First-order pre-emphasis coefficient, 0.97 (HTK); 0 disables it.
    top_db : float or None
        Log-mel floor below each utterance's maximum, 80 dB (librosa's
        ``power_to_db`` default); None disables it.
    deltas : int
        0, 1 or 2: append Δ, or Δ and ΔΔ (default 2: 120 dimensions by default).
    delta_window : int
        Half-width N of the regression window for deltas, 2 (HTK, Kaldi).
    vad : str
        Voice-activity detection: ``"spectral"`` (default: per-band excess over
        the recording's noise floor, :func:`spectral_speech_mask`),
        ``"energy"`` (within ``vad_range_db`` of the loudest frame, spkver's
        rule before 0.3) or ``"none"``.
    vad_threshold : float
        Spectral VAD: mean per-band log-likelihood ratio that starts a speech
        region (2.0); a region extends while it stays above half of it.
    vad_min_pause_ms : float
        Spectral VAD: shorter pauses are kept as part of speech (200 ms).
    vad_bands : int or None
        Spectral VAD: its own mel bands, wide enough that a band's noise power
        is steady from frame to frame; None (default) takes one per 200 Hz of
        bandwidth, at most 40 (40 at 16 kHz, 20 at 8 kHz).
    vad_range_db, vad_floor_db : float
        Energy VAD: keep frames within this many dB of the loudest (30), and
        never those quieter than this (−65 dBFS).
    norm : str
        Per-utterance normalisation over speech frames: ``"cmn"`` (cepstral
        mean, default), ``"cmvn"`` (mean and variance), ``"warp"`` (feature
        warping to a standard normal over a sliding ``warp_window_s`` window,
        Pelecanos and Sridharan 2001) or ``"none"``.
    warp_window_s : float
        Window of feature warping, 3 s.
    """

    sample_rate: int = 16000
    window_ms: float = 25.0
    hop_ms: float = 10.0
    n_fft: int | None = None
    n_mels: int | None = None
    fmin: float = 20.0
    fmax: float | None = None
    n_ceps: int | None = None
    log_energy: bool = False
    preemphasis: float = 0.97
    top_db: float | None = 80.0
    deltas: int = 2
    delta_window: int = 2
    vad: str = "spectral"
    vad_threshold: float = 2.0
    vad_min_pause_ms: float = 200.0
    vad_bands: int | None = None
    vad_range_db: float = 30.0
    vad_floor_db: float = -65.0
    norm: str = "cmn"
    warp_window_s: float = 3.0

    def __post_init__(self):
        _check_setting_types(self)
        # The automatic band and cepstrum counts are resolved here and stored as numbers, so a
        # model keeps its settings even if a later version changes the rule.
        if self.n_mels is None and self.sample_rate >= 1000:
            span = htk_mel(self.nyquist_fmax) - htk_mel(self.fmin)
            object.__setattr__(self, "n_mels", max(1, int(round(span / MEL_BAND_WIDTH))))
        if self.n_ceps is None and self.n_mels is not None:
            object.__setattr__(self, "n_ceps", min(DEFAULT_CEPSTRA, self.n_mels))
        if self.vad_bands is None and self.sample_rate >= 1000:
            object.__setattr__(self, "vad_bands", min(MAX_VAD_BANDS, int(round(self.sample_rate / 400))))
        problems = []
        if self.sample_rate < 1000:
            problems.append("sample rate must be at least 1000 Hz")
        if self.window_ms <= 0 or self.hop_ms <= 0:
            problems.append("window and hop must be positive")
        if self.n_mels is None or self.n_mels < 1 or self.n_ceps is None or not 1 <= self.n_ceps <= self.n_mels:
            problems.append("need 1 <= n_ceps <= n_mels")
        if self.deltas not in (0, 1, 2):
            problems.append("deltas must be 0, 1 or 2")
        if self.delta_window < 1:
            problems.append("delta window must be at least 1")
        if self.norm not in NORMALISATIONS:
            problems.append(f"norm must be one of {', '.join(NORMALISATIONS)}")
        if self.vad not in VAD_METHODS:
            problems.append(f"vad must be one of {', '.join(VAD_METHODS)}")
        if self.vad_bands is None or self.vad_bands < 1:
            problems.append("vad_bands must be at least 1")
        if self.vad_threshold <= 0 or self.vad_min_pause_ms < 0 or self.warp_window_s <= 0:
            problems.append("VAD threshold and warping window must be positive, the minimum pause not negative")
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
        """The settings stored in a model or feature store (older files included)."""
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown feature settings: {', '.join(sorted(unknown))}")
        values = dict(values)
        if isinstance(values.get("vad"), bool):  # before 0.3: on/off, and "on" was the energy rule
            values["vad"] = "energy" if values["vad"] else "none"
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


class Spectra(NamedTuple):
    """What the analysis of an utterance gives, frame by frame."""

    log_mel: np.ndarray  # (n, n_mels) log-mel energies, dB, before the top_db floor
    energy_db: np.ndarray  # (n,) windowed frame energy, dBFS
    vad_log_mel: np.ndarray | None  # (n, vad_bands) the spectral VAD's coarser bands, dB; None without it


def _log_power(power, fbank):
    return (10.0 * np.log10(np.maximum(power @ fbank.T, 1e-10))).astype(np.float32)


def make_filterbanks(config: FeatureConfig):
    """The feature filterbank, and the spectral VAD's (None unless ``config.vad == "spectral"``)."""
    fbank = mel_filterbank(config.sample_rate, config.fft_size, config.n_mels, config.fmin, config.fmax)
    vad = None
    if config.vad == "spectral":
        vad = mel_filterbank(config.sample_rate, config.fft_size, config.vad_bands, config.fmin, config.fmax)
    return fbank, vad


def frame_spectra(frames, config: FeatureConfig, filterbanks=None, window=None) -> Spectra:
    """:class:`Spectra` of a block of analysis frames (n, n_fft).

    ``filterbanks`` is the pair made by :func:`make_filterbanks` (made here when not given).
    """
    window = analysis_window(config.win_length, config.fft_size) if window is None else window
    fbank, vad_fbank = filterbanks or make_filterbanks(config)
    windowed = frames * window
    power = (np.abs(np.fft.rfft(windowed, axis=1)) ** 2).astype(np.float32)
    energy = 10.0 * np.log10(np.einsum("ij,ij->i", windowed, windowed) / config.win_length + 1e-20)
    vad = None if vad_fbank is None else _log_power(power, vad_fbank)
    return Spectra(_log_power(power, fbank), energy.astype(np.float32), vad)


def spectra_blocks(blocks, config: FeatureConfig, frames_per_step=2048) -> Spectra:
    """:class:`Spectra` of a signal given as consecutive blocks (pre-emphasised first)."""
    window = analysis_window(config.win_length, config.fft_size)
    banks = make_filterbanks(config)
    parts = [
        frame_spectra(frames[start : start + frames_per_step], config, banks, window)
        for frames in stream_frames(blocks, config.fft_size, config.hop_length, config.preemphasis)
        for start in range(0, len(frames), frames_per_step)
    ]
    if not parts:
        vad = None if banks[1] is None else np.zeros((0, config.vad_bands), np.float32)
        return Spectra(np.zeros((0, config.n_mels), np.float32), np.zeros(0, np.float32), vad)
    return Spectra(*(None if parts[0][i] is None else np.concatenate([p[i] for p in parts]) for i in range(3)))


def cepstra(log_mel, config: FeatureConfig):
    """MFCCs (n, n_ceps) of log-mel energies: ``top_db`` floor, then DCT-II (orthonormal)."""
    if config.top_db is not None and log_mel.size:
        log_mel = np.maximum(log_mel, log_mel.max() - config.top_db)
    return scipy.fft.dct(log_mel, type=2, norm="ortho", axis=1)[:, : config.n_ceps].astype(np.float32)


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
