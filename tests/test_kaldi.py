"""Kaldi data folders: wav.scp with pipes, segments, utt2spk/spk2utt, outputs by utterance id, safe caching."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from helpers import make_store, run_cli

from spkver.audio.sources import AudioItem, read_data_dir, read_list
from spkver.errors import SpkverError
from spkver.features.config import FeatureConfig
from spkver.features.extraction import features_of, iter_features
from spkver.features.frontend import extract
from spkver.features.store import FeatureStore
from spkver.synth import Voice, utterance

RATE = 16000


@pytest.fixture(scope="module")
def store(synthetic_corpus, tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("kaldi-store"), synthetic_corpus)


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    """A 4-second synthetic recording at the feature rate (so cutting needs no resampling)."""
    folder = tmp_path_factory.mktemp("recording")
    rng = np.random.default_rng(3)
    signal = np.concatenate([utterance(Voice.random(rng), 3, RATE, rng) for _ in range(3)]).astype(np.float32)
    path = folder / "rec.wav"
    sf.write(path, signal, RATE, subtype="FLOAT")
    return path, signal


def data_dir(folder, **tables):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in tables.items():
        (folder / name).write_text(text)
    return folder


def verify(store, *args):
    return run_cli("verify", "--ubm", store / "ubm.npz", "--models", store / "models", "--speaker", "alice",
                   "--workers", 1, *args)


def test_piped_wav_scp_is_read_and_named_by_utterance_id(store, synthetic_corpus, tmp_path):
    wav = synthetic_corpus / "test" / "alice" / "alice_0.wav"
    folder = data_dir(tmp_path / "data", **{"wav.scp": f"piped cat '{wav}' |\nplain {wav}\n"})
    result = verify(store, "--data-dir", folder)
    assert result.exit_code == 0, result.stderr
    lines = [line.split("\t") for line in result.stdout.splitlines()]
    assert [fields[1] for fields in lines] == ["piped", "plain"]
    assert lines[0][2] == lines[1][2]  # the same audio through a pipe and from the file
    direct = verify(store, wav)
    assert direct.stdout.split("\t")[2] == lines[0][2] and direct.stdout.split("\t")[1] == str(wav)


@pytest.mark.parametrize("command, status", [("false", 1), ("exit 3", 3)])
def test_failing_command_names_the_utterance_and_status(store, tmp_path, command, status):
    folder = data_dir(tmp_path / "data", **{"wav.scp": f"broken {command} |\n"})
    result = verify(store, "--data-dir", folder)
    assert result.exit_code == 2
    assert "utterance broken" in result.stderr and f"exited with status {status}" in result.stderr
    assert "wav.scp line 1" in result.stderr.strip().splitlines()[-1]


def test_command_output_that_is_empty_or_not_audio(store, tmp_path):
    folder = data_dir(tmp_path / "data", **{"wav.scp": "empty true |\n"})
    result = verify(store, "--data-dir", folder)
    assert result.exit_code == 2 and "utterance empty" in result.stderr and "empty output" in result.stderr
    folder = data_dir(tmp_path / "data2", **{"wav.scp": "text echo hello |\n"})
    result = verify(store, "--data-dir", folder)
    assert result.exit_code == 2 and "not a readable audio file" in result.stderr


def test_pipes_in_a_list_need_allow_pipes(store, synthetic_corpus, tmp_path):
    wav = synthetic_corpus / "test" / "alice" / "alice_0.wav"
    listing = tmp_path / "test.scp"
    listing.write_text(f"u1 cat '{wav}' |\n")
    refused = verify(store, "--list", listing)
    assert refused.exit_code == 2 and "line 1" in refused.stderr and "--allow-pipes" in refused.stderr
    allowed = verify(store, "--list", listing, "--allow-pipes")
    assert allowed.exit_code == 0, allowed.stderr
    with pytest.raises(SpkverError, match="line 1: a piped command needs an utterance id"):
        listing.write_text("false |\n")
        read_list(listing, allow_pipes=True)


def test_allow_pipes_without_a_list_is_a_warning(store, synthetic_corpus):
    result = verify(store, "--allow-pipes", synthetic_corpus / "test" / "alice" / "alice_0.wav")
    assert result.exit_code == 0 and "--allow-pipes has no effect" in result.stderr


def test_segments_equal_samples_cut_by_hand(recording, tmp_path):
    path, signal = recording
    folder = data_dir(tmp_path / "data", **{"wav.scp": f"rec {path}\n",
                                            "segments": "a rec 0.25 1.9\nb rec 1.5 -1\n"})
    config = FeatureConfig()
    items = read_data_dir(folder).items
    assert [(i.key, i.start, i.end) for i in items] == [("a", 0.25, 1.9), ("b", 1.5, None)]
    by_hand = [signal[4000:30400], signal[24000:]]
    for item, samples in zip(items, by_hand):
        np.testing.assert_array_equal(features_of(item, config), extract(samples, config))


def test_segments_of_a_piped_recording_run_its_command_once(recording, tmp_path):
    path, signal = recording
    counter = tmp_path / "runs"
    folder = data_dir(tmp_path / "data", **{"wav.scp": f"rec echo run >> {counter}; cat {path} |\n",
                                            "segments": "a rec 0 1\nb rec 1 2\nc rec 2 3\n"})
    results = list(iter_features(read_data_dir(folder).items, FeatureConfig(), workers=1))
    assert [error for _, _, error, _ in results] == [None, None, None]
    assert counter.read_text().count("run") == 1
    np.testing.assert_array_equal(results[1][1], extract(signal[16000:32000], FeatureConfig()))


def test_segment_beyond_its_recording_names_the_line(store, recording, tmp_path):
    path, signal = recording
    end = len(signal) / RATE
    folder = data_dir(tmp_path / "data", **{"wav.scp": f"rec {path}\n",
                                            "segments": f"ok rec 0 1\nlate rec {end + 1} {end + 2}\n"})
    result = verify(store, "--data-dir", folder)
    assert result.exit_code == 2 and "segments line 2" in result.stderr and "after the end" in result.stderr
    folder = data_dir(tmp_path / "data2", **{"wav.scp": f"rec {path}\n", "segments": f"long rec 1 {end + 5}\n"})
    result = verify(store, "--data-dir", folder)
    assert result.exit_code == 2 and "segment ends at" in result.stderr


@pytest.mark.parametrize("tables, message", [
    ({"segments": "s1 nope 0 1\n"}, "segments: line 1: recording id 'nope' is not in wav.scp"),
    ({"segments": "s1 r1 0 1\ns1 r1 1 2\n"}, "segments: line 2: repeats the id 's1' of line 1"),
    ({"segments": "s1 r1 2 1\n"}, "segments: line 1: end 1 is not after start 2"),
    ({"segments": "s1 r1 1 1\n"}, "segments: line 1: end 1 is not after start 1"),
    ({"segments": "s1 r1 zero 1\n"}, "segments: line 1: start 'zero' is not a number"),
    ({"segments": "s1 r1 0\n"}, "segments: line 1: expected"),
    ({"wav.scp": "r1 a.wav\nr1 b.wav\n"}, "wav.scp: line 2: repeats the id 'r1' of line 1"),
    ({"utt2spk": "r1 alice\nr9 bob\n"}, "utt2spk: line 2: utterance 'r9' is not in wav.scp"),
    ({"utt2spk": "r1 alice\n"}, "utterance 'r2' has no speaker"),
    ({"utt2spk": "r1 alice\nr2 bob\n", "spk2utt": "alice r1 r2\n"},
     "spk2utt: line 1: utterance 'r2' of speaker 'alice' has speaker 'bob' in utt2spk line 2"),
    ({"utt2spk": "r1 alice\nr2 bob\n", "spk2utt": "alice r1\n"}, "utt2spk: line 2: utterance 'r2' is not in spk2utt"),
    ({"spk2utt": "alice r1\nbob r1 r2\n"}, "spk2utt: line 2: utterance 'r1' is listed again"),
])
def test_data_folder_errors_name_file_and_line(tmp_path, tables, message):
    tables = {"wav.scp": "r1 a.wav\nr2 b.wav\n", **tables}
    with pytest.raises(SpkverError) as caught:
        read_data_dir(data_dir(tmp_path / "data", **tables))
    assert message in str(caught.value)


def test_data_folder_speakers_from_either_table(tmp_path):
    base = {"wav.scp": "r1 a.wav\nr2 b.wav\nr3 c.wav\n"}
    both = read_data_dir(data_dir(tmp_path / "both", **base, utt2spk="r1 x\nr2 y\nr3 x\n", spk2utt="x r1 r3\ny r2\n"))
    only = read_data_dir(data_dir(tmp_path / "only", **base, utt2spk="r1 x\nr2 y\nr3 x\n"))
    assert both.speakers == only.speakers == {"x": ["r1", "r3"], "y": ["r2"]}
    assert [i.key for i in only.items_of("x")] == ["r1", "r3"]


def test_cache_keys_segments_apart_and_never_serves_piped_audio(recording, tmp_path):
    path, _ = recording
    counter = tmp_path / "runs"
    piped = AudioItem("p", tmp_path / "wav.scp", command=f"echo run >> {counter}; cat {path}")
    first, second = AudioItem("a", path, start=0.0, end=1.0), AudioItem("b", path, start=1.0, end=2.0)
    whole = AudioItem(str(path), path)
    keys = {FeatureStore.key(i) for i in (piped, first, second, whole)}
    assert len(keys) == 4 and FeatureStore.key(whole) == FeatureStore.key(path)  # old stores stay valid
    store = FeatureStore(tmp_path / "cache", FeatureConfig())
    once = store.extract([piped, first, second])
    again = FeatureStore(tmp_path / "cache").extract([piped, first, second])
    assert counter.read_text().count("run") == 2  # the command ran again: its output is never taken from the cache
    for (_, a), (_, b) in zip(once, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(once[1][1][:10], once[2][1][:10])
    assert first.identity() != second.identity() and piped.identity() is None


def test_score_with_data_dir_trials_by_utterance_id(store, synthetic_corpus, tmp_path):
    wav = synthetic_corpus / "test" / "alice" / "alice_0.wav"
    folder = data_dir(tmp_path / "data", **{"wav.scp": f"r1 cat {wav} |\n", "segments": "s1 r1 0 -1\ns2 r1 0.1 -1\n"})
    trials = tmp_path / "trials"
    trials.write_text("alice s1 target\nbob s2 nontarget\n")
    out = tmp_path / "scores.tsv"
    result = run_cli("score", "--ubm", store / "ubm.npz", "--models", store / "models", "--trials", trials,
                     "--data-dir", folder, "--score-norm", "none", "-o", out, "--workers", 1)
    assert result.exit_code == 0, result.stderr
    assert [line.split("\t")[1] for line in out.read_text().splitlines()] == ["s1", "s2"]


def test_identify_and_train_ubm_read_data_folders(store, synthetic_corpus, tmp_path):
    wavs = sorted((synthetic_corpus / "background").rglob("*.wav"))
    scp = "".join(f"bg{i} {w}\n" for i, w in enumerate(wavs))
    folder = data_dir(tmp_path / "data", **{"wav.scp": scp})
    result = run_cli("identify", "--ubm", store / "ubm.npz", "--models", store / "models", "--data-dir", folder,
                     "--json", "--workers", 1)
    assert result.exit_code == 0, result.stderr
    assert [json.loads(line)["path"] for line in result.stdout.splitlines()][:2] == ["bg0", "bg1"]
    out = tmp_path / "ubm.npz"
    result = run_cli("train-ubm", "-o", out, "--components", 8, "--iterations", 2, "--workers", 1, "--no-cache",
                     "--data-dir", folder)
    assert result.exit_code == 0, result.stderr


def test_piped_list_lines_run_in_the_lists_folder_and_stay_apart(store, synthetic_corpus, tmp_path):
    """Two piped lines with relative paths: each runs beside the list, and each is scored on its own audio."""
    lists = tmp_path / "lists"
    lists.mkdir()
    for name in ("alice", "bob"):
        (lists / f"{name}.wav").write_bytes((synthetic_corpus / "test" / name / f"{name}_0.wav").read_bytes())
    listing = lists / "test.scp"
    listing.write_text("u-alice cat alice.wav |\nu-bob cat bob.wav |\n")
    result = verify(store, "--list", listing, "--allow-pipes")
    assert result.exit_code == 0, result.stderr
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert [r[1] for r in rows] == ["u-alice", "u-bob"]  # named by utterance id, not by the folder
    direct = verify(store, lists / "alice.wav", lists / "bob.wav")
    assert [r[2] for r in rows] == [line.split("\t")[2] for line in direct.stdout.splitlines()]
    assert rows[0][2] != rows[1][2]
    trials = lists / "trials"
    trials.write_text("alice u-alice\nalice u-bob\n")
    scored = run_cli("-q", "score", "--ubm", store / "ubm.npz", "--models", store / "models", "--trials", trials,
                     "--wav-scp", listing, "--allow-pipes", "--score-norm", "none", "-o", "-")
    assert scored.exit_code == 0, scored.stderr
    lines = [line.split("\t") for line in scored.stdout.splitlines() if not line.startswith("#")]
    assert [float(r[2]) for r in lines] == pytest.approx([float(r[2]) for r in rows], abs=1e-5)



def test_a_recording_is_hashed_once_for_all_its_segments(recording, tmp_path, monkeypatch):
    import spkver.features.store as store_module

    path, _ = recording
    hashed = []
    real = store_module.content_hash
    monkeypatch.setattr(store_module, "content_hash", lambda p: hashed.append(p) or real(p))
    segments = [AudioItem(f"s{i}", path, start=0.5 * i, end=0.5 * i + 1.0) for i in range(5)]
    FeatureStore(tmp_path / "cache", FeatureConfig()).extract(segments)
    assert len(hashed) == 1
