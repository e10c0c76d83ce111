import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import run_cli, train_and_enroll

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
    shown = run("info", ubm).stdout
    assert "ubm model, 2 systems (cmn, warp) of 16 components, 124 dimensions each, format 2" in shown
    assert "\nsystem 1 (cmn): average_log_likelihood=" in shown and "\nsystem 2 (warp): average_log" in shown
    meta = json.loads(run("info", "--json", models / "alice.npz").stdout)
    assert meta["speaker"] == "alice" and meta["relevance"] == 16.0 and meta["kind"] == "speaker"
    assert meta["systems"] == 2 and meta["dim"] == 124 and meta["feature_config"]["norm"] == "cmn+warp"


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


def test_pitch_features_are_on_by_default_and_no_pitch_turns_them_off(synthetic_corpus, tmp_path):
    audio = synthetic_corpus / "enroll" / "alice"
    default = run("train-ubm", "-o", tmp_path / "p.npz", "--components", 4, "--iterations", 1, audio)
    assert default.exit_code == 0 and "248-dim features" in default.stderr and ", pitch," in default.stderr
    plain = run("train-ubm", "-o", tmp_path / "n.npz", "--components", 4, "--iterations", 1, "--no-pitch", audio)
    assert plain.exit_code == 0 and "240-dim features" in plain.stderr and ", pitch," not in plain.stderr
    assert json.loads(run("info", "--json", tmp_path / "n.npz").stdout)["feature_config"]["pitch"] is False


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


def test_train_ubm_chooses_the_feature_rate_and_components_from_the_audio(tmp_path):
    from helpers import write_voice_files

    from spkver.gmm.em import auto_components
    from spkver.storage.models import load_model
    from spkver.synth import Voice

    rng = np.random.default_rng(5)
    for i in range(4):
        write_voice_files(tmp_path / "phone" / f"s{i}", Voice.random(rng), 4, rng, rate=8000)
    result = run("train-ubm", "-o", tmp_path / "ubm.npz", "--iterations", 2, "--workers", 1, tmp_path / "phone")
    assert result.exit_code == 0, result.stderr
    ubm = load_model(tmp_path / "ubm.npz")
    assert ubm.feature_config.sample_rate == 8000 and ubm.feature_config.n_mels == 48
    assert "feature rate 8000 Hz: 16 of 16 training recordings are telephone-band" in result.stderr
    frames = ubm.meta["training"]["frames"]
    assert ubm.gmm.n_components == auto_components(frames) == 16
    assert "components: 16 (auto" in result.stderr
    # Not a terminal: the progress is one line when done, not a bar's bare label.
    assert "features: 16 of 16 done (" in result.stderr and "features\n" not in result.stderr
    explicit = run("train-ubm", "-o", tmp_path / "u8.npz", "--components", 8, "--sample-rate", 16000,
                   "--iterations", 1, "--workers", 1, tmp_path / "phone")
    assert explicit.exit_code == 0 and load_model(tmp_path / "u8.npz").gmm.n_components == 8
    assert "feature rate" not in explicit.stderr
    # 8 kHz audio under 16 kHz features: one warning, however many files.
    assert explicit.stderr.count("below the model's 16000 Hz features") == 1
    assert run("train-ubm", "-o", tmp_path / "x.npz", "--components", "many", tmp_path / "phone").exit_code == 2


def test_enroll_warns_once_about_audio_below_the_feature_rate(trained, tmp_path):
    ubm, models, corpus = trained
    low = tmp_path / "low"
    low.mkdir()
    for path in sorted((corpus / "enroll" / "alice").glob("*.wav")):
        audio, rate = sf.read(path)
        sf.write(low / path.name, audio[::2], rate // 2)
    result = run("enroll", "--ubm", ubm, "--models", tmp_path / "m", "--speaker", "carol", low)
    assert result.exit_code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "recorded at 8000 Hz" in warnings[0] and "--sample-rate 8000" in warnings[0]


def test_old_norm_spellings_still_work_with_a_warning(trained, tmp_path):
    ubm, models, corpus = trained
    result = run("train-ubm", "-o", tmp_path / "u.npz", "--components", 4, "--iterations", 1, "--workers", 1,
                 "--norm", "cmvn", corpus / "background")
    assert result.exit_code == 0 and "--norm is deprecated" in result.stderr and "--feature-norm" in result.stderr
    from spkver.storage.models import load_model

    assert load_model(tmp_path / "u.npz").feature_config.norm == "cmvn"
    clash = run("train-ubm", "-o", tmp_path / "v.npz", "--norm", "cmvn", "--feature-norm", "cmn",
                corpus / "background")
    assert clash.exit_code == 2 and "contradicts" in clash.stderr
    trials = tmp_path / "trials"
    trials.write_text("".join(f"alice {p} target\n" for p in sorted((corpus / "test" / "alice").glob("*.wav"))))
    result = run("score", "--ubm", ubm, "--models", models, "--trials", trials, "-o", tmp_path / "s.tsv",
                 "--norm", "z", "--cohort", corpus / "background")
    assert result.exit_code == 0, result.stderr
    assert "--norm is deprecated" in result.stderr and "--score-norm" in result.stderr
    assert "# spkver: normalisation z" in (tmp_path / "s.tsv").read_text()


def test_enrolling_from_a_fraction_of_a_second_of_speech_warns(trained, tmp_path):
    ubm, _, corpus = trained
    clip = sorted((corpus / "enroll" / "alice").glob("*.wav"))[0]
    audio, rate = sf.read(clip)
    short = tmp_path / "short.wav"
    sf.write(short, audio[: rate // 2], rate)  # half a second, so under 1 s of speech
    for args in (["--speaker", "carol", short], ["--per-folder", tmp_path / "speakers"]):
        (tmp_path / "speakers" / "dave").mkdir(parents=True, exist_ok=True)
        sf.write(tmp_path / "speakers" / "dave" / "short.wav", audio[: rate // 2], rate)
        result = run("enroll", "--ubm", ubm, "--models", tmp_path / "m", *args)
        warnings = [line for line in result.stderr.splitlines() if "warning" in line]
        assert result.exit_code == 0 and len(warnings) == 1 and "s of speech" in warnings[0], result.stderr
    # Several seconds of speech: no warning.
    result = run("enroll", "--ubm", ubm, "--models", tmp_path / "m", "--speaker", "erin", corpus / "enroll" / "alice")
    assert result.exit_code == 0 and "warning" not in result.stderr, result.stderr
