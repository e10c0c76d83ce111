"""Storage faults, run for real: read-only folders, full disks, files where folders belong.

Every one must end in exit code 2 with one line naming the file (or, for caches and checkpoints,
a warning and a finished job), leave every existing model as it was and no temporary file behind.
The test suite runs as root here, which ignores permissions, so read-only and full file systems are
tmpfs mounts (skipped where mounting is not allowed) and ENOSPC is also injected where files are written.
"""

import contextlib
import errno
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner
from helpers import make_store

from spkver.backend.fusion import Fusion, fusion_json
from spkver.cli.main import cli
from spkver.storage.models import load_model


def run(*args, env=None):
    return CliRunner(env=env).invoke(cli, [str(a) for a in args], catch_exceptions=False)


def clean_exit_2(result, *needles):
    errors = [line for line in result.stderr.splitlines() if line.startswith("spkver: error:")]
    assert result.exit_code == 2, (result.exit_code, result.stderr)
    assert len(errors) == 1 and all(n in errors[0] for n in needles), result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr


@pytest.fixture(scope="module")
def store(synthetic_corpus, tmp_path_factory):
    """A small UBM and enrolled speakers (helpers.make_store)."""
    return make_store(tmp_path_factory.mktemp("faults"), synthetic_corpus, speakers=("alice",), iterations=2)


def inputs(corpus: Path, tmp_path: Path):
    """Enrollment audio, background audio, a one-line trial list and a small labelled score file."""
    trials = tmp_path / "trials"
    trials.write_text(f"alice {sorted((corpus / 'test' / 'alice').glob('*.wav'))[0]} target\n")
    scores = tmp_path / "dev.tsv"
    scores.write_text("a\tt1\t1.0\ttarget\na\tt2\t-1.0\tnontarget\n")
    return corpus / "enroll" / "alice", corpus / "background", trials, scores


def contents(folder: Path):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@contextlib.contextmanager
def tmpfs(tmp_path, options):
    """A tmpfs mounted at a new folder of ``tmp_path`` (skips the test where mounting is not allowed)."""
    mount = tmp_path / f"mnt-{uuid.uuid4().hex[:8]}"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], capture_output=True)
    if result.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def remount_read_only(mount):
    subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)


def test_read_only_folder(store, synthetic_corpus, tmp_path):
    with tmpfs(tmp_path, "size=32m") as mount:
        shutil.copytree(store / "models", mount / "models")
        shutil.copy(store / "ubm.npz", mount / "ubm.npz")
        (mount / "cache").mkdir()
        remount_read_only(mount)
        before = contents(mount)
        alice, background, trials, scores = inputs(synthetic_corpus, tmp_path)
        ubm, models = mount / "ubm.npz", mount / "models"
        clean_exit_2(run("train-ubm", "-o", mount / "new.npz", "--components", 4, background), "not writable")
        clean_exit_2(run("enroll", "--ubm", ubm, "--models", models, "--speaker", "bob", alice), str(mount))
        clean_exit_2(run("enroll", "--ubm", ubm, "--models", models, "--speaker", "alice", "--force", alice),
                     str(mount))
        clean_exit_2(run("score", "--ubm", ubm, "--models", models, "--trials", trials, "-o", mount / "s.tsv"),
                     "s.tsv")
        clean_exit_2(run("calibrate", scores, "-o", mount / "cal.json"), "cal.json")
        clean_exit_2(run("fuse", scores, "-o", mount / "fusion.json"), "fusion.json")
        clean_exit_2(run("extract", "-o", mount / "feats", alice), str(mount / "feats"))
        clean_exit_2(run("train-ubm", "-o", tmp_path / "u.npz", "--components", 4, "--cache-dir", mount / "cache",
                         background), "feature cache")
        # A read-only model store with a writable output: scores are written, the cohort cache is not.
        result = run("score", "--ubm", ubm, "--models", models, "--trials", trials, "-o", tmp_path / "s.tsv")
        assert result.exit_code == 0 and "not cached" in result.stderr and (tmp_path / "s.tsv").exists()
        # A read-only default cache: features are not cached, the UBM is trained.
        result = run("train-ubm", "-o", tmp_path / "v.npz", "--components", 4, "--iterations", 1, "--workers", 1,
                     background, env={"SPKVER_CACHE_DIR": str(mount / "cache")})
        assert result.exit_code == 0 and "features are not cached" in result.stderr
        assert contents(mount) == before


def test_full_disk(store, synthetic_corpus, tmp_path):
    with tmpfs(tmp_path, "size=400k") as mount:
        shutil.copytree(store / "models", mount / "models")
        (mount / "filler").write_bytes(b"\0" * 100)
        with contextlib.suppress(OSError), open(mount / "filler", "ab") as handle:
            while True:  # fill the file system
                handle.write(b"\0" * 4096)
                handle.flush()
        before = contents(mount / "models")
        result = run("enroll", "--ubm", store / "ubm.npz", "--models", mount / "models", "--speaker", "alice",
                     "--force", synthetic_corpus / "enroll" / "bob")
        clean_exit_2(result, "alice.npz", "No space left")
        result = run("train-ubm", "-o", mount / "u.npz", "--components", 4, "--iterations", 1, "--workers", 1,
                     "--no-cache", synthetic_corpus / "background")
        clean_exit_2(result, "u.npz", "No space left")
        assert contents(mount / "models") == before
        assert not list(mount.rglob("*.tmp"))


@pytest.fixture
def disk_full(monkeypatch):
    """ENOSPC from the one function that writes files (models, checkpoints, scores, caches, indexes)."""
    import spkver.fileio as fileio

    def full(fd, data, sync):
        os.close(fd)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(fileio, "_write_file", full)


def test_injected_enospc_everywhere_files_are_written(store, synthetic_corpus, tmp_path, disk_full):
    models = tmp_path / "models"
    shutil.copytree(store / "models", models)
    before = contents(models)
    alice, background, trials, scores = inputs(synthetic_corpus, tmp_path)
    full = os.strerror(errno.ENOSPC)
    clean_exit_2(run("enroll", "--ubm", store / "ubm.npz", "--models", models, "--speaker", "alice", "--force",
                     alice), "alice.npz", full)
    clean_exit_2(run("train-ubm", "-o", tmp_path / "u.npz", "--components", 4, "--iterations", 2, "--workers", 1,
                     "--no-cache", background), "u.npz", full)
    clean_exit_2(run("score", "--ubm", store / "ubm.npz", "--models", models, "--trials", trials, "-o",
                     tmp_path / "s.tsv"), "s.tsv", full)
    clean_exit_2(run("calibrate", scores, "-o", tmp_path / "cal.json"), "cal.json", full)
    clean_exit_2(run("fuse", scores, "-o", tmp_path / "fusion.json"), "fusion.json", full)
    fusion = tmp_path / "given.json"  # written without write_atomic, which fails here
    fusion.write_bytes(fusion_json(Fusion((1.0,), 0.0, 0.01)))
    clean_exit_2(run("fuse", scores, "--fusion", fusion, "-o", tmp_path / "fused.tsv"), "fused.tsv", full)
    clean_exit_2(run("extract", "-o", tmp_path / "feats", alice), full)
    assert contents(models) == before
    assert not list(tmp_path.rglob("*.tmp")) and not (tmp_path / "u.npz").exists()


def test_a_failing_checkpoint_only_warns(synthetic_corpus, tmp_path, monkeypatch):
    import spkver.fileio as fileio

    real = fileio._write_file

    def checkpoints_fail(fd, data, sync):
        if ".checkpoint.npz." in os.readlink(f"/proc/self/fd/{fd}"):  # the temporary file of a checkpoint
            os.close(fd)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd, data, sync)

    monkeypatch.setattr(fileio, "_write_file", checkpoints_fail)
    result = run("train-ubm", "-o", tmp_path / "u.npz", "--components", 4, "--iterations", 3, "--workers", 1,
                 "--no-cache", synthetic_corpus / "background")
    assert result.exit_code == 0 and "without checkpoints" in result.stderr
    assert result.stderr.count("without checkpoints") == 1
    load_model(tmp_path / "u.npz", "ubm")


def test_a_file_where_a_folder_is_expected(store, synthetic_corpus, tmp_path):
    a_file = tmp_path / "plain.txt"
    a_file.write_text("x")
    alice = synthetic_corpus / "enroll" / "alice"
    clean_exit_2(run("enroll", "--ubm", store / "ubm.npz", "--models", a_file, "--speaker", "bob", alice),
                 "plain.txt", "not a models folder")
    clean_exit_2(run("verify", "--ubm", store / "ubm.npz", "--models", a_file, "--speaker", "alice", alice),
                 "plain.txt")
    clean_exit_2(run("train-ubm", "-o", a_file / "u.npz", "--components", 4, alice), "plain.txt")
    clean_exit_2(run("train-ubm", "-o", tmp_path / "u.npz", "--components", 4, "--cache-dir", a_file, alice),
                 "plain.txt", "file")
    clean_exit_2(run("extract", "-o", a_file, alice), "plain.txt")
    clean_exit_2(run("demo", "--workdir", a_file), "plain.txt", "folder")
    dangling = tmp_path / "dangling"
    os.symlink(tmp_path / "nowhere", dangling)
    clean_exit_2(run("enroll", "--ubm", store / "ubm.npz", "--models", dangling, "--speaker", "bob", alice),
                 "dangling", "broken symbolic link")
    result = run("train-ubm", "-o", tmp_path / "w.npz", "--components", 4, "--iterations", 1, "--workers", 1, alice,
                 env={"SPKVER_CACHE_DIR": str(a_file)})
    assert result.exit_code == 0 and "features are not cached" in result.stderr


def test_no_home_folder(synthetic_corpus, tmp_path, monkeypatch):
    def no_home():
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.delenv("SPKVER_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    result = run("train-ubm", "-o", tmp_path / "u.npz", "--components", 4, "--iterations", 1, "--workers", 1,
                 synthetic_corpus / "enroll" / "alice")
    assert result.exit_code == 0 and "no home folder" in result.stderr


def test_file_names_that_are_not_utf8(store, tmp_path):
    rng = np.random.default_rng(0)
    from spkver.synth import Voice, synthesize

    name = os.fsdecode(b"caf\xe9.wav")  # Latin-1 bytes, not UTF-8
    path = tmp_path / name
    sf.write(os.fsencode(path), synthesize(Voice.random(rng), ["a", "s", "e", "o"], 16000, rng), 16000)
    result = run("verify", "--ubm", store / "ubm.npz", "--models", store / "models", "--speaker", "alice", path)
    assert result.exit_code == 0, result.stderr
    assert "caf\\xe9.wav" in result.stdout and len(result.stdout.splitlines()) == 1


def test_an_unreadable_folder_of_audio(tmp_path, monkeypatch):
    (tmp_path / "audio").mkdir()

    def refuse(self, pattern):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))

    monkeypatch.setattr(Path, "rglob", refuse)
    clean_exit_2(run("train-ubm", "-o", tmp_path / "u.npz", tmp_path / "audio"), "audio", "Permission denied")
