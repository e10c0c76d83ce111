"""A small source-filter voice synthesizer for the demo and the tests.

A glottal pulse train (pitch with jitter and a falling contour) plus breath
noise excites a cascade of formant resonators; each speaker has its own
pitch, vocal-tract length (formant scale), per-vowel formant habits, spectral
tilt, breathiness and speaking rate. No recording is needed or shipped.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.signal import lfilter

# Average adult formants F1-F3 (Hz) of a few vowels (Peterson & Barney 1952).
VOWELS = {
    "a": (730, 1090, 2440), "e": (530, 1840, 2480), "i": (270, 2290, 3010),
    "o": (570, 840, 2410), "u": (300, 870, 2240), "ae": (660, 1720, 2410),
}
# Fricative noise bands (Hz).
FRICATIVES = {"s": (4000, 7000), "sh": (2000, 4000), "f": (1000, 6000), "h": (300, 3000)}
WORDS = [
    ["s", "a", "i"], ["o", "u"], ["sh", "e", "a"], ["f", "i", "o"], ["h", "ae", "u"],
    ["a", "s", "e"], ["u", "sh", "i"], ["e", "o", "f"], ["i", "h", "a"], ["ae", "s", "o"],
]


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker."""

    f0: float
    formant_scale: float
    vowel_offsets: tuple
    f4: float
    tilt: float
    breathiness: float
    rate: float

    @classmethod
    def random(cls, rng: np.random.Generator) -> Voice:
        offsets = tuple(tuple(rng.uniform(0.9, 1.1, size=3)) for _ in VOWELS)
        return cls(
            f0=float(rng.uniform(85, 250)),
            formant_scale=float(rng.uniform(0.85, 1.18)),
            vowel_offsets=offsets,
            f4=float(rng.uniform(3300, 4300)),
            tilt=float(rng.uniform(0.6, 0.95)),
            breathiness=float(rng.uniform(0.01, 0.08)),
            rate=float(rng.uniform(0.8, 1.25)),
        )


def _resonator(signal, freq, bandwidth, sample_rate):
    """Second-order all-pole resonance at ``freq`` with unit gain at DC."""
    r = np.exp(-np.pi * bandwidth / sample_rate)
    theta = 2 * np.pi * freq / sample_rate
    a = [1.0, -2 * r * np.cos(theta), r * r]
    return lfilter([sum(a)], a, signal)


def _vowel(voice: Voice, name, duration, sample_rate, rng):
    n = int(duration * sample_rate)
    t = np.arange(n) / sample_rate
    f0 = voice.f0 * (1.05 - 0.1 * t / max(duration, 1e-3)) * (1 + 0.01 * rng.standard_normal())
    phase = np.cumsum(f0 * (1 + 0.005 * rng.standard_normal(n))) / sample_rate
    pulses = np.diff(np.floor(phase), prepend=0.0)
    source = lfilter([1.0], [1.0, -voice.tilt], pulses)
    source += voice.breathiness * rng.standard_normal(n)
    offsets = voice.vowel_offsets[list(VOWELS).index(name)]
    out = source
    formants = [f * voice.formant_scale * o for f, o in zip(VOWELS[name], offsets)] + [voice.f4]
    for freq, bandwidth in zip(formants, (70, 100, 140, 200)):
        if freq < sample_rate / 2 - 200:
            out = _resonator(out, freq, bandwidth, sample_rate)
    return out


def _fricative(name, duration, sample_rate, rng):
    n = int(duration * sample_rate)
    low, high = FRICATIVES[name]
    high = min(high, sample_rate / 2 - 100)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / sample_rate)
    spectrum[(freqs < low) | (freqs > high)] = 0
    return np.fft.irfft(spectrum, n) * 0.3


def _envelope(n, sample_rate, ramp_s=0.015):
    ramp = min(int(ramp_s * sample_rate), n // 2)
    env = np.ones(n)
    if ramp:
        env[:ramp] = np.linspace(0, 1, ramp)
        env[-ramp:] = np.linspace(1, 0, ramp)
    return env


def synthesize(voice: Voice, word, sample_rate=16000, rng=None, pad_s=0.15, noise_db=-65.0):
    """Audio of ``voice`` saying ``word`` (a list of vowel and fricative names).

    Returns a float32 signal peaking at 0.5 full scale, with ``pad_s`` of
    low-level noise before and after, so voice-activity detection has work.
    """
    rng = rng or np.random.default_rng()
    pieces = []
    for phone in word:
        if phone in VOWELS:
            seg = _vowel(voice, phone, 0.16 / voice.rate, sample_rate, rng)
        else:
            seg = _fricative(phone, 0.09 / voice.rate, sample_rate, rng)
        seg = seg * _envelope(len(seg), sample_rate) / (np.abs(seg).max() + 1e-9)
        pieces.append(seg * (1.0 if phone in VOWELS else 0.3))
    pad = np.zeros(int(pad_s * sample_rate))
    signal = np.concatenate([pad, *pieces, pad])
    signal = 0.5 * signal / (np.abs(signal).max() + 1e-9)
    signal += 10 ** (noise_db / 20) * rng.standard_normal(len(signal))
    return signal.astype(np.float32)


def utterance(voice: Voice, n_words, sample_rate=16000, rng=None, words=None):
    """Several words in a row (drawn from ``words``, default :data:`WORDS`)."""
    rng = rng or np.random.default_rng()
    vocabulary = words or WORDS
    picks = rng.choice(len(vocabulary), size=n_words)
    return np.concatenate([synthesize(voice, vocabulary[i], sample_rate, rng) for i in picks])


def words_with_pauses(seed: int, snr_db: float | None, noise: str = "white", n_words: int = 8,
                      sample_rate: int = 16000) -> tuple[np.ndarray, np.ndarray]:
    """Words of one random voice separated by 0.2-1.5 s pauses, and which samples are speech.

    The ground truth of the voice-activity tests and of ``scripts/vad_detectability.py``.

    Parameters
    ----------
    seed : int
        Seeds the voice, the words, the pauses and the noise.
    snr_db : float or None
        None: the pauses are digital silence. Otherwise noise runs under the
        whole recording at this SNR (the words' mean power over the noise's).
    noise : {"white", "room"}
        White, or room-like (white noise through an exponential decay of 8
        samples cut at 64, whatever the rate: tilted towards low frequencies).

    Returns
    -------
    signal : numpy.ndarray, shape (n,), float32
    truth : numpy.ndarray of bool, shape (n,)
        True where a word is (its fricatives and 15 ms onset and offset ramps included).
    """
    if noise not in ("white", "room"):
        raise ValueError(f"noise must be 'white' or 'room', not {noise!r}")
    rng = np.random.default_rng(seed)
    voice = Voice.random(rng)
    pieces, truth = [], []
    for i in range(2 * n_words + 1):
        if i % 2:
            piece = synthesize(voice, WORDS[rng.integers(len(WORDS))], sample_rate, rng, pad_s=0.0, noise_db=-300.0)
        else:
            piece = np.zeros(int(rng.uniform(0.2, 1.5) * sample_rate))
        pieces.append(piece)
        truth.append(np.full(len(piece), bool(i % 2)))
    signal, speech = np.concatenate(pieces).astype(np.float64), np.concatenate(truth)
    if snr_db is not None:
        hiss = rng.standard_normal(len(signal))
        if noise == "room":
            hiss = np.convolve(hiss, np.exp(-np.arange(64) / 8.0), mode="same")
        signal += hiss * np.sqrt(np.mean(signal[speech] ** 2) / 10 ** (snr_db / 10) / np.mean(hiss**2))
    return signal.astype(np.float32), speech


def speech_frames(truth, hop_length: int) -> np.ndarray:
    """Per-sample speech ``truth`` as per-frame truth: a frame is speech when the sample at its centre is.

    Frames are centred, as spkver's and librosa's: ``1 + len(truth) // hop_length`` of them.
    """
    truth = np.asarray(truth, dtype=bool)
    if len(truth) == 0:
        return np.zeros(1, dtype=bool)  # the one frame of an empty signal
    centres = np.minimum(np.arange(1 + len(truth) // hop_length) * hop_length, len(truth) - 1)
    return truth[centres]


@functools.cache
def example_corpus(seed: int = 7) -> Path:
    """A small corpus of synthetic speakers for examples and doctests, written once per process.

    ``background/bg0`` … ``bg4`` (four files each, all words), and for
    ``alice`` and ``bob`` ``enroll/NAME`` (three files, the first five words)
    and ``test/NAME`` (two files, the other words), 16 kHz WAV. The folder is
    removed when the process exits.

    Returns
    -------
    Path
        The corpus's root folder.
    """
    import atexit
    import shutil
    import tempfile

    import soundfile as sf

    root = Path(tempfile.mkdtemp(prefix="spkver-example-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    rng = np.random.default_rng(seed)
    voices = [Voice.random(rng) for _ in range(7)]
    plan = [(root / "background" / f"bg{i}", voice, 4, WORDS) for i, voice in enumerate(voices[:5])]
    for name, voice in zip(["alice", "bob"], voices[5:]):
        plan += [(root / "enroll" / name, voice, 3, WORDS[:5]), (root / "test" / name, voice, 2, WORDS[5:])]
    for folder, voice, count, words in plan:
        folder.mkdir(parents=True)
        for i in range(count):
            sf.write(folder / f"{folder.name}_{i}.wav", utterance(voice, 3, 16000, rng, words), 16000)
    return root
