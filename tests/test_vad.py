"""Voice-activity detection against known ground truth: synthetic voices with pauses and noise, and ASC clips."""

import numpy as np
import pytest
import soundfile as sf
from helpers import require_shared_data

from spkver.features.config import FeatureConfig
from spkver.features.frontend import extract
from spkver.features.mfcc import spectra_blocks
from spkver.features.vad import energy_speech_mask, spectral_speech_mask, speech_mask
from spkver.synth import WORDS, Voice, synthesize

RATE = 16000
CONFIG = FeatureConfig(sample_rate=RATE)


def words_with_pauses(seed, snr_db, noise="white", n_words=8, rate=RATE):
    """Words of one synthetic voice separated by 0.2-1.5 s pauses, and which samples are speech.

    With ``snr_db`` None the pauses are digital silence; otherwise noise runs under the
    whole recording at that SNR (mean power of the words over the noise's): white, or
    room-like (tilted towards low frequencies).
    """
    rng = np.random.default_rng(seed)
    voice = Voice.random(rng)
    pieces, truth = [], []
    for i in range(2 * n_words + 1):
        if i % 2:
            piece = synthesize(voice, WORDS[rng.integers(len(WORDS))], rate, rng, pad_s=0.0, noise_db=-300.0)
        else:
            piece = np.zeros(int(rng.uniform(0.2, 1.5) * rate))
        pieces.append(piece)
        truth.append(np.full(len(piece), bool(i % 2)))
    signal, truth = np.concatenate(pieces).astype(np.float64), np.concatenate(truth)
    if snr_db is not None:
        hiss = rng.standard_normal(len(signal))
        if noise == "room":
            hiss = np.convolve(hiss, np.exp(-np.arange(64) / 8.0), mode="same")
        signal += hiss * np.sqrt(np.mean(signal[truth] ** 2) / 10 ** (snr_db / 10) / np.mean(hiss**2))
    return signal.astype(np.float32), truth


def detect(signal, config=CONFIG):
    """The VAD's decision for every analysis frame."""
    return speech_mask(spectra_blocks([signal], config), config)


def frame_truth(truth, config=CONFIG):
    """A frame is speech when the sample at its centre is (frames are centred, as librosa's)."""
    centres = np.minimum(np.arange(1 + len(truth) // config.hop_length) * config.hop_length, len(truth) - 1)
    return truth[centres]


def recall_precision(seeds, snr_db, noise):
    recalls, precisions = [], []
    for seed in seeds:
        signal, truth = words_with_pauses(seed, snr_db, noise)
        found, speech = detect(signal), frame_truth(truth)
        hits = (found & speech).sum()
        recalls.append(hits / speech.sum())
        precisions.append(hits / max(found.sum(), 1))
    return np.mean(recalls), np.mean(precisions)


# Pauses of digital silence (None) have no noise colour, so they appear once.
@pytest.mark.parametrize(("snr_db", "noise"), [(None, "white")] + [(snr, noise) for noise in ("white", "room")
                                                                   for snr in (30, 20, 10)])
def test_spectral_vad_finds_speech_between_pauses_and_noise(snr_db, noise):
    recall, precision = recall_precision(range(8), snr_db, noise)
    assert recall >= 0.97 and precision >= 0.90, (recall, precision)


@pytest.mark.parametrize(("snr_db", "noise", "min_recall"), [(5, "room", 0.97), (0, "room", 0.93),
                                                           (5, "white", 0.93), (0, "white", 0.88)])
def test_spectral_vad_in_heavy_noise(snr_db, noise, min_recall):
    # At 0-5 dB the fricatives, 10 dB below the vowels, sink under white noise in their own bands:
    # no detector working from the signal finds them without also keeping noise (README).
    recall, precision = recall_precision(range(8), snr_db, noise)
    assert recall >= min_recall and precision >= 0.90, (recall, precision)


def test_pauses_and_noise_are_dropped_but_words_kept_in_features():
    signal, truth = words_with_pauses(3, 30, "room")
    n_speech, n_all = frame_truth(truth).sum(), len(frame_truth(truth))
    kept = len(extract(signal))
    assert 0.97 * n_speech <= kept <= n_speech / 0.9 < n_all


def test_never_leaves_a_voiced_clip_without_frames():
    rng = np.random.default_rng(2)
    voice = Voice.random(rng)
    vowel = synthesize(voice, ["a"], RATE, rng, pad_s=0.0)  # 0.16 s, no pause to learn the noise from
    steady = np.tile(vowel[400:1200], 20)  # 1 s of one steady vowel
    for clip in (vowel, vowel[:1600], steady):
        assert len(extract(clip)) > 0
    silence = np.zeros(RATE, dtype=np.float32)
    assert len(extract(silence)) == 0
    assert len(extract(1e-5 * rng.standard_normal(RATE).astype(np.float32))) == 0


def test_steady_noise_alone_is_not_speech():
    rng = np.random.default_rng(4)
    noise = 0.01 * rng.standard_normal(3 * RATE).astype(np.float32)
    assert spectral_speech_mask(spectra_blocks([noise], CONFIG).vad_log_mel).mean() < 0.05


def test_short_pauses_are_bridged_and_long_ones_dropped():
    log_mel = np.full((200, 8), -60.0, dtype=np.float32)
    for start, stop in [(20, 60), (70, 110), (160, 190)]:  # a 10-frame gap, then a 50-frame gap
        log_mel[start:stop] = -20.0
    mask = spectral_speech_mask(log_mel, min_pause_frames=20)
    assert mask[20:110].all() and not mask[115:155].any() and mask[160:190].all()
    assert mask[:20].all() and mask[190:].all()  # edges shorter than a pause are kept too
    assert not spectral_speech_mask(log_mel, min_pause_frames=5)[62:68].any()


def test_energy_vad_keeps_the_loudest_frame():
    mask = energy_speech_mask(np.array([-60.0, -20.0, -55.0]), range_db=10, floor_db=-65)
    assert mask.tolist() == [False, True, False]


def test_models_before_the_spectral_vad_keep_their_rule():
    old = FeatureConfig.from_dict({"vad": True, "n_mels": 40, "n_ceps": 20})
    assert old.vad == "energy" and FeatureConfig.from_dict({"vad": False}).vad == "none"
    signal, _ = words_with_pauses(1, None, n_words=3)
    spectra = spectra_blocks([signal], old)
    assert spectra.vad_log_mel is None
    np.testing.assert_array_equal(speech_mask(spectra, old), energy_speech_mask(spectra.energy_db))


@pytest.mark.integration
def test_asc_clips_keep_their_frames_and_lose_added_silence():
    root = require_shared_data()
    clips = sorted((root / "asc" / "dataset").rglob("*.wav"))[::10]
    kept, total, per_clip, silence_dropped = 0, 0, [], []
    dither = np.random.default_rng(0)
    for path in clips:
        audio, rate = sf.read(path, dtype="float32")
        found = detect(audio)
        kept, total = kept + found.sum(), total + len(found)
        per_clip.append(found.mean())
        # Two seconds of (dithered, 16-bit) silence before and after.
        pad = dither.integers(-1, 2, size=2 * rate).astype(np.float32) / 32768
        padded = detect(np.concatenate([pad, audio, pad]))
        edge = 2 * rate // CONFIG.hop_length - 2
        silence_dropped.append(1 - np.concatenate([padded[:edge], padded[-edge:]]).mean())
    assert kept / total >= 0.90 and np.median(per_clip) >= 0.90 and min(per_clip) > 0
    assert np.mean(silence_dropped) >= 0.90 and min(silence_dropped) >= 0.80
