"""Start-up: commands import only what they use (timings live in scripts/bench_startup.py, not here)."""

import json
import subprocess
import sys

import numpy as np
import pytest
from helpers import make_store

HEAVY = ("numpy", "scipy", "librosa", "numba", "soundfile", "sklearn")

PROBE = """
import json, sys
from spkver.cli.main import cli
try:
    cli.main(sys.argv[1:], prog_name="spkver")
except SystemExit:
    pass
print(json.dumps(sorted(sys.modules)), file=sys.stderr)
"""


def modules_loaded_by(*args) -> set:
    """The modules a `spkver ARGS` process has imported by the time it exits."""
    result = subprocess.run([sys.executable, "-c", PROBE, *map(str, args)], capture_output=True, text=True)
    return set(json.loads(result.stderr.strip().splitlines()[-1]))


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["-h"]])
def test_help_and_version_load_no_numerical_library(args):
    loaded = modules_loaded_by(*args)
    assert not [m for m in loaded if m.split(".")[0] in HEAVY]


def test_verify_loads_no_optimiser_fft_librosa_or_numba(synthetic_corpus, tmp_path):
    store = make_store(tmp_path, synthetic_corpus)
    test = sorted((synthetic_corpus / "test" / "alice").glob("*.wav"))[0]
    loaded = modules_loaded_by("-q", "verify", "--ubm", store / "ubm.npz", "--models", store / "models",
                               "--speaker", "alice", test)
    assert "spkver.backend.scoring" in loaded  # it did verify
    for unused in ("scipy.optimize", "scipy.fft", "scipy.special", "librosa", "numba", "sklearn"):
        assert unused not in loaded, unused


@pytest.mark.parametrize(("n_mels", "n_ceps"), [(64, 40), (48, 40), (40, 20), (13, 13)])
def test_the_dct_matrix_is_scipys_orthonormal_dct(n_mels, n_ceps):
    import scipy.fft

    from spkver.features.mfcc import dct_matrix

    x = np.random.default_rng(n_mels).normal(size=(50, n_mels))
    want = scipy.fft.dct(x, type=2, norm="ortho", axis=1)[:, :n_ceps]
    np.testing.assert_allclose(x @ dct_matrix(n_mels, n_ceps), want, rtol=1e-12, atol=1e-12)


def test_every_listed_command_loads_under_its_name():
    from spkver.cli.main import COMMANDS, cli

    for name in COMMANDS:
        command = cli.get_command(None, name)
        assert command is not None and command.name == name
    assert cli.get_command(None, "no-such-command") is None
