import librosa
import numpy as np
import pytest

from spkver.features import (
    FeatureConfig,
    deltas,
    extract,
    mel_filterbank,
    mfcc_and_energy,
    normalise,
    preemphasize,
    speech_mask,
)
from spkver.synth import Voice, synthesize


@pytest.mark.parametrize(
    "settings",
    [
        dict(),
        dict(sample_rate=8000),
        dict(sample_rate=8000, n_mels=24, n_ceps=13, fmin=100.0, fmax=3800.0),
        dict(window_ms=32.0, hop_ms=16.0, n_fft=1024, top_db=None),
    ],
)
def test_mfcc_matches_librosa(settings):
    config = FeatureConfig(**settings)
    rng = np.random.default_rng(0)
    voice = Voice.random(rng)
    signal = synthesize(voice, ["s", "a", "i"], config.sample_rate, rng)
    ours, _ = mfcc_and_energy(signal, config)
    y = preemphasize(signal, config.preemphasis)
    stft = dict(n_fft=config.fft_size, hop_length=config.hop_length, win_length=config.win_length,
                n_mels=config.n_mels, fmin=config.fmin, fmax=config.fmax)
    if config.top_db == 80.0:  # librosa.feature.mfcc's own log compression
        reference = librosa.feature.mfcc(y=y, sr=config.sample_rate, n_mfcc=config.n_ceps, **stft).T
    else:
        mel = librosa.feature.melspectrogram(y=y, sr=config.sample_rate, **stft)
        log_mel = librosa.power_to_db(mel, top_db=config.top_db)
        reference = librosa.feature.mfcc(S=log_mel, n_mfcc=config.n_ceps).T
    assert ours.shape == reference.shape
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, reference, atol=2e-3 * np.abs(reference).max())


def test_mel_filterbank_matches_librosa():
    for sr, n_fft, n_mels, fmin, fmax in [(16000, 512, 40, 20, None), (8000, 256, 23, 0, 3700)]:
        expected = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
        np.testing.assert_allclose(mel_filterbank(sr, n_fft, n_mels, fmin, fmax), expected, atol=1e-7)


def test_deltas_of_a_ramp_are_its_slope_inside_and_reduced_at_edges():
    ramp = np.arange(10, dtype=np.float32)[:, None] * np.array([[1.0, -2.0]], dtype=np.float32)
    d = deltas(ramp, width=2)
    np.testing.assert_allclose(d[2:-2], np.tile([[1.0, -2.0]], (6, 1)), atol=1e-6)
    # First frame: (1*(1-0) + 2*(2-0)) / 10 = 0.5 of the slope.
    np.testing.assert_allclose(d[0], [0.5, -1.0], atol=1e-6)


def test_default_features_are_60_dimensional_float32_and_mean_normalised():
    rng = np.random.default_rng(1)
    signal = synthesize(Voice.random(rng), ["a", "s", "e"], 16000, rng)
    feats = extract(signal)
    assert feats.shape[1] == 60 and feats.dtype == np.float32
    np.testing.assert_allclose(feats.mean(0), 0.0, atol=1e-4)
    cmvn = extract(signal, FeatureConfig(norm="cmvn"))
    np.testing.assert_allclose(cmvn.std(0), 1.0, atol=1e-3)


def test_vad_drops_silence_but_never_all_of_a_short_voiced_clip():
    rng = np.random.default_rng(2)
    voice = Voice.random(rng)
    speech = synthesize(voice, ["a"], 16000, rng, pad_s=0.0)[:1600]  # 0.1 s
    silence = np.zeros(16000, dtype=np.float32)
    padded = np.concatenate([silence, speech, silence])
    n_all = len(extract(padded, FeatureConfig(vad=False)))
    n_speech = len(extract(padded))
    assert 0 < n_speech < n_all / 4
    assert len(extract(speech)) > 0
    assert len(extract(silence)) == 0
    assert len(extract(1e-5 * rng.standard_normal(16000).astype(np.float32))) == 0


def test_speech_mask_keeps_the_loudest_frame():
    mask = speech_mask(np.array([-60.0, -20.0, -55.0]), range_db=10, floor_db=-65)
    assert mask.tolist() == [False, True, False]


def test_normalise_none_is_identity():
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    assert normalise(x, "none") is x


def test_invalid_config_is_rejected():
    with pytest.raises(ValueError):
        FeatureConfig(n_ceps=50, n_mels=40)
    with pytest.raises(ValueError):
        FeatureConfig(norm="bogus")
    config = FeatureConfig(sample_rate=8000)
    assert FeatureConfig.from_dict(config.to_dict()) == config
    assert config.fingerprint() != FeatureConfig().fingerprint()
