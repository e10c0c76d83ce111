"""Feature settings: :class:`FeatureConfig`, checked where settings enter (options and files)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields

import numpy as np

from spkver.audio.decode import native_sample_rate
from spkver.features.normalise import FEATURE_NORMS
from spkver.fileio import sha256_hex

# The largest feature value spkver accepts: float16's largest, since a UBM keeps its cohort frames as float16.
# spkver makes none near it (cepstra of dB levels stay below 9000 even for audio at float32's limit with 512
# bands), so a larger value is a damaged or forged store entry, and would overflow statistics as NaN does.
MAX_FEATURE_MAGNITUDE = 65504.0
VAD_METHODS = ("spectral", "energy", "none")
# The spectral VAD's growth, in hops: one second at the default 10 ms.
MAX_VAD_GROW_HOPS = 100
# Default band width of the mel filterbank, in HTK mels: 64 bands from 20 Hz to 8 kHz, 48 to 4 kHz.
MEL_BAND_WIDTH = 44.0
DEFAULT_CEPSTRA = 40
MAX_VAD_BANDS = 40


# Native rates at or below this are telephone-band: their features are computed at 8 kHz.
TELEPHONE_RATE = 8000
# The lowest feature rate: below it a 25 ms frame holds too few samples for the mel bands.
MIN_SAMPLE_RATE = 1000


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
    "vad_grow_ms": (float, 1000), "vad_bands": (int, 512), "vad_range_db": (float, 1000), "vad_floor_db": (float, 1000),
    "norm": (str, None),
    "warp_window_s": (float, 3600), "pitch": (bool, None),
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
        0, 1 or 2: append Δ, or Δ and ΔΔ (default 2: 120 cepstral dimensions, 124 with pitch, per system).
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
    vad_grow_ms : float
        Spectral VAD: how far a speech region may grow outward over frames
        that, taken together, stand out from the noise (100 ms, about a
        fricative; :func:`~spkver.features.vad.grown_regions`). Models from
        before it read as 0.
    vad_bands : int or None
        Spectral VAD: its own mel bands, wide enough that a band's noise power
        is steady from frame to frame; None (default) takes one per 200 Hz of
        bandwidth, at most 40 (40 at 16 kHz, 20 at 8 kHz).
    vad_range_db, vad_floor_db : float
        Energy VAD: keep frames within this many dB of the loudest (30), and
        never those quieter than this (−65 dBFS).
    norm : str
        Per-utterance normalisation of the cepstra over speech frames:
        ``"cmn"`` (cepstral mean), ``"cmvn"`` (mean and variance), ``"warp"``
        (feature warping to a standard normal over a sliding ``warp_window_s``
        window, Pelecanos and Sridharan 2001) or ``"none"``; or several joined
        by ``+``, one *system* each (:attr:`norms`, :attr:`views`). The
        default, ``"cmn+warp"``, is two systems: the features hold the cepstra
        normalised each way (each followed by the pitch columns), a model
        holds one mixture per system, and a score is the mean of the systems'
        scores. It lowered the EER on all five protocols against CMN alone
        (README, "Two systems"). Model files from before it read as ``"cmn"``.
    warp_window_s : float
        Window of feature warping, 3 s.
    pitch : bool
        Append the frame's log fundamental frequency (YIN, 62.5-400 Hz, on the
        unemphasised audio), its deltas as set above, and YIN's aperiodicity
        (near 0 when voiced): 4 more dimensions per system by default. On by default: it
        lowered the EER on all five protocols (README). These dimensions are
        never normalised, since a speaker's mean pitch is the cue and no
        channel changes it. Model files from before it existed read as off.
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
    vad_grow_ms: float = 100.0
    vad_bands: int | None = None
    vad_range_db: float = 30.0
    vad_floor_db: float = -65.0
    norm: str = "cmn+warp"
    warp_window_s: float = 3.0
    pitch: bool = True

    def __post_init__(self):
        _check_setting_types(self)
        # The automatic band and cepstrum counts are resolved here and stored as numbers, so a
        # model keeps its settings even if a later version changes the rule.
        if self.n_mels is None and self.sample_rate >= MIN_SAMPLE_RATE:
            span = htk_mel(self.nyquist_fmax) - htk_mel(self.fmin)
            object.__setattr__(self, "n_mels", max(1, int(round(span / MEL_BAND_WIDTH))))
        if self.n_ceps is None and self.n_mels is not None:
            object.__setattr__(self, "n_ceps", min(DEFAULT_CEPSTRA, self.n_mels))
        if self.vad_bands is None and self.sample_rate >= MIN_SAMPLE_RATE:
            object.__setattr__(self, "vad_bands", min(MAX_VAD_BANDS, int(round(self.sample_rate / 400))))
        problems = []
        if self.sample_rate < MIN_SAMPLE_RATE:
            problems.append(f"sample rate must be at least {MIN_SAMPLE_RATE} Hz")
        if self.window_ms <= 0 or self.hop_ms <= 0:
            problems.append("window and hop must be positive")
        if self.n_mels is None or self.n_mels < 1 or self.n_ceps is None or not 1 <= self.n_ceps <= self.n_mels:
            problems.append("need 1 <= n_ceps <= n_mels")
        if self.deltas not in (0, 1, 2):
            problems.append("deltas must be 0, 1 or 2")
        if self.delta_window < 1:
            problems.append("delta window must be at least 1")
        norms = self.norm.split("+")
        if not all(n in FEATURE_NORMS for n in norms) or len(set(norms)) < len(norms):
            problems.append(f"norm must be one of {', '.join(FEATURE_NORMS)}, or several of them joined by + "
                            "(one system each, none twice)")
        if self.vad not in VAD_METHODS:
            problems.append(f"vad must be one of {', '.join(VAD_METHODS)}")
        if self.vad_bands is None or self.vad_bands < 1:
            problems.append("vad_bands must be at least 1")
        if self.vad_threshold <= 0 or self.vad_min_pause_ms < 0 or self.vad_grow_ms < 0 or self.warp_window_s <= 0:
            problems.append("VAD threshold and warping window must be positive, the minimum pause and growth not "
                            "negative")
        if self.vad_grow_ms > MAX_VAD_GROW_HOPS * self.hop_ms:  # each hop of growth is a pass over the edges
            problems.append(f"vad_grow_ms may be at most {MAX_VAD_GROW_HOPS} hops")
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
    def norms(self) -> tuple[str, ...]:
        """The normalisation of each system, in column order (``("cmn", "warp")`` by default)."""
        return tuple(self.norm.split("+"))

    @property
    def system_dim(self) -> int:
        """Columns of one system: cepstra and, with pitch, log F0, each with its deltas; then the aperiodicity."""
        return (self.n_ceps + self.pitch) * (1 + self.deltas) + self.pitch

    @property
    def dim(self) -> int:
        """Feature dimension: :attr:`system_dim` for each system."""
        return self.system_dim * len(self.norms)

    @property
    def views(self) -> tuple[slice, ...]:
        """The columns of each system: the features a one-system config of its normalisation would give."""
        width = self.system_dim
        return tuple(slice(i * width, (i + 1) * width) for i in range(len(self.norms)))

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
        values.setdefault("vad_grow_ms", 0.0)  # files from before the spectral VAD grew its regions
        values.setdefault("pitch", False)  # files from before pitch features were computed without them
        values.setdefault("norm", "cmn")  # and before two systems, with the cepstral mean
        return cls(**values)

    def fingerprint(self) -> str:
        """Short stable hash of the settings (keys feature caches)."""
        return sha256_hex([json.dumps(self.to_dict(), sort_keys=True)], 16)


def default_feature_config(items, probe_limit=1000) -> tuple[FeatureConfig, str]:
    """The default features for training audio: :func:`spkver.features.config.feature_rate_for` its native rates.

    Reads the headers of at most ``probe_limit`` recordings, evenly spread.
    Returns the config and a sentence saying why, for the log.
    """
    items = list(items)
    sample = items[:: max(1, -(-len(items) // probe_limit))]
    rates = [native_sample_rate(item.path) for item in sample]
    rate = feature_rate_for(rates)
    known = [r for r in rates if r]
    narrow = sum(r <= TELEPHONE_RATE for r in known)
    why = (f"feature rate {rate} Hz: {narrow} of {len(known)} training recordings"
           f"{' read' if len(known) < len(items) else ''} are telephone-band (at most {TELEPHONE_RATE} Hz)")
    return FeatureConfig(sample_rate=rate), why
