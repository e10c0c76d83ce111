"""Features (spkver.features): MFCCs against librosa, normalisation, settings, extraction and the feature store."""

import json
import os
import time

import librosa
import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from spkver.audio.sources import find_audio
from spkver.cli.main import cli
from spkver.errors import SpkverError
from spkver.features.config import FeatureConfig, feature_rate_for
from spkver.features.extraction import low_rate_message
from spkver.features.frontend import extract
from spkver.features.mfcc import deltas, frame_signal, mel_filterbank, mfcc_and_energy, preemphasize, stream_frames
from spkver.features.normalise import normalise, warp
from spkver.features.store import FeatureStore
from spkver.run import RunOptions
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


@pytest.mark.parametrize(("frame_length", "hop"), [(512, 160), (401, 160), (258, 320), (514, 800)])
def test_streamed_frames_equal_the_whole_signal_framed_however_it_is_cut(frame_length, hop):
    rng = np.random.default_rng(frame_length + hop)
    signal = rng.standard_normal(9001).astype(np.float32)
    whole = frame_signal(signal, frame_length, hop), frame_signal(preemphasize(signal), frame_length, hop)
    for cuts in ([], [149], sorted(rng.integers(1, len(signal), 12)), list(range(37, len(signal), 37))):
        blocks = np.split(signal, cuts)
        pairs = list(stream_frames(blocks, frame_length, hop, preemphasis=0.97))
        for streamed, expected in zip(zip(*pairs), whole):
            np.testing.assert_array_equal(np.concatenate(streamed), expected)


def test_deltas_of_a_ramp_are_its_slope_inside_and_reduced_at_edges():
    ramp = np.arange(10, dtype=np.float32)[:, None] * np.array([[1.0, -2.0]], dtype=np.float32)
    d = deltas(ramp, width=2)
    np.testing.assert_allclose(d[2:-2], np.tile([[1.0, -2.0]], (6, 1)), atol=1e-6)
    # First frame: (1*(1-0) + 2*(2-0)) / 10 = 0.5 of the slope.
    np.testing.assert_allclose(d[0], [0.5, -1.0], atol=1e-6)


def test_default_features_are_two_systems_of_124_columns_each_what_its_normalisation_alone_gives():
    rng = np.random.default_rng(1)
    voice = Voice.random(rng)
    signal = synthesize(voice, ["a", "s", "e"], 16000, rng)
    both = extract(signal)
    assert both.shape[1] == 248 and both.dtype == np.float32
    assert FeatureConfig().views == (slice(0, 124), slice(124, 248))
    feats = extract(signal, FeatureConfig(norm="cmn"))
    np.testing.assert_array_equal(both[:, :124], feats)
    np.testing.assert_array_equal(both[:, 124:], extract(signal, FeatureConfig(norm="warp")))
    np.testing.assert_array_equal(extract(signal, FeatureConfig(norm="warp+cmn"))[:, 124:], feats)
    assert feats.shape[1] == 124 and feats.dtype == np.float32
    np.testing.assert_allclose(feats[:, :120].mean(0), 0.0, atol=1e-4)
    cmvn = extract(signal, FeatureConfig(norm="cmvn"))
    np.testing.assert_allclose(cmvn[:, :120].std(0), 1.0, atol=1e-3)
    # The pitch columns keep the voice's own pitch: log F0 of the voiced frames near ln(voice.f0).
    log_f0, aperiodicity = feats[:, 120], feats[:, 123]
    voiced = aperiodicity < 0.2  # the vowels; the fricative and the noise around the word are not
    assert 0.25 < voiced.mean() < 0.75
    assert abs(np.median(log_f0[voiced]) - np.log(voice.f0)) < np.log(1.06)
    np.testing.assert_array_equal(cmvn[:, 120:], feats[:, 120:])
    without = extract(signal, FeatureConfig(pitch=False, norm="cmn"))
    np.testing.assert_array_equal(without, feats[:, :120])


def test_default_band_and_cepstrum_counts_follow_the_band_width():
    assert (FeatureConfig().n_mels, FeatureConfig().n_ceps, FeatureConfig().vad_bands) == (64, 40, 40)
    narrow = FeatureConfig(sample_rate=8000)
    assert (narrow.n_mels, narrow.n_ceps, narrow.vad_bands) == (48, 40, 20)
    assert FeatureConfig(n_mels=24).n_ceps == 24
    assert FeatureConfig(n_ceps=13).n_mels == 64
    # Resolved counts are stored: a model keeps them whatever a later default says.
    assert FeatureConfig.from_dict(FeatureConfig(sample_rate=8000).to_dict()).n_mels == 48


def test_feature_rate_follows_the_training_audio():
    assert feature_rate_for([8000, 8000, 16000]) == 8000
    assert feature_rate_for([8000, 16000, 44100]) == 16000
    assert feature_rate_for([None, 6000]) == 8000
    assert feature_rate_for([None]) == 16000 and feature_rate_for([]) == 16000


@pytest.mark.parametrize(("native", "advice"), [(8000, "--sample-rate 8000"), (4000, "--sample-rate 4000"),
                                              (11025, "--sample-rate 11025"), (500, "at least 1000 Hz")])
def test_low_rate_warning_advises_a_rate_that_fills_the_bands(native, advice):
    # A rate above the audio's own would leave bands empty again, and one below 1000 Hz is refused.
    message = low_rate_message("a.wav", native, 16000)
    assert advice in message and message.count("--sample-rate") <= 1
    if native < 1000:
        with pytest.raises(ValueError, match="at least 1000 Hz"):
            FeatureConfig(sample_rate=native)
    else:
        FeatureConfig(sample_rate=native)


def test_feature_warping_matches_ranks_in_a_sliding_window():
    from scipy.special import ndtri
    from scipy.stats import rankdata

    rng = np.random.default_rng(0)
    x = rng.standard_normal((700, 3)).astype(np.float32)
    x[::5, 0] = 0.25  # ties share their rank
    warped = warp(x, 301)
    for t in (0, 150, 151, 400, 699):
        start = min(max(0, t - 150), 700 - 301)
        rank = rankdata(x[start : start + 301], axis=0)[t - start]
        np.testing.assert_allclose(warped[t], ndtri((rank - 0.5) / 301), atol=1e-6)
    short = warp(x[:50], 301)  # shorter than the window: ranks over the whole utterance (by sorting)
    np.testing.assert_allclose(np.sort(short[:, 1]), ndtri((np.arange(50) + 0.5) / 50), atol=1e-6)
    for n in (1, 2, 7, 300, 301, 302):  # every frame, ties and constant columns, at and around the window
        y = x[:n].copy()
        y[:, 2] = 1.0
        start = np.clip(np.arange(n) - 150, 0, max(n - 301, 0))
        width = min(n, 301)
        expected = [ndtri((rankdata(y[s:s + width], axis=0)[t - s] - 0.5) / width) for t, s in enumerate(start)]
        np.testing.assert_allclose(warp(y, 301), expected, atol=1e-6)
    assert abs(extract(synthesize(Voice.random(rng), ["a", "s", "e"], 16000, rng),
                       FeatureConfig(norm="warp")).mean()) < 0.05


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


def test_feature_store_skips_unchanged_files_and_redoes_changed_ones(synthetic_corpus, tmp_path):
    items = find_audio([synthetic_corpus / "enroll" / "alice"])
    store = FeatureStore(tmp_path / "feats", FeatureConfig())
    first = store.extract(items, run=RunOptions(workers=1))
    npy = sorted((tmp_path / "feats").glob("*.npy"))
    stamps = [p.stat().st_mtime_ns for p in npy]
    time.sleep(0.01)
    again = FeatureStore(tmp_path / "feats").extract(items, run=RunOptions(workers=1))
    assert [p.stat().st_mtime_ns for p in npy] == stamps
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(first, again))
    index = [p.stem for p in npy].index(store.key(items[0].path))
    os.utime(items[0].path)  # touched, same bytes: the hash vouches for the entry, nothing is extracted
    FeatureStore(tmp_path / "feats").extract(items, run=RunOptions(workers=1))
    assert npy[index].stat().st_mtime_ns == stamps[index]
    # Other content of the same size, old modification time restored (as cp -p, rsync -t and tar x do).
    before = items[0].path.stat()
    audio, rate = sf.read(items[0].path, dtype="float32")
    sf.write(items[0].path, np.roll(audio, 4000), rate, subtype=sf.info(str(items[0].path)).subtype)
    os.utime(items[0].path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert items[0].path.stat().st_size == before.st_size
    assert items[0].path.stat().st_mtime_ns == before.st_mtime_ns
    redone = FeatureStore(tmp_path / "feats").extract(items, run=RunOptions(workers=1))
    redone = {str(i.path): a for i, a in redone}
    assert npy[index].stat().st_mtime_ns != stamps[index]
    np.testing.assert_array_equal(redone[str(items[0].path)], extract(np.roll(audio, 4000)))
    with pytest.raises(SpkverError, match="other settings"):
        FeatureStore(tmp_path / "feats", FeatureConfig(n_ceps=13))


@pytest.mark.parametrize("header", ["{'descr': '<f4', 'fortran_order'{ False, 'shape': (2,), }",  # untokenisable
                                    "{'descr': '<f4', 'fortran_order': False, 'shape': (2,)) }"])  # not a literal
def test_a_feature_file_with_a_damaged_header_is_extracted_again(synthetic_corpus, tmp_path, header):
    items = find_audio([synthetic_corpus / "enroll" / "alice"])[:1]
    first = np.array(FeatureStore(tmp_path / "feats", FeatureConfig()).extract(items, run=RunOptions(workers=1))[0][1])
    npy = next((tmp_path / "feats").glob("*.npy"))
    header = header.ljust(117) + "\n"
    damaged = tmp_path / "damaged.npy"  # replaced, not rewritten in place: the store maps its files
    damaged.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + bytes(8))
    damaged.replace(npy)
    store = FeatureStore(tmp_path / "feats")
    assert store.open(npy.stem) is None
    again = store.extract(items, run=RunOptions(workers=1))
    np.testing.assert_array_equal(again[0][1], first)


def test_train_on_feature_store_equals_train_on_audio(synthetic_corpus, tmp_path):
    runner = CliRunner()
    background = str(synthetic_corpus / "background")
    assert runner.invoke(cli, ["-q", "extract", "-o", str(tmp_path / "feats"), background]).exit_code == 0
    common = ["--components", "8", "--iterations", "4", "--seed", "3"]
    r1 = runner.invoke(cli, ["-q", "train-ubm", "-o", str(tmp_path / "a.npz"), *common, "--features",
                             str(tmp_path / "feats")])
    r2 = runner.invoke(cli, ["-q", "train-ubm", "-o", str(tmp_path / "b.npz"), *common, "--no-cache", background])
    r3 = runner.invoke(cli, ["-q", "train-ubm", "-o", str(tmp_path / "c.npz"), *common, "--cache-dir",
                             str(tmp_path / "cache"), background])
    assert r1.exit_code == r2.exit_code == r3.exit_code == 0, r1.stderr + r2.stderr + r3.stderr
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes() == (tmp_path / "c.npz").read_bytes()
    assert any((tmp_path / "cache").rglob("index.json"))


def test_extract_adds_to_a_store_with_its_own_settings(synthetic_corpus, tmp_path):
    from spkver.features.store import FeatureStore

    runner = CliRunner()
    feats = tmp_path / "feats"
    # A store written with settings other than today's defaults (as one from before pitch features).
    first = runner.invoke(cli, ["extract", "-o", str(feats), "--no-pitch", str(synthetic_corpus / "background")])
    assert first.exit_code == 0, first.stderr
    entries = len(FeatureStore(feats).entries)
    added = runner.invoke(cli, ["extract", "-o", str(feats), str(synthetic_corpus / "enroll")])
    assert added.exit_code == 0, added.stderr
    assert "adding with the store's feature settings (240-dim" in added.stderr
    store = FeatureStore(feats)
    assert store.config.pitch is False and len(store.entries) == entries + 6
    assert {store.open(key).shape[1] for key in store.entries} == {240}
    # An option that agrees with the store is accepted; one that would change a setting is refused, named as
    # typed, and the store is left as it was.
    same = runner.invoke(cli, ["extract", "-o", str(feats), "--no-pitch", "--n-ceps", "40",
                               str(synthetic_corpus / "test" / "alice")])
    assert same.exit_code == 0, same.stderr
    # The Nyquist frequency typed out is the store's "up to Nyquist"; both spellings of the norm: one warning.
    typed = runner.invoke(cli, ["extract", "-o", str(feats), "--fmax", "8000", "--norm", "cmn+warp",
                                "--feature-norm", "cmn+warp", str(synthetic_corpus / "test" / "alice")])
    assert typed.exit_code == 0, typed.stderr
    assert typed.stderr.count("spkver: warning:") == 1 and "--norm" in typed.stderr, typed.stderr
    index = (feats / "index.json").read_bytes()
    # Run again: nothing to extract, so no progress line (off a terminal it would read "0 of 0").
    again = runner.invoke(cli, ["extract", "-o", str(feats), str(synthetic_corpus / "test" / "alice")])
    assert again.exit_code == 0 and "features:" not in again.stderr and "3 of 3 files" in again.stderr, again.stderr
    assert (feats / "index.json").read_bytes() == index
    for options, named in [(["--n-ceps", "13"], "--n-ceps 13 where the store has --n-ceps 40"),
                           (["--pitch"], "--pitch where the store has --no-pitch"),
                           (["--feature-norm", "cmvn"],
                            "--feature-norm cmvn where the store has --feature-norm cmn+warp")]:
        other = runner.invoke(cli, ["extract", "-o", str(feats), *options, str(synthetic_corpus / "test")])
        errors = [line for line in other.stderr.splitlines() if line.startswith("spkver: error:")]
        assert other.exit_code == 2 and len(errors) == 1, other.stderr
        assert errors[0].startswith(f"spkver: error: {feats}: ") and named in errors[0], errors[0]
        assert (feats / "index.json").read_bytes() == index
    # An index that is not a readable file, or from a newer spkver, is refused before any extraction.
    for damage, problem in [("folder", "not a readable file"), ("newer", "newer than this spkver reads")]:
        broken = tmp_path / damage
        if damage == "folder":
            (broken / "index.json").mkdir(parents=True)
        else:
            broken.mkdir()
            (broken / "index.json").write_text(json.dumps({"format": 99, "entries": {}}))
        result = runner.invoke(cli, ["extract", "-o", str(broken), str(synthetic_corpus / "test")])
        errors = [line for line in result.stderr.splitlines() if line.startswith("spkver: error:")]
        assert result.exit_code == 2 and len(errors) == 1 and problem in errors[0], result.stderr
        assert not list(broken.rglob("*.npy"))


def test_extract_never_scatters_a_store_among_other_files(synthetic_corpus, tmp_path, monkeypatch):
    runner = CliRunner()
    audio = str(synthetic_corpus / "test" / "alice")
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("mine")
    (home / "a.npy").write_bytes(b"not ours")
    # Names a store uses do not make a link or a folder the store's own.
    linked, nested = tmp_path / "linked", tmp_path / "nested"
    linked.mkdir()
    (linked / ("a" * 24 + ".npy")).symlink_to(home / "notes.txt")
    (nested / ".index.json.x.tmp").mkdir(parents=True)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for output, problem in [(home, "folder holds other files (a.npy and 1 more)"),
                            (home / "notes.txt", "is a file, not a feature store folder"),
                            (linked, "folder holds other files"), (nested, "folder holds other files"),
                            (tmp_path / "dangling", "is a link to nothing")]:
        result = runner.invoke(cli, ["extract", "-o", str(output), audio])
        # Refused before any audio is read: the error is the only line.
        assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.stderr
        assert result.stderr.startswith(f"spkver: error: {output}: {problem}"), result.stderr
    assert sorted(p.name for p in home.iterdir()) == ["a.npy", "notes.txt"]
    # "-" is standard output, which cannot hold a folder: refused, and no folder named "-" appears.
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(cli, ["extract", "-o", "-", audio])
    assert result.exit_code == 2 and "standard output" in result.stderr and not (tmp_path / "-").exists()
    # A folder holding only a store's own files (a run killed before its first index) is taken up again.
    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / ("0" * 24 + ".npy")).write_bytes(b"")
    (killed / ".lock").write_bytes(b"")
    result = runner.invoke(cli, ["extract", "-o", str(killed), audio])
    assert result.exit_code == 0 and (killed / "index.json").is_file(), result.stderr
