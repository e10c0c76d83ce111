"""Files a team can share: modes from the umask, no lock files left behind, caches that say where they are."""

import os
import stat

import pytest
from helpers import make_store, run_cli


@pytest.fixture(scope="module")
def store(synthetic_corpus, tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("sharing"), synthetic_corpus)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask():
    previous = os.umask(0o022)
    yield lambda value: os.umask(value)
    os.umask(previous)


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_follow_the_umask(store, synthetic_corpus, tmp_path, umask, mask, expected):
    umask(mask)
    alice = sorted((synthetic_corpus / "enroll" / "alice").glob("*.wav"))
    models = tmp_path / "models"
    result = run_cli("enroll", "--ubm", store / "ubm.npz", "--models", models, "--speaker", "carol", *alice)
    assert result.exit_code == 0
    trials = tmp_path / "trials"
    trials.write_text(f"carol {alice[0]} target\n")
    assert run_cli("score", "--ubm", store / "ubm.npz", "--models", models, "--trials", trials,
                   "--score-norm", "none", "-o", tmp_path / "s.tsv").exit_code == 0
    for written in (models / "carol.npz", tmp_path / "s.tsv"):
        assert mode(written) == expected, (written, oct(mode(written)))


def test_no_lock_file_is_left_in_the_model_store(store, synthetic_corpus, tmp_path):
    alice = sorted((synthetic_corpus / "enroll" / "alice").glob("*.wav"))
    models = tmp_path / "models"
    for speaker in ("dave", "erin"):
        assert run_cli("enroll", "--ubm", store / "ubm.npz", "--models", models, "--speaker", speaker,
                       *alice).exit_code == 0
    assert sorted(p.name for p in models.iterdir()) == ["dave.npz", "erin.npz"]


def test_the_run_that_creates_the_feature_cache_says_where_and_how_big(synthetic_corpus, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("SPKVER_CACHE_DIR", str(cache))
    files = sorted((synthetic_corpus / "background").rglob("*.wav"))[:6]
    command = ["train-ubm", "-o", tmp_path / "u.npz", "--components", 4, "--iterations", 2, "--workers", 1,
               "--force", *files]
    first = run_cli(*command)
    assert first.exit_code == 0, first.stderr
    said = [line for line in first.stderr.splitlines() if "cached in" in line]
    assert len(said) == 1 and str(cache) in said[0] and " MB" in said[0] and "spkver cache clear" in said[0]
    second = run_cli(*command)
    assert second.exit_code == 0 and "cached in" not in second.stderr


def test_cache_info_and_clear(store, synthetic_corpus, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("SPKVER_CACHE_DIR", str(cache))
    files = sorted((synthetic_corpus / "background").rglob("*.wav"))[:6]
    assert run_cli("train-ubm", "-o", tmp_path / "u.npz", "--components", 4, "--iterations", 2, "--workers", 1,
                   *files).exit_code == 0
    (cache / "notes.txt").write_text("not spkver's")  # a shared folder: clear must leave this alone
    models = tmp_path / "models"
    (models / ".cohort-cache").mkdir(parents=True)
    (models / ".cohort-cache" / "x-z.json").write_text("{}")
    (models / "keep.npz").write_bytes((store / "models" / "alice.npz").read_bytes())

    info = run_cli("cache", "info", "--models", models)
    assert info.exit_code == 0, info.stderr
    rows = [line.split("\t") for line in info.stdout.splitlines() if line.startswith("  ")]
    assert [r[0].strip() for r in rows] == ["features", "cohort scores"]
    assert rows[0][2] == f"{len(files) + 1} files"  # one feature file per recording, and the index
    assert info.stdout.splitlines()[-1].startswith("total: ")

    cleared = run_cli("cache", "clear", "--models", models)
    assert cleared.exit_code == 0, cleared.stderr
    assert [p.name for p in cache.iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in models.iterdir()) == ["keep.npz"]
    again = run_cli("cache", "clear")
    assert again.exit_code == 0 and again.stdout.strip().endswith("freed 0.0 MB")


def test_cache_of_a_missing_models_folder_is_an_error(tmp_path):
    result = run_cli("cache", "info", "--models", tmp_path / "nowhere")
    assert result.exit_code == 2 and "no such models folder" in result.stderr
