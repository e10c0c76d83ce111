"""Hostile inputs (issue 12): no input makes a model that accepts everyone, and every fault is a clean exit 2."""

import io
import json
import os
import zipfile

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner
from helpers import PRINT_PEAK_KIB, make_store, one_error_line, python_output

from spkver.cli.main import cli
from spkver.features.config import FeatureConfig
from spkver.storage.models import load_model, save_model
from spkver.synth import Voice, synthesize


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def speech(seed=0, rate=16000):
    rng = np.random.default_rng(seed)
    return synthesize(Voice.random(rng), ["s", "a", "i", "o", "e"], rate, rng)


@pytest.fixture(scope="module")
def store(synthetic_corpus, tmp_path_factory):
    """A small UBM and enrolled speakers (helpers.make_store)."""
    return make_store(tmp_path_factory.mktemp("hostile"), synthetic_corpus)


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.npz"))}


def huge_sample_wav(path, value=1e19):
    y = speech().astype(np.float32)
    y[4000] = value
    sf.write(path, y, 16000, subtype="FLOAT")
    return path


# 1. No model that accepts everyone -------------------------------------------------------------


def test_a_huge_sample_cannot_make_a_speaker_model(store, tmp_path):
    before = snapshot(store / "models")
    result = run("enroll", "--ubm", store / "ubm.npz", "--models", store / "models", "--speaker", "mallory",
                 huge_sample_wav(tmp_path / "huge.wav"))
    one_error_line(result, "huge.wav", "out of range")
    assert snapshot(store / "models") == before


def test_a_huge_sample_cannot_make_a_ubm(tmp_path, synthetic_corpus):
    files = sorted((synthetic_corpus / "background").rglob("*.wav"))[:6]
    result = run("train-ubm", "-o", tmp_path / "u.npz", "--components", 4, "--workers", 1, "--no-cache",
                 huge_sample_wav(tmp_path / "huge.wav"), *files)
    one_error_line(result, "huge.wav")
    assert not (tmp_path / "u.npz").exists()


def test_a_poisoned_test_file_is_an_error_not_a_score(store, tmp_path):
    poisoned = huge_sample_wav(tmp_path / "huge.wav")
    common = ["--ubm", store / "ubm.npz", "--models", store / "models"]
    one_error_line(run("verify", *common, "--speaker", "alice", "--json", poisoned), "huge.wav")
    one_error_line(run("identify", *common, poisoned), "huge.wav")
    trials = tmp_path / "trials"
    trials.write_text(f"alice {poisoned} target\n")
    one_error_line(run("score", *common, "--trials", trials, "-o", tmp_path / "s"), "huge.wav")
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("option", [
    ("enroll", "--relevance", "nan"), ("enroll", "--relevance", "inf"), ("enroll", "--relevance", "1e300"),
    ("train-ubm", "--fmin", "nan"), ("train-ubm", "--fmax", "nan"), ("train-ubm", "--hop-ms", "nan"),
    ("train-ubm", "--window-ms", "inf"), ("train-ubm", "--tol", "nan"), ("train-ubm", "--seed", "-1"),
    ("verify", "--threshold", "-inf"), ("verify", "--threshold", "nan"), ("verify", "--p-target", "nan"),
])
def test_non_finite_negative_or_absurd_numbers_in_options_are_refused(store, synthetic_corpus, tmp_path, option):
    command, name, value = option
    args = {
        "enroll": ["--ubm", store / "ubm.npz", "--models", tmp_path / "m", "--speaker", "z"],
        "train-ubm": ["-o", tmp_path / "u.npz", "--components", 4],
        "verify": ["--ubm", store / "ubm.npz", "--models", store / "models", "--speaker", "alice"],
    }[command]
    result = run(command, *args, name, value, synthetic_corpus / "enroll" / "alice")
    one_error_line(result, name)
    assert not (tmp_path / "m").exists() and not (tmp_path / "u.npz").exists()


def test_a_speaker_model_never_equals_its_ubm(store):
    from spkver.errors import SpkverError
    from spkver.gmm.estep import Statistics
    from spkver.gmm.map import check_adapted

    ubm = load_model(store / "ubm.npz", "ubm")
    empty = Statistics.zeros(ubm.gmm.n_components, ubm.gmm.dim)
    with pytest.raises(SpkverError, match="did not move"):
        check_adapted(ubm.gmm, ubm.gmm, empty)


# Finite values no audio gives (a cepstrum of 1e30) would overflow the statistics or the mixture like NaN does.
@pytest.mark.parametrize("poison", [np.nan, 1e30, -1e12])
def test_a_damaged_cached_feature_file_is_never_trained_on(synthetic_corpus, tmp_path, monkeypatch, poison):
    monkeypatch.setenv("SPKVER_CACHE_DIR", str(tmp_path / "cache"))
    files = sorted((synthetic_corpus / "background").rglob("*.wav"))[:8]
    args = ["train-ubm", "--components", 4, "--iterations", 2, "--workers", 1, *files]
    assert run(*args, "-o", tmp_path / "a.npz").exit_code == 0
    victim = sorted((tmp_path / "cache").rglob("*.npy"))[0]
    array = np.load(victim)
    array[:, 0] = poison
    np.save(victim, array)
    result = run(*args, "-o", tmp_path / "b.npz")  # the damaged entry is extracted again
    assert result.exit_code == 0, result.stderr
    assert np.isfinite(load_model(tmp_path / "b.npz").gmm.means).all()
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()


def test_nan_in_a_checkpoint_is_refused(synthetic_corpus, tmp_path):
    from spkver.gmm.em import EMState
    from spkver.gmm.model import GMM
    from spkver.storage.models import save_checkpoint

    with pytest.raises(ValueError, match="not finite"):
        GMM(np.full(4, 0.25), np.full((4, 120), np.nan), np.ones((4, 120)))
    # A checkpoint poisoned on disk: resuming from it is refused, never trained on.
    files = sorted((synthetic_corpus / "background").rglob("*.wav"))[:8]
    output = tmp_path / "u.npz"
    checkpoint = tmp_path / "u.npz.checkpoint.npz"
    gmm = GMM(np.full(4, 0.25), np.zeros((4, 120)), np.ones((4, 120)))
    save_checkpoint(checkpoint, EMState(gmm, [0.0], 1, 0, {}), "x")
    with zipfile.ZipFile(checkpoint) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    means = np.full((4, 120), np.nan)
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, means)
    members["means.npy"] = buffer.getvalue()
    with zipfile.ZipFile(checkpoint, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    result = run("train-ubm", "-o", output, "--components", 4, "--workers", 1, "--no-cache", "--resume", *files)
    one_error_line(result, "checkpoint")
    assert not output.exists()


def test_json_output_never_holds_nan_and_scores_are_finite(store, synthetic_corpus):
    result = run("verify", "--ubm", store / "ubm.npz", "--models", store / "models", "--speaker", "alice", "--json",
                 synthetic_corpus / "test" / "alice")
    assert result.exit_code == 0
    for line in result.stdout.splitlines():
        record = json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} in JSON output"))
        assert np.isfinite(record["score"])


# 3. Output injection ------------------------------------------------------------------------------


def test_a_model_whose_stored_name_differs_from_its_file_is_refused(store, tmp_path):
    import shutil

    models = tmp_path / "models"
    shutil.copytree(store / "models", models)
    model = load_model(models / "bob.npz")
    model.meta["speaker"] = "bob\t/x.wav\t99.0\taccept\nalice"
    save_model(models / "bob.npz", model)
    test = tmp_path / "test.wav"
    sf.write(test, speech(4), 16000)
    result = run("verify", "--ubm", store / "ubm.npz", "--models", models, "--speaker", "bob", test)
    one_error_line(result, "bob.npz", "speaker")
    assert "accept" not in result.stdout
    result = run("identify", "--ubm", store / "ubm.npz", "--models", models, test)
    one_error_line(result, "bob.npz")


def test_control_characters_in_file_names_cannot_forge_lines(store, tmp_path):
    evil = tmp_path / "a\tb\naccept.wav"
    sf.write(evil, speech(3), 16000)
    common = ["--ubm", store / "ubm.npz", "--models", store / "models"]
    result = run("verify", *common, "--speaker", "alice", "--speaker", "bob", evil)
    assert result.exit_code == 0
    rows = result.stdout.splitlines()
    assert len(rows) == 2 and all(len(r.split("\t")) == 4 for r in rows)
    assert "\\t" in rows[0] and "\\n" in rows[0]
    result = run("identify", *common, evil)
    assert result.exit_code == 0 and len([r for r in result.stdout.splitlines() if not r.startswith("#")]) == 1
    trials = tmp_path / "trials"
    trials.write_text("alice\tx.wav\n")
    (tmp_path / "x.wav").write_bytes(evil.read_bytes())
    json_result = run("verify", *common, "--speaker", "alice", "--json", evil)
    assert json.loads(json_result.stdout)["path"] == str(evil)


# 4. Memory bombs ---------------------------------------------------------------------------------


def write_streamed_npz_member(archive, name, shape, fill=0.0):
    """An .npy member of ``shape`` float64 values written 1 MiB at a time (never whole in memory)."""
    with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
        np.lib.format.write_array_header_1_0(member, {"descr": "<f8", "fortran_order": False, "shape": shape})
        remaining, block = int(np.prod(shape)), np.full(1 << 17, fill).tobytes()
        while remaining > 0:
            take = min(remaining, 1 << 17)
            member.write(block[: take * 8])
            remaining -= take


# The metadata of a one-system UBM of 60 dimensions: the arrays' sizes, not the metadata, are what is refused.
VALID_META = json.dumps({"format_version": 1, "kind": "ubm",
                         "feature_config": FeatureConfig(n_ceps=20, pitch=False, norm="cmn").to_dict()})


def test_a_deflated_npz_bomb_is_refused_before_it_is_read(tmp_path):
    bomb = tmp_path / "bomb.npz"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        write_streamed_npz_member(archive, "weights", (3_300_000,), 1 / 3_300_000)
        write_streamed_npz_member(archive, "means", (3_300_000, 60))
        write_streamed_npz_member(archive, "variances", (3_300_000, 60), 1.0)
        with archive.open("meta.npy", "w") as member:
            np.lib.format.write_array(member, np.array(VALID_META))
    assert bomb.stat().st_size < 8_000_000
    code = ("import sys; from spkver.storage.models import load_model; from spkver.errors import SpkverError\n"
            "try: load_model(sys.argv[1])\nexcept SpkverError as e: print('refused:', e)\n" + PRINT_PEAK_KIB)
    out = python_output(code, bomb).splitlines()
    assert out[0].startswith("refused:") and "too large" in out[0]
    assert int(out[1]) < 200_000  # KiB: the arrays (3.2 GB) were never inflated


def test_a_header_declaring_a_huge_array_is_refused(tmp_path):
    path = tmp_path / "liar.npz"
    with zipfile.ZipFile(path, "w") as archive:
        for name, array in {"weights": np.ones(1), "variances": np.ones((1, 120)),
                            "meta": np.array(VALID_META)}.items():
            with archive.open(f"{name}.npy", "w") as member:
                np.lib.format.write_array(member, array)
        with archive.open("means.npy", "w") as member:  # a header only: the data would be 8 TB
            header = {"descr": "<f8", "fortran_order": False, "shape": (1_000_000, 1_000_000)}
            np.lib.format.write_array_header_1_0(member, header)
    one_error_line(run("info", path), "liar.npz", "too large")


def test_an_absurd_sample_rate_is_resampled_in_bounded_memory(tmp_path):
    path = tmp_path / "fast.wav"
    sf.write(path, np.resize(speech(), 100_000), 1_999_993)
    code = ("import sys; from spkver.audio.decode import load_audio\n"
            "y = load_audio(sys.argv[1], 16000); print(len(y))\n" + PRINT_PEAK_KIB)
    out = python_output(code, path).splitlines()
    assert int(out[0]) in range(790, 810)  # 100 000 samples at 2 MHz last 50 ms
    assert int(out[1]) < 400_000  # KiB


# 7-9. Smaller ------------------------------------------------------------------------------------


def test_outputs_never_replace_a_file_of_another_kind(store, synthetic_corpus, tmp_path):
    import shutil

    victim = tmp_path / "ubm.npz"
    shutil.copy(store / "ubm.npz", victim)
    scores = tmp_path / "dev.tsv"
    scores.write_text("a\tt1\t1.0\ttarget\na\tt2\t-1.0\tnontarget\na\tt3\t0.5\ttarget\na\tt4\t0.2\tnontarget\n")
    one_error_line(run("calibrate", scores, "-o", victim), "ubm.npz", "not a calibration")
    one_error_line(run("fuse", scores, "-o", victim), "ubm.npz", "not a fusion file")
    trials = tmp_path / "trials"
    trials.write_text(f"alice {sorted((synthetic_corpus / 'test' / 'alice').glob('*.wav'))[0]}\n")
    one_error_line(run("score", "--ubm", store / "ubm.npz", "--models", store / "models", "--trials", trials,
                       "-o", victim), "ubm.npz", "not a score file")
    assert victim.read_bytes() == (store / "ubm.npz").read_bytes()


def test_calibrating_astronomical_scores_stays_finite(tmp_path):
    scores = tmp_path / "dev.tsv"
    scores.write_text("a\tt1\t1e308\ttarget\na\tt2\t-1e308\tnontarget\na\tt3\t1e307\ttarget\na\tt4\t-1e307\tnontarget\n")
    result = run("calibrate", scores, "-o", tmp_path / "cal.json")
    if result.exit_code == 0:
        data = json.loads((tmp_path / "cal.json").read_text(), parse_constant=lambda c: pytest.fail(c))
        assert np.isfinite([data["scale"], data["offset"]]).all()
    else:
        one_error_line(result, "dev.tsv")
    twin = tmp_path / "twin.tsv"  # a second system with the same scores (one file given twice is refused)
    twin.write_bytes(scores.read_bytes())
    result = run("fuse", scores, twin, "-o", tmp_path / "fusion.json")
    assert result.exit_code == 0, result.stderr
    data = json.loads((tmp_path / "fusion.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert np.isfinite([*data["weights"], data["offset"]]).all()


def test_a_symlinked_lock_file_is_not_followed(store, synthetic_corpus, tmp_path):
    import shutil

    models = tmp_path / "models"
    shutil.copytree(store / "models", models)
    outside = tmp_path / "created-outside"
    os.symlink(outside, models / ".carol.lock")  # dangling: following it would create a file outside the store
    result = run("enroll", "--ubm", store / "ubm.npz", "--models", models, "--speaker", "carol",
                 synthetic_corpus / "enroll" / "alice")
    assert not outside.exists()
    one_error_line(result, ".carol.lock", "symbolic link")


def test_workers_are_capped_at_the_cores(store, synthetic_corpus):
    result = run("enroll", "--ubm", store / "ubm.npz", "--models", store / "models", "--speaker", "w1000",
                 "--workers", 1000, synthetic_corpus / "enroll" / "alice")
    assert result.exit_code == 0 and "--workers 1000" in result.stderr and "cores" in result.stderr
    os.unlink(store / "models" / "w1000.npz")


def test_usage_errors_are_one_line(store):
    for args in (["enroll", "--bogus"], ["train-ubm"], ["verify", "--ubm"], ["nonsense"]):
        result = run(*args)
        assert result.exit_code == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("spkver: error:"), result.stderr


def test_messages_say_what_is_wrong(tmp_path):
    text = tmp_path / "trials.txt"
    text.write_text("alice a.wav target\n")
    result = run("info", text)
    one_error_line(result, "trials.txt", "not a spkver model")
    assert "pickle" not in result.stderr
    noise = tmp_path / "noise.wav"
    noise.write_bytes(np.random.default_rng(0).bytes(5000))
    result = run("info", noise)
    one_error_line(result, "noise.wav", "not a spkver model")


def test_an_unreadable_model_says_permission_denied(store, monkeypatch):
    # Root reads any file, so the refusal of the OS is injected where model files are opened.
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(zipfile, "ZipFile", refuse)
    result = run("info", store / "ubm.npz")
    one_error_line(result, "ubm.npz", "Permission denied")
    assert "corrupted" not in result.stderr


def test_speakers_of_a_ubm_with_other_feature_settings_are_refused(store, tmp_path):
    from dataclasses import replace

    ubm = load_model(store / "ubm.npz", "ubm")
    other = replace(ubm, feature_config=replace(ubm.feature_config, preemphasis=0.5))
    save_model(tmp_path / "other.npz", other)
    result = run("verify", "--ubm", tmp_path / "other.npz", "--models", store / "models", "--speaker", "alice",
                 store / "ubm.npz")
    one_error_line(result, "alice.npz", "different UBM")


@pytest.mark.slow
def test_resume_refuses_a_checkpoint_past_the_iterations_asked_for(synthetic_corpus, tmp_path, monkeypatch):
    import spkver.storage.models as models
    from spkver.storage.models import save_checkpoint

    def stop_after_six(path, state, identity, **systems_trained):  # a run killed after its sixth iteration
        save_checkpoint(path, state, identity, **systems_trained)
        if state.step == 6:
            raise KeyboardInterrupt

    files = sorted((synthetic_corpus / "background").rglob("*.wav"))[:10]
    out = tmp_path / "u.npz"
    for norm in ("cmn", "cmn+warp"):  # killed in the first system: nothing finished with the old count yet
        common = ["train-ubm", "-o", out, "--components", 4, "--workers", 1, "--no-cache", "--tol", 0,
                  "--feature-norm", norm, *files]
        monkeypatch.setattr(models, "save_checkpoint", stop_after_six)
        assert run(*common, "--iterations", 60).exit_code == 130
        monkeypatch.undo()
        assert (tmp_path / "u.npz.checkpoint.npz").exists()
        one_error_line(run(*common, "--iterations", 5, "--resume"), "checkpoint", "6 iterations", "--iterations 5")
        (tmp_path / "u.npz.checkpoint.npz").unlink()
    assert not out.exists()
    result = run(*common, "--iterations", 8, "--resume")
    assert result.exit_code == 0, result.stderr
    assert load_model(out).meta["training"]["iterations"] == 8


def test_two_train_ubm_runs_to_one_output_do_not_both_succeed(synthetic_corpus, tmp_path, monkeypatch):
    import spkver.api as api

    files = sorted((synthetic_corpus / "background").rglob("*.wav"))[:8]
    out = tmp_path / "u.npz"
    real = api.train_ubm

    def meanwhile(*args, **kwargs):  # another run writes the output while this one trains
        model = real(*args, **kwargs)
        save_model(out, model)
        return model

    monkeypatch.setattr(api, "train_ubm", meanwhile)
    result = run("train-ubm", "-o", out, "--components", 4, "--iterations", 1, "--workers", 1, "--no-cache", *files)
    one_error_line(result, "u.npz", "meanwhile")
    assert load_model(out).kind == "ubm"
    assert not list(tmp_path.glob(".u.npz.lock")) and not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("setting", [("hop_ms", float("nan")), ("n_mels", 40.5), ("window_ms", float("inf")),
                                     ("window_ms", 1e6), ("deltas", True), ("vad", 3), ("n_fft", 1 << 30),
                                     ("top_db", float("nan")), ("sample_rate", "16000")])
def test_stored_feature_settings_are_checked_where_they_enter(store, tmp_path, setting):
    from spkver.storage.models import npz_bytes

    name, value = setting
    model = load_model(store / "ubm.npz")
    meta = {**model.meta, "feature_config": {**model.feature_config.to_dict(), name: value}}
    (tmp_path / "bad.npz").write_bytes(npz_bytes(model.gmm, meta))  # as a hostile tool would write it
    one_error_line(run("info", tmp_path / "bad.npz"), "bad.npz", name)


def test_a_speaker_model_cut_to_fewer_components_than_its_ubm_is_refused(store, tmp_path):
    from dataclasses import replace

    from spkver.gmm.model import GMM

    alice = load_model(store / "models" / "alice.npz")
    first, *further = (GMM(g.weights[:2] / g.weights[:2].sum(), g.means[:2], g.variances[:2]) for g in alice.gmms)
    cut = replace(alice, gmm=first, further=tuple(further))  # every system cut to its first two components
    (tmp_path / "m").mkdir()
    save_model(tmp_path / "m" / "alice.npz", cut)  # the same UBM fingerprint in its metadata
    result = run("verify", "--ubm", store / "ubm.npz", "--models", tmp_path / "m", "--speaker", "alice",
                 store / "ubm.npz")
    one_error_line(result, str(tmp_path / "m" / "alice.npz"), "2 components where its UBM has 8")


def test_a_subnormal_variance_is_refused_where_the_mixture_is_made(store, tmp_path):
    from spkver.gmm.model import GMM

    g = load_model(store / "models" / "alice.npz").gmm
    variances = g.variances.copy()
    variances[0, 0] = 1e-320  # positive, but its inverse is infinite
    with pytest.raises(ValueError, match="too small to invert"):
        GMM(g.weights, g.means, variances)


def test_a_ubm_too_large_to_evaluate_is_refused_where_it_is_read(store, synthetic_corpus, tmp_path):
    # Finite means of 1e200 overflowed the float32 scoring (enroll then blamed the features), and variances of
    # 1e-37 made verify accept with a score of 1e38. The mixture's guard refuses both, so load names the file.
    from spkver.gmm.model import GMM

    g = load_model(store / "ubm.npz").gmm
    for means, variances in [(g.means * 1e200, g.variances), (g.means * 1e19, g.variances),
                             (0 * g.means, np.full_like(g.variances, 1e-37))]:
        with pytest.raises(ValueError, match="too large to evaluate"):
            GMM(g.weights, means, variances)
    GMM(g.weights, g.means * 1e12, g.variances * 1e30)  # absurd, but every frame scores finitely
    GMM(g.weights, g.means, np.full_like(g.variances, 1e-10))  # the least variance MAP's floor gives
    (tmp_path / "models").mkdir()
    for name, change in [("means", lambda a: a * 1e200), ("variances", lambda a: np.full_like(a, 2e-38))]:
        with np.load(store / "ubm.npz", allow_pickle=False) as stored:
            arrays = {key: stored[key] for key in stored.files}
        arrays[name] = change(arrays[name])
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)  # as a hostile tool would write it
        absurd = tmp_path / f"absurd-{name}.npz"
        absurd.write_bytes(buffer.getvalue())
        for args in (["info", absurd], ["enroll", "--ubm", absurd, "--models", tmp_path / "models", "--speaker",
                                        "alice", synthetic_corpus / "enroll" / "alice"]):
            one_error_line(run(*args), absurd.name, "too large to evaluate")
    assert not list((tmp_path / "models").iterdir())


@pytest.mark.parametrize(("copies", "gain", "norm", "problem"), [
    (1, 1.0, "z", "at least two different recordings"), (2, 1.0, "z", "at least two different recordings"),
    (2, 1.0001, "z", "scores barely vary"), (2, 1.0001, "t", "scores barely vary")])
def test_score_norm_refuses_a_cohort_of_one_recording_or_its_copies(store, synthetic_corpus, tmp_path, copies, gain,
                                                                      norm, problem):
    # Copies of one recording, even a slightly louder one, score alike: dividing by the cohort's deviation of
    # (nearly) 0 would blow the scores up into the thousands.
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    wav = next((synthetic_corpus / "background" / "bg0").glob("*.wav"))
    audio, rate = sf.read(wav)
    for i in range(copies):
        sf.write(cohort / f"copy{i}.wav", audio * gain**i, rate, subtype="FLOAT")
    trials = tmp_path / "trials"
    trials.write_text(f"alice {next((synthetic_corpus / 'test' / 'alice').glob('*.wav'))}\n")
    result = run("score", "--ubm", store / "ubm.npz", "--models", store / "models", "--trials", trials,
                 "--score-norm", norm, "--cohort", cohort, "-o", tmp_path / "s.tsv")
    one_error_line(result, f"{cohort}: ", problem)
    assert not (tmp_path / "s.tsv").exists()


@pytest.mark.parametrize("redirect", ["2>&-", "2>/dev/full"])
def test_a_closed_or_full_stderr_never_fails_a_command(store, synthetic_corpus, redirect):
    import shlex
    import subprocess
    import sys

    if redirect.endswith("full") and not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    test = next((synthetic_corpus / "test" / "alice").glob("*.wav"))
    command = [sys.executable, "-m", "spkver", "verify", "--ubm", store / "ubm.npz", "--models", store / "models",
               "--speaker", "alice", "--workers", 1, test]
    done = subprocess.run(f"{shlex.join(map(str, command))} {redirect}", shell=True, capture_output=False,
                          stdout=subprocess.PIPE, text=True)
    assert done.returncode == 0 and done.stdout.startswith("alice\t"), (done.returncode, done.stdout)
    # An error whose line cannot be written still exits 2, not 1.
    bad = [*command[:-1], test.parent / "missing.wav"]
    failed = subprocess.run(f"{shlex.join(map(str, bad))} {redirect}", shell=True, stdout=subprocess.PIPE)
    assert failed.returncode == 2
