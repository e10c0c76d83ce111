"""Models of several systems (the default ``--feature-norm cmn+warp``): each system is the model its
normalisation alone would give, a score is their mean, and training resumes across systems byte for byte."""

from __future__ import annotations

import shlex
from dataclasses import replace

import numpy as np
import pytest
from helpers import one_error_line, run_cli

import spkver.storage.models as models
from spkver import RunOptions, enroll, find_audio, train_ubm, verify
from spkver.features.config import FeatureConfig
from spkver.storage.models import load_model, npz_bytes, save_checkpoint, save_model

RUN = RunOptions(workers=1)


@pytest.fixture(scope="module")
def ubms(synthetic_corpus):
    """The two-system UBM of the defaults and the one-system UBM of each of its normalisations."""
    audio = find_audio([synthetic_corpus / "background"])
    return {norm: train_ubm(audio, config=FeatureConfig(norm=norm), n_components=8, iterations=4, run=RUN)
            for norm in ("cmn+warp", "cmn", "warp")}


def test_each_system_is_the_model_its_normalisation_alone_gives(ubms):
    both = ubms["cmn+warp"]
    assert both.feature_config == FeatureConfig() and len(both.gmms) == 2
    for gmm, norm in zip(both.gmms, ("cmn", "warp")):
        alone = ubms[norm].gmm
        for name in ("weights", "means", "variances"):
            np.testing.assert_allclose(getattr(gmm, name), getattr(alone, name), rtol=1e-9, atol=1e-12)
    assert [s["norm"] for s in both.meta["training"]["systems"]] == ["cmn", "warp"]
    assert not np.array_equal(both.gmms[0].means, both.gmms[1].means)


def test_a_score_is_the_mean_of_the_systems_scores(ubms, synthetic_corpus):
    speaker = find_audio([synthetic_corpus / "enroll" / "alice"])
    tests = find_audio([synthetic_corpus / "test"])
    scores = {}
    for norm, ubm in ubms.items():
        model = enroll(ubm, speaker, "alice", run=RUN)
        assert len(model.gmms) == len(ubm.gmms)
        scores[norm] = np.array([s.score for s in verify(ubm, [model], tests, run=RUN)])
    np.testing.assert_allclose(scores["cmn+warp"], (scores["cmn"] + scores["warp"]) / 2, rtol=1e-9, atol=1e-9)
    assert not np.allclose(scores["cmn"], scores["warp"])  # the systems do differ


def test_a_two_system_model_file_round_trips_and_a_one_system_file_stays_format_1(ubms, tmp_path):
    both, cmn = ubms["cmn+warp"], ubms["cmn"]
    save_model(tmp_path / "both.npz", both)
    save_model(tmp_path / "cmn.npz", cmn)
    loaded = load_model(tmp_path / "both.npz", "ubm")
    assert loaded.meta["format_version"] == 2 and loaded.fingerprint == both.fingerprint
    for a, b in zip(loaded.gmms, both.gmms):
        assert np.array_equal(a.means, b.means) and np.array_equal(a.variances, b.variances)
    one = load_model(tmp_path / "cmn.npz", "ubm")
    assert one.meta["format_version"] == 1 and one.further == () and one.fingerprint == models.fingerprint(cmn.gmm)
    # The fingerprint covers every system: a speaker of one system cannot pass for one of the other.
    assert both.fingerprint != models.fingerprint(both.gmm)


def test_settings_stored_before_two_systems_read_as_cmn():
    stored = FeatureConfig(norm="cmn").to_dict()
    del stored["norm"]
    assert FeatureConfig.from_dict(stored).norm == "cmn"
    for bad in ("cmn+cmn", "cmn+", "warp+bogus"):
        with pytest.raises(ValueError, match="norm must be"):
            FeatureConfig(norm=bad)


def test_a_two_system_file_missing_or_mismatching_a_system_is_refused(ubms, tmp_path):
    both = ubms["cmn+warp"]
    meta = {"format_version": 2, "kind": "ubm", "feature_config": both.feature_config.to_dict()}
    (tmp_path / "one.npz").write_bytes(npz_bytes(both.gmm, meta))  # the second system left out
    one_error_line(run_cli("info", tmp_path / "one.npz"), "one.npz", "no mixture for system 2")
    small = both.gmms[1]
    cut = {"weights_2": small.weights[:4] / small.weights[:4].sum(), "means_2": small.means[:4],
           "variances_2": small.variances[:4]}
    (tmp_path / "cut.npz").write_bytes(npz_bytes(both.gmm, meta, cut))
    one_error_line(run_cli("info", tmp_path / "cut.npz"), "cut.npz", "systems of different sizes")
    with pytest.raises(ValueError, match="a model of 2 systems .* needs as many mixtures, not 1"):
        replace(both, further=())  # in memory too: a system left out would otherwise be dropped silently
    (tmp_path / "old.npz").write_bytes(npz_bytes(both.gmm, {**meta, "format_version": 1}, cut))
    one_error_line(run_cli("info", tmp_path / "old.npz"), "old.npz", "model of 2 systems claims format 1")


def test_the_cli_trains_two_systems_and_says_so(synthetic_corpus, tmp_path):
    result = run_cli("train-ubm", "-o", tmp_path / "u.npz", "--components", 4, "--iterations", 2, "--workers", 1,
                     "--no-cache", synthetic_corpus / "background")
    assert result.exit_code == 0, result.stderr
    assert "system 1 of 2: cepstra normalised by cmn" in result.stderr
    assert "system 2 of 2: cepstra normalised by warp" in result.stderr
    one = run_cli("train-ubm", "-o", tmp_path / "c.npz", "--components", 4, "--iterations", 2, "--workers", 1,
                  "--no-cache", "--feature-norm", "cmn", synthetic_corpus / "background")
    assert one.exit_code == 0 and "system 1" not in one.stderr
    assert load_model(tmp_path / "c.npz").further == ()
    bad = run_cli("train-ubm", "-o", tmp_path / "b.npz", "--feature-norm", "cmn+cmn", synthetic_corpus / "background")
    assert bad.exit_code == 2 and "names a normalisation twice" in bad.stderr


def interrupt_in_system(number, step):
    """A save_checkpoint that stops the run after EM iteration ``step`` of system ``number``."""

    def save(path, state, identity, trained=(), summaries=()):
        save_checkpoint(path, state, identity, trained=trained, summaries=summaries)
        if len(trained) == number - 1 and state.step == step:
            raise KeyboardInterrupt

    return save


def test_iterations_may_change_until_a_system_has_finished_with_them(synthetic_corpus, tmp_path, monkeypatch):
    common = ["train-ubm", "--components", 4, "--workers", 1, "--no-cache", "--tol", 0,
              *sorted((synthetic_corpus / "background").rglob("*.wav"))[:10]]
    reference, output = tmp_path / "reference.npz", tmp_path / "u.npz"
    assert run_cli(*common, "--iterations", 6, "-o", reference).exit_code == 0
    # Killed in system 1: raising --iterations continues to what a run asked for 6 from the start gives.
    monkeypatch.setattr(models, "save_checkpoint", interrupt_in_system(1, 2))
    assert run_cli(*common, "--iterations", 4, "-o", output).exit_code == 130
    monkeypatch.undo()
    resumed = run_cli(*common, "--iterations", 6, "-o", output, "--resume")
    assert resumed.exit_code == 0, resumed.stderr
    assert output.read_bytes() == reference.read_bytes()
    # Killed in system 2: system 1 finished with 4, so 6 would mix the two; refused, and --force starts over.
    output.unlink()
    monkeypatch.setattr(models, "save_checkpoint", interrupt_in_system(2, 1))
    assert run_cli(*common, "--iterations", 4, "-o", output).exit_code == 130
    monkeypatch.undo()
    one_error_line(run_cli(*common, "--iterations", 6, "-o", output, "--resume"), "checkpoint",
                   "iterations 4 (now 6)", "--force")
    forced = run_cli(*common, "--iterations", 6, "-o", output, "--resume", "--force")
    assert forced.exit_code == 0, forced.stderr
    assert output.read_bytes() == reference.read_bytes()


def test_ctrl_c_in_the_second_system_resumes_to_the_same_bytes(synthetic_corpus, tmp_path, monkeypatch):
    common = ["train-ubm", "--components", 4, "--workers", 1, "--no-cache", "--tol", 0, "--iterations", 4,
              *sorted((synthetic_corpus / "background").rglob("*.wav"))[:10]]
    reference, output = tmp_path / "reference.npz", tmp_path / "u.npz"
    assert run_cli(*common, "-o", reference).exit_code == 0

    monkeypatch.setattr(models, "save_checkpoint", interrupt_in_system(2, 2))
    result = run_cli(*common, "-o", output)
    monkeypatch.undo()
    assert result.exit_code == 130 and not output.exists()
    line = result.stderr.strip().splitlines()[-1]
    assert "interrupted after EM iteration 2 of system 2;" in line
    resumed = run_cli(*shlex.split(line.split("To continue: ", 1)[1])[1:])
    assert resumed.exit_code == 0, resumed.stderr
    assert "system 1 of 2" not in resumed.stderr and "system 2 of 2" in resumed.stderr
    assert output.read_bytes() == reference.read_bytes()
    assert not (tmp_path / "u.npz.checkpoint.npz").exists()


def test_a_checkpoint_with_damaged_summaries_of_its_trained_systems_is_refused(ubms, tmp_path):
    from spkver.errors import SpkverError
    from spkver.gmm.em import EMState
    from spkver.storage.models import load_checkpoint

    gmm = ubms["cmn"].gmm
    state, identity = EMState(gmm, [-1.0, -0.5], 1, 0, {"state": 1}), {"run": "x"}
    good = {"norm": "cmn", "iterations": 1, "max_iterations": 3, "converged": False,
            "average_log_likelihood": -0.5, "log_likelihood_history": [-1.0, -0.5], "reseeded_components": 0}
    save_checkpoint(tmp_path / "c.npz", state, identity, trained=(gmm,), summaries=(good,))
    loaded = load_checkpoint(tmp_path / "c.npz", identity)
    assert loaded.summaries == (good,) and np.array_equal(loaded.trained[0].means, gmm.means)
    for damaged in ({}, {**good, "iterations": "many"}, {**good, "log_likelihood_history": [-0.5]},
                    {**good, "max_iterations": 0},
                    {**good, "average_log_likelihood": float("nan")}):
        save_checkpoint(tmp_path / "c.npz", state, identity, trained=(gmm,), summaries=(damaged,))
        with pytest.raises(SpkverError, match="checkpoint is damaged"):
            load_checkpoint(tmp_path / "c.npz", identity)


def test_info_shows_a_model_whose_training_summary_is_odd(ubms, tmp_path):
    both = ubms["cmn+warp"]
    meta = {"format_version": 2, "kind": "ubm", "feature_config": both.feature_config.to_dict(),
            "training": {"systems": 5}}
    (tmp_path / "odd.npz").write_bytes(npz_bytes(both.gmm, meta, models.system_arrays(both.further)))
    result = run_cli("info", tmp_path / "odd.npz")
    assert result.exit_code == 0 and "2 systems (cmn, warp)" in result.stdout and "system 1 (" not in result.stdout
