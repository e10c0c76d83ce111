"""Helpers shared by the test modules: synthetic voice files, a small store, the CLI in-process, subprocesses.

Test modules import these (``from helpers import make_store``); ``conftest.py`` holds only fixtures.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import soundfile as sf

from spkver.synth import WORDS, Voice, utterance

DATA_ROOT = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def require_shared_data():
    """Skip when ../shared/data is absent; under CI its absence is a failure."""
    if not DATA_ROOT.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{DATA_ROOT} is missing under CI")
        pytest.skip("../shared/data is not available")
    return DATA_ROOT


def write_voice_files(folder: Path, voice: Voice, count: int, rng, words=WORDS, n_words=3, rate=16000):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"{folder.name}_{i}.wav"
        sf.write(path, utterance(voice, n_words, rate, rng, words), rate)
        paths.append(path)
    return paths


def run_cli(*args):
    """Invoke the spkver CLI in-process; arguments may be paths or numbers."""
    from click.testing import CliRunner

    from spkver.cli.main import cli

    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def one_error_line(result, *needles):
    """Exit 2 with exactly one 'spkver: error:' line holding every needle, and no traceback."""
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("spkver: error:")]
    assert result.exit_code == 2, (result.exit_code, result.stderr)
    assert len(errors) == 1 and all(n in errors[0] for n in needles), result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr


def train_and_enroll(corpus: Path, work: Path):
    """A 16-component UBM on the background voices and alice and bob enrolled, through the CLI."""
    ubm, models = work / "ubm.npz", work / "models"
    result = run_cli("train-ubm", "-o", ubm, "--components", 16, "--iterations", 5, "--workers", 1,
                     corpus / "background")
    assert result.exit_code == 0, result.stderr
    assert "EM iteration" in result.stderr
    for name in ["alice", "bob"]:
        result = run_cli("enroll", "--ubm", ubm, "--models", models, "--speaker", name, corpus / "enroll" / name)
        assert result.exit_code == 0, result.stderr
    return ubm, models


# Python code printing the process's own peak resident memory in KiB. VmHWM belongs to the
# address space made at exec; ru_maxrss would also count the parent's pages at fork.
PRINT_PEAK_KIB = "print(int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]))"


def make_store(root: Path, corpus: Path, speakers=("alice", "bob"), components=8, iterations=3) -> Path:
    """A small UBM (``root/ubm.npz``) and ``speakers`` enrolled in ``root/models``, made with the library."""
    from spkver.api import enroll, train_ubm
    from spkver.audio.sources import find_audio
    from spkver.run import RunOptions
    from spkver.storage.models import save_model
    from spkver.storage.speakers import SpeakerStore

    ubm = train_ubm(find_audio([corpus / "background"]), n_components=components, iterations=iterations,
                    run=RunOptions(workers=1))
    save_model(root / "ubm.npz", ubm)
    models = SpeakerStore(root / "models")
    models.root.mkdir()
    for name in speakers:
        save_model(models.path(name), enroll(ubm, find_audio([corpus / "enroll" / name]), name))
    return root


def python_output(code: str, *args) -> str:
    """Run ``code`` in a fresh interpreter (its own memory accounting) and return its stdout."""
    import subprocess
    import sys

    command = [sys.executable, "-c", code, *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout
