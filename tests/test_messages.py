"""Messages that say what is wrong, and identify's open set."""

import json
import shutil

import numpy as np
import pytest
import soundfile as sf
from helpers import make_store, one_error_line, run_cli

from spkver.backend.calibration import fit_calibration, save_calibration
from spkver.backend.metrics import bayes_threshold

run = run_cli


@pytest.fixture(scope="module")
def store(synthetic_corpus, tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("messages"), synthetic_corpus)


def one_error(result, *parts):
    assert result.exit_code == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("spkver: error: "), result.stderr
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


def verify(store, models, speaker, audio):
    return run("verify", "--ubm", store / "ubm.npz", "--models", models, "--speaker", speaker, audio)


def test_missing_models_folder_file_as_folder_and_unknown_speaker_are_told_apart(store, synthetic_corpus):
    test = next((synthetic_corpus / "test" / "alice").glob("*.wav"))
    one_error(verify(store, store / "modles", "alice", test), "modles: no such models folder")
    one_error(run("identify", "--ubm", store / "ubm.npz", "--models", store / "modles", test),
              "no such models folder")
    one_error(verify(store, store / "models" / "alice.npz", "alice", test),
              "alice.npz: is a file, not a models folder", str(store / "models"))
    one_error(verify(store, store / "models", "carol", test),
              "speaker 'carol' is not enrolled (no carol.npz; enrolled: alice, bob)")


def test_an_unknown_speaker_lists_at_most_ten_enrolled_ids(store, synthetic_corpus, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    for i in range(13):
        shutil.copy(store / "models" / "alice.npz", models / f"s{i:02d}.npz")
    line = one_error(verify(store, models, "carol", next((synthetic_corpus / "test").rglob("*.wav"))),
                     "enrolled: s00, s01, s02, s03, s04, s05, s06, s07, s08, s09 and 3 more")
    assert "s10" not in line
    empty = tmp_path / "empty"
    empty.mkdir()
    one_error(verify(store, empty, "carol", next((synthetic_corpus / "test").rglob("*.wav"))),
              "no speaker is enrolled in this folder")


@pytest.mark.parametrize("name, content, what", [
    ("trials.txt", b"alice test/a.wav target\nbob test/b.wav nontarget\n", "it is text: a trials, list or score file?"),
    ("cal.json", b'{"scale": 1.0, "offset": 0.0}', "it is JSON text: a calibration file?"),
    ("random.npz", bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8)), "it is binary data"),
    ("empty.npz", b"", "it is empty"),
])
def test_info_on_a_file_that_is_not_a_model_says_what_it_is(tmp_path, name, content, what):
    path = tmp_path / name
    path.write_bytes(content)
    line = one_error(run("info", path), f"{name}: not a spkver model file ({what})")
    assert "pickled" not in line


def test_info_on_audio_and_on_a_model_folder(tmp_path, store):
    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros(1600, dtype=np.float32), 16000)
    one_error(run("info", wav), "not a spkver model file (it is WAV audio)")
    flac = tmp_path / "a.flac"
    sf.write(flac, np.zeros(1600, dtype=np.float32), 16000)
    one_error(run("info", flac), "not a spkver model file (it is FLAC audio)")
    one_error(run("info", store / "models"), "is a folder, not a model file")


def identify_rows(result):
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    return lines[0], [line.split("\t") for line in lines[1:]]


def test_identify_is_open_set_with_verifys_threshold_by_default(store, synthetic_corpus, tmp_path):
    # Only alice enrolled: bob's files are no one's, and verify rejects them at its default threshold.
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(store / "models" / "alice.npz", models)
    tests = sorted((synthetic_corpus / "test").rglob("*.wav"))
    common = ["-q", "identify", "--ubm", store / "ubm.npz", "--models", models, *tests]
    header, rows = identify_rows(run(*common))
    assert header == "# spkver identify: open set, 'unknown' below threshold 0.000000"
    verdicts = run("-q", "verify", "--ubm", store / "ubm.npz", "--models", models, "--speaker", "alice", *tests)
    accepted = {line.split("\t")[1]: line.split("\t")[3] == "accept" for line in verdicts.stdout.splitlines()}
    assert [r[1] for r in rows] == ["alice" if accepted[r[0]] else "unknown" for r in rows]
    assert "unknown" in [r[1] for r in rows] and "alice" in [r[1] for r in rows]
    header, rows = identify_rows(run(*common, "--closed-set"))
    assert header == "# spkver identify: closed set" and {r[1] for r in rows} == {"alice"}
    records = [json.loads(line) for line in run(*common, "--json", "--closed-set").stdout.splitlines()]
    assert {(r["mode"], r["threshold"]) for r in records} == {("closed-set", None)}
    records = [json.loads(line) for line in run(*common, "--json", "--threshold", "-1e9").stdout.splitlines()]
    assert {(r["mode"], r["threshold"], r["decision"]) for r in records} == {("open-set", -1e9, "alice")}
    one_error(run(*common, "--closed-set", "--threshold", "1"), "--closed-set", "--threshold")


def test_identify_with_a_calibration_decides_at_the_bayes_threshold(store, synthetic_corpus, tmp_path):
    cal = tmp_path / "cal.json"
    save_calibration(cal, fit_calibration([1.0, 2.0, 3.0], [-1.0, -2.0, 0.5], 0.1))
    test = next((synthetic_corpus / "test").rglob("*.wav"))
    args = ["-q", "identify", "--ubm", store / "ubm.npz", "--models", store / "models", "--calibration", cal, test]
    header, _ = identify_rows(run(*args, "--p-target", "0.1"))
    assert header == f"# spkver identify: open set, 'unknown' below threshold {bayes_threshold(0.1):.6f}"


def test_a_trial_of_an_unknown_speaker_names_its_line_and_the_speaker_once(store, synthetic_corpus, tmp_path):
    test = next((synthetic_corpus / "test" / "alice").glob("*.wav"))
    trials = tmp_path / "trials"
    trials.write_text(f"alice {test}\ncarol {test}\n")
    common = ["--ubm", store / "ubm.npz", "--models", store / "models", "--trials", trials]
    line = one_error(run("score", *common, "-o", tmp_path / "s"), "trials: line 2: ",
                     "speaker 'carol' is not enrolled")
    assert line.count("carol") == 2  # the speaker and its missing model file, each once
    skipped = run("score", *common, "--skip-bad", "-o", tmp_path / "s")
    assert skipped.exit_code == 0 and skipped.stderr.count("'carol'") == 1, skipped.stderr


# Errors about a file the user gave name that file first.


def test_identify_on_an_empty_models_folder_names_the_folder(store, synthetic_corpus, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    test = next((synthetic_corpus / "test").rglob("*.wav"))
    one_error(run("identify", "--ubm", store / "ubm.npz", "--models", empty, test),
              f"{empty}: no speaker is enrolled in this folder")


def score_command(store, synthetic_corpus, tmp_path):
    test = next((synthetic_corpus / "test" / "alice").glob("*.wav"))
    trials = tmp_path / "trials"
    trials.write_text(f"alice {test} target\nbob {test} nontarget\n")
    return ["-q", "score", "--ubm", store / "ubm.npz", "--models", store / "models", "--trials", trials,
            "-o", tmp_path / "scores"]


def test_a_cohort_of_models_only_for_z_norm_names_the_cohort(store, synthetic_corpus, tmp_path):
    # A cohort of models only has no recordings to Z-normalise with.
    one_error(run(*score_command(store, synthetic_corpus, tmp_path), "--score-norm", "z", "--cohort", store / "models"),
              f"{store / 'models'}: Z- and S-norm need cohort recordings")


def test_a_cohort_of_unusable_recordings_names_the_cohort(store, synthetic_corpus, tmp_path):
    common = score_command(store, synthetic_corpus, tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("a.wav", "b.wav"):
        (bad / name).write_bytes(b"not audio")
    result = run(*common, "--score-norm", "s", "--cohort", bad)
    one_error_line(result, f"{bad}: every cohort recording was skipped")
    assert not (tmp_path / "scores").exists()


def test_pairs_name_the_wav_scp_or_data_folder_of_pipes_or_segments(store, synthetic_corpus, tmp_path):
    alice, bob = (next((synthetic_corpus / "test" / name).glob("*.wav")) for name in ("alice", "bob"))
    pairs = tmp_path / "pairs"
    pairs.write_text("target u1 u2\n")
    scp = tmp_path / "wav.scp"
    scp.write_text(f"u1 cat {alice} |\nu2 {bob}\n")
    common = ["-q", "score", "--ubm", store / "ubm.npz", "--pairs", pairs, "-o", tmp_path / "scores"]
    one_error(run(*common, "--wav-scp", scp, "--allow-pipes"), f"{scp}: --pairs reads whole files")
    data = tmp_path / "data"
    data.mkdir()
    (data / "wav.scp").write_text(f"r1 {alice}\n")
    (data / "segments").write_text("u1 r1 0 0.5\nu2 r1 0.5 1.0\n")
    one_error(run(*common, "--data-dir", data), f"{data}: --pairs reads whole files")


def test_feature_options_a_store_cannot_take_name_the_store(synthetic_corpus, tmp_path):
    features = tmp_path / "features"
    audio = synthetic_corpus / "background" / "bg0"
    assert run("-q", "extract", "-o", features, "--workers", 1, audio).exit_code == 0
    one_error(run("-q", "extract", "-o", features, "--n-ceps", 500, audio),
              f"{features}: feature options do not fit the store's settings", "need 1 <= n_ceps <= n_mels")
    one_error(run("-q", "train-ubm", "--features", features, "--n-ceps", 500, "-o", tmp_path / "ubm.npz"),
              f"{features}: feature options do not fit the store's settings", "to train on it")
