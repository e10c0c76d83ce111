"""Shared fixtures: synthetic voices written as WAV files, and the recorded-speech root (helpers in ``helpers.py``)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import require_shared_data, write_voice_files

from spkver.synth import WORDS, Voice


@pytest.fixture
def shared_data():
    return require_shared_data()


@pytest.fixture(scope="session")
def synthetic_corpus(tmp_path_factory):
    """Background speakers (6), and two target speakers with enroll and test files."""
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(7)
    voices = [Voice.random(rng) for _ in range(8)]
    for i, voice in enumerate(voices[:6]):
        write_voice_files(root / "background" / f"bg{i}", voice, 5, rng)
    for name, voice in zip(["alice", "bob"], voices[6:]):
        write_voice_files(root / "enroll" / name, voice, 3, rng, WORDS[:5])
        write_voice_files(root / "test" / name, voice, 3, rng, WORDS[5:])
    return root


@pytest.fixture(autouse=True, scope="session")
def feature_cache(tmp_path_factory):
    """Keep the automatic feature cache out of the user's home during tests.

    Session-scoped: module-scoped fixtures that run commands (e.g. ``test_cli.trained``) are set up before any
    function-scoped fixture, and with a function-scoped one they cached features in ~/.cache/spkver.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SPKVER_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "spkver-cache"))
        yield
