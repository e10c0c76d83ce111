import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import run_cli, train_and_enroll

from spkver import __version__

run = run_cli


@pytest.fixture(scope="module")
def trained(synthetic_corpus, tmp_path_factory):
    """A UBM and two enrolled speakers, made through the CLI."""
    ubm, models = train_and_enroll(synthetic_corpus, tmp_path_factory.mktemp("cli"))
    return ubm, models, synthetic_corpus


def test_verify_accepts_the_speaker_and_rejects_the_impostor(trained):
    ubm, models, corpus = trained
    result = run("-q", "verify", "--ubm", ubm, "--models", models, "--speaker", "alice",
                 "--speaker", "bob", corpus / "test")
    assert result.exit_code == 0 and result.stderr == ""
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert len(rows) == 12 and all(len(r) == 4 for r in rows)
    for _speaker, _path, score, decision in rows:
        assert decision == ("accept" if float(score) >= 0 else "reject")
    genuine = [float(s) for spk, p, s, _ in rows if Path(p).parent.name == spk]
    impostor = [float(s) for spk, p, s, _ in rows if Path(p).parent.name != spk]
    assert np.mean(genuine) > np.mean(impostor) + 1.0


def test_verify_json_and_threshold(trained, tmp_path):
    ubm, models, corpus = trained
    listing = tmp_path / "test.scp"
    listing.write_text(f"utt1 {corpus / 'test' / 'alice' / 'alice_0.wav'}\n")
    result = run("verify", "--ubm", ubm, "--models", models, "--speaker", "alice", "--json",
                 "--threshold", "1e9", "--top-c", "0", "--list", listing)
    record = json.loads(result.stdout)
    assert record["decision"] == "reject" and record["frames"] > 0 and record["speaker"] == "alice"


def test_info_shows_the_model(trained):
    ubm, models, _ = trained
    assert "ubm model, 16 components, 60 dimensions" in run("info", ubm).stdout
    meta = json.loads(run("info", "--json", models / "alice.npz").stdout)
    assert meta["speaker"] == "alice" and meta["relevance"] == 16.0 and meta["kind"] == "speaker"


def test_enroll_refuses_to_overwrite_without_force(trained):
    ubm, models, corpus = trained
    before = (models / "alice.npz").read_bytes()
    result = run("enroll", "--ubm", ubm, "--models", models, "--speaker", "alice", corpus / "enroll" / "bob")
    assert result.exit_code == 2 and "--force" in result.stderr
    assert (models / "alice.npz").read_bytes() == before
    result = run("enroll", "--ubm", ubm, "--models", models, "--speaker", "alice", "--force",
                 "--adapt", "mwv", "--relevance", "8", corpus / "enroll" / "alice")
    assert result.exit_code == 0
    assert json.loads(run("info", "--json", models / "alice.npz").stdout)["adapt"] == "mwv"


@pytest.mark.parametrize("case", ["bad_audio", "missing_ubm", "speaker_as_ubm", "bad_id", "unknown_speaker",
                                  "silent", "too_few_frames"])
def test_user_errors_exit_2_with_one_line(trained, tmp_path, case):
    ubm, models, corpus = trained
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(16000, dtype=np.float32), 16000)
    args = {
        "bad_audio": ["verify", "--ubm", ubm, "--models", models, "--speaker", "alice", bad],
        "missing_ubm": ["enroll", "--ubm", tmp_path / "no.npz", "--models", models, "--speaker", "x", bad],
        "speaker_as_ubm": ["verify", "--ubm", models / "alice.npz", "--models", models, "--speaker", "alice",
                           bad],
        "bad_id": ["enroll", "--ubm", ubm, "--models", models, "--speaker", "../evil", bad],
        "unknown_speaker": ["verify", "--ubm", ubm, "--models", models, "--speaker", "carol", bad],
        "silent": ["enroll", "--ubm", ubm, "--models", models, "--speaker", "carol", silent],
        "too_few_frames": ["train-ubm", "-o", tmp_path / "u.npz", "--components", 4096,
                           corpus / "enroll" / "alice"],
    }[case]
    result = run(*args)
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("spkver: error:")]
    assert len(errors) == 1 and result.stderr.strip().endswith(errors[0]), result.stderr
    assert "Traceback" not in result.stderr
    assert not (models / "carol.npz").exists() and not (tmp_path / "u.npz").exists()


def test_skip_bad_goes_on_without_the_bad_file(trained, tmp_path):
    ubm, models, corpus = trained
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"junk")
    result = run("verify", "--ubm", ubm, "--models", models, "--speaker", "bob", "--skip-bad", bad,
                 corpus / "test" / "bob")
    assert result.exit_code == 0 and len(result.stdout.splitlines()) == 3
    assert "bad.wav" in result.stderr


def test_allow_fewer_components(synthetic_corpus, tmp_path):
    result = run("train-ubm", "-o", tmp_path / "u.npz", "--components", 4096, "--iterations", 2,
                 "--allow-fewer-components", synthetic_corpus / "enroll" / "alice")
    assert result.exit_code == 0 and "instead of 4096" in result.stderr


def test_installed_console_script_runs(tmp_path):
    script = Path(sys.executable).with_name("spkver")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "spkver"]
    out = subprocess.run([*command, "--version"], capture_output=True, text=True, check=True)
    assert __version__ in out.stdout
    out = subprocess.run([*command, "info", str(tmp_path / "missing.npz")], capture_output=True, text=True,
                         env={**os.environ, "SPKVER_DEBUG": ""})
    assert out.returncode == 2 and "no such model file" in out.stderr


def test_demo_runs_end_to_end(tmp_path):
    result = run("-q", "demo", "--workdir", tmp_path)
    assert result.exit_code == 0, result.stderr
    assert "EER" in result.stdout and (tmp_path / "ubm.npz").exists()
    eer_text = result.stdout.split("EER ")[1].split("%")[0]
    assert float(eer_text) < 20.0
