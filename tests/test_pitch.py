"""Pitch (spkver.features.pitch): YIN against its definition, librosa.yin and signals of known pitch."""

import warnings

import librosa
import numpy as np
import pytest

from spkver.features.config import FeatureConfig
from spkver.features.mfcc import frame_signal
from spkver.features.pitch import difference_function, normalised_difference, yin
from spkver.synth import Voice, synthesize


def harmonic_tone(f0, rate, seconds=0.5, n_harmonics=12, seed=0):
    """A steady voiced-like tone: harmonics of ``f0`` with random phases and a falling spectrum."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    tone = sum(np.cos(2 * np.pi * f0 * h * t + rng.uniform(0, 2 * np.pi)) / h
               for h in range(1, n_harmonics + 1) if f0 * h < rate / 2)
    return (0.3 * tone / np.abs(tone).max()).astype(np.float32)


def test_difference_function_is_its_definition():
    rng = np.random.default_rng(0)
    frames = rng.standard_normal((3, 90))
    window, max_period = 40, 50
    expected = np.array([[np.sum((f[:window] - f[tau : tau + window]) ** 2) for tau in range(max_period + 1)]
                         for f in frames])
    np.testing.assert_allclose(difference_function(frames, max_period, window), expected, rtol=1e-9, atol=1e-9)
    dprime = normalised_difference(expected)
    assert np.all(dprime[:, 0] == 1.0)
    tau = 7
    np.testing.assert_allclose(dprime[:, tau], expected[:, tau] * tau / expected[:, 1 : tau + 1].sum(axis=1))


@pytest.mark.parametrize("rate", [16000, 8000])
@pytest.mark.parametrize("f0", [70.0, 118.3, 201.0, 333.0])
def test_yin_finds_the_pitch_of_a_steady_tone(rate, f0):
    n_fft = 512 if rate == 16000 else 256
    frames = frame_signal(harmonic_tone(f0, rate), n_fft, rate // 100)[3:-3]  # frames inside the tone
    found, aperiodicity = yin(frames, rate)
    np.testing.assert_allclose(found, f0, rtol=0.005)
    assert aperiodicity.max() < 0.05


def test_yin_agrees_with_librosa_on_synthetic_voices():
    rng = np.random.default_rng(3)
    agree = []
    for rate, n_fft in [(16000, 512), (8000, 256)]:
        for _ in range(3):
            voice = Voice.random(rng)
            signal = synthesize(voice, ["a", "o", "i", "e", "u"], rate, rng, pad_s=0.0)
            ours, aperiodicity = yin(frame_signal(signal, n_fft, rate // 100), rate)
            with warnings.catch_warnings():  # librosa asks for two periods of fmin per frame; YIN needs one
                warnings.simplefilter("ignore", UserWarning)
                theirs = librosa.yin(signal, fmin=rate / (n_fft // 2), fmax=400, sr=rate, frame_length=n_fft,
                                     hop_length=rate // 100)
            voiced = aperiodicity < 0.2
            assert voiced.mean() > 0.3
            agree.extend(np.abs(ours[voiced] - theirs[voiced]) / theirs[voiced] < 0.01)
            assert abs(np.median(ours[voiced]) / voice.f0 - 1) < 0.06  # the synthesiser's pitch falls by 10 %
    # librosa integrates over its whole frame, YIN over the frame less the longest period, so some frames
    # of a jittered voice differ (an octave, at times, in either); most agree within 1 %.
    assert np.mean(agree) > 0.85


def test_noise_and_silence_are_aperiodic_and_give_finite_frequencies():
    rng = np.random.default_rng(1)
    noise = frame_signal(rng.standard_normal(16000).astype(np.float32), 512, 160)
    f0, aperiodicity = yin(noise, 16000)
    assert np.median(aperiodicity) > 0.3
    assert np.all(np.isfinite(f0)) and f0.min() >= 60 and f0.max() <= 410
    f0, aperiodicity = yin(np.zeros((4, 512), np.float32), 16000)
    assert np.all(aperiodicity == 1.0) and np.all(np.isfinite(f0))
    for offset in (1 / 32768, 1e-3):  # a constant is not a voice, whatever the rounding of its differences
        f0, aperiodicity = yin(np.full((2, 512), offset, np.float32), 16000)
        assert np.all(aperiodicity == 1.0)
    f0, aperiodicity = yin(np.zeros((0, 512), np.float32), 16000)
    assert f0.shape == aperiodicity.shape == (0,)


def test_model_settings_from_before_pitch_read_as_without_it():
    stored = FeatureConfig(pitch=False, norm="cmn").to_dict()
    del stored["pitch"]
    old = FeatureConfig.from_dict(stored)
    assert old.pitch is False and old.dim == 120
    assert FeatureConfig.from_dict(FeatureConfig().to_dict()).pitch is True and FeatureConfig().system_dim == 124
