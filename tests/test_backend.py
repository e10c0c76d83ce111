"""The back end (spkver.backend): LLR scoring, metrics, score normalisation, calibration, fusion and
identification, through the library and the score, evaluate, calibrate and identify commands (fuse's command:
tests/test_fusion.py)."""

import doctest
import json

import numpy as np
import pytest
from helpers import run_cli, train_and_enroll
from sklearn.metrics import roc_curve

import spkver.backend.fusion
from spkver.backend.calibration import calibration_warnings, fit_calibration, fit_linear_llr, load_calibration
from spkver.backend.fusion import Fusion, fit_fusion, fusion_json, load_fusion, save_fusion
from spkver.backend.metrics import actual_dcf, bayes_threshold, cllr, det_points, eer, min_cllr, min_dcf, pav
from spkver.backend.scorenorm import cohort_statistics, normalise_scores
from spkver.backend.scoring import llr_scores
from spkver.errors import SpkverError
from spkver.gmm.estep import accumulate
from spkver.gmm.map import map_adapt
from spkver.gmm.model import GMM
from spkver.run import RunOptions
from spkver.storage.trials import Score, align_scores, read_scores, read_trials

run = run_cli


@pytest.fixture(scope="module")
def enrolled(synthetic_corpus, tmp_path_factory):
    """UBM, two enrolled speakers and a labelled trial list over the synthetic test files."""
    work = tmp_path_factory.mktemp("evaluation")
    ubm, models = train_and_enroll(synthetic_corpus, work)
    lines = []
    for test in sorted((synthetic_corpus / "test").rglob("*.wav")):
        for name in ["alice", "bob"]:
            label = "target" if test.parent.name == name else "nontarget"
            lines.append(f"{name}\t{test}\t{label}")
    trials = work / "trials"
    trials.write_text("\n".join(lines) + "\n")
    return work, ubm, models, trials, synthetic_corpus


def test_score_writes_trials_in_order_and_matches_verify(enrolled):
    work, ubm, models, trials, corpus = enrolled
    out = work / "raw.scores"
    result = run("score", "--ubm", ubm, "--models", models, "--trials", trials, "-o", out, "--score-norm", "none")
    assert result.exit_code == 0, result.stderr
    scores, calibrated, normalisation = read_scores(out)
    assert not calibrated and normalisation == "none" and len(scores) == 12
    assert [(s.speaker, s.test) for s in scores] == [(t.speaker, t.test) for t in read_trials(trials)]
    first = scores[0]
    verify = run("-q", "verify", "--ubm", ubm, "--models", models, "--speaker", first.speaker, first.test)
    assert float(verify.stdout.split("\t")[2]) == pytest.approx(first.score, abs=1e-6)


def test_kaldi_trials_with_wav_scp(enrolled, tmp_path):
    work, ubm, models, _, corpus = enrolled
    files = sorted((corpus / "test").rglob("*.wav"))[:2]
    scp = tmp_path / "wav.scp"
    scp.write_text("".join(f"utt{i} {f}\n" for i, f in enumerate(files)))
    kaldi = tmp_path / "trials"
    kaldi.write_text("alice utt0 target\nbob utt1 nontarget\n")
    out = tmp_path / "scores"
    assert run("score", "--ubm", ubm, "--models", models, "--trials", kaldi, "--wav-scp", scp, "-o", out).exit_code == 0
    assert [s.test for s in read_scores(out).scores] == ["utt0", "utt1"]
    kaldi.write_text("alice utt9 target\n")
    result = run("score", "--ubm", ubm, "--models", models, "--trials", kaldi, "--wav-scp", scp, "-o", out)
    assert result.exit_code == 2 and "line 1" in result.stderr and "utt9" in result.stderr


def test_unknown_speakers_and_bad_files_fail_or_are_skipped(enrolled, tmp_path):
    work, ubm, models, trials, _ = enrolled
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"junk")
    extra = tmp_path / "trials"
    extra.write_text(trials.read_text() + f"carol\t{bad}\tnontarget\nalice\t{bad}\tnontarget\n")
    out = tmp_path / "scores"
    result = run("score", "--ubm", ubm, "--models", models, "--trials", extra, "-o", out)
    assert result.exit_code == 2 and "line 13" in result.stderr and "carol" in result.stderr
    assert not out.exists()
    result = run("score", "--ubm", ubm, "--models", models, "--trials", extra, "-o", out, "--skip-bad")
    assert result.exit_code == 0 and "carol" in result.stderr and "bad.wav" in result.stderr
    assert len(read_scores(out).scores) == 12


@pytest.mark.parametrize("norm", ["z", "t", "s"])
def test_normalised_scoring_uses_and_caches_the_cohort(enrolled, tmp_path, norm):
    work, ubm, models, trials, corpus = enrolled
    out1, out2 = tmp_path / "a", tmp_path / "b"
    args = ["score", "--ubm", ubm, "--models", models, "--trials", trials, "--score-norm", norm,
            "--cohort", corpus / "background"]
    assert run(*args, "-o", out1).exit_code == 0
    assert any((models / ".cohort-cache").glob("*.json"))
    assert run(*args, "-o", out2).exit_code == 0
    assert out1.read_text() == out2.read_text()
    raw = {(s.speaker, s.test): s.score for s in read_scores(work / "raw.scores")[0]} \
        if (work / "raw.scores").exists() else None
    normed, _, normalisation = read_scores(out1)
    assert normalisation == norm
    if raw:
        assert any(abs(s.score - raw[s.speaker, s.test]) > 1e-3 for s in normed)
    bare = tmp_path / "bare.npz"  # a UBM without a stored cohort
    assert run("train-ubm", "-o", bare, "--components", 4, "--iterations", 1, "--workers", 1, "--cohort-segments", 0,
               corpus / "background").exit_code == 0
    result = run("score", "--ubm", bare, "--models", tmp_path / "none", "--trials", trials, "--score-norm", norm,
                 "-o", out1)
    assert result.exit_code == 2 and "--cohort" in result.stderr


def test_score_normalises_against_the_ubms_own_cohort_by_default(enrolled, tmp_path):
    from spkver.storage.models import load_model

    work, ubm, models, trials, corpus = enrolled
    stored = load_model(ubm).cohort
    assert stored and all(segment.shape == (300, 248) and segment.dtype == np.float16 for segment in stored)
    result = run("score", "--ubm", ubm, "--models", models, "--trials", trials, "-o", tmp_path / "s")
    assert result.exit_code == 0 and result.stderr.count("warning") == 0
    default = read_scores(tmp_path / "s")
    assert default.normalisation == "s"
    run("score", "--ubm", ubm, "--models", models, "--trials", trials, "-o", tmp_path / "raw", "--score-norm", "none")
    raw = read_scores(tmp_path / "raw")
    assert raw.normalisation == "none"
    assert all(abs(a.score - b.score) > 1e-6 for a, b in zip(default.scores, raw.scores))
    # Calibrated on raw scores, a calibration makes score raw again without being told.
    assert run("calibrate", tmp_path / "raw", "-o", tmp_path / "cal.json").exit_code == 0
    result = run("score", "--ubm", ubm, "--models", models, "--trials", trials, "-o", tmp_path / "llr",
                 "--calibration", tmp_path / "cal.json")
    assert result.exit_code == 0 and read_scores(tmp_path / "llr").normalisation == "none"


def test_cohort_cache_is_reused_without_recomputing(enrolled, monkeypatch):
    from spkver.api import score_trials
    from spkver.audio.sources import find_audio
    from spkver.backend.scorenorm import Cohort
    from spkver.storage.models import load_model
    from spkver.storage.speakers import SpeakerStore

    work, ubm_path, models, trials, corpus = enrolled
    ubm = load_model(ubm_path)
    cohort_files = find_audio([corpus / "background"])
    first = score_trials(ubm, SpeakerStore(models), read_trials(trials), norm="s",
                         cohort=Cohort(ubm, cohort_files, cache_dir=work / "cache"), run=RunOptions(workers=1))
    monkeypatch.setattr(Cohort, "features", lambda self: pytest.fail("cohort recomputed"))
    second = score_trials(ubm, SpeakerStore(models), read_trials(trials), norm="s",
                          cohort=Cohort(ubm, cohort_files, cache_dir=work / "cache"), run=RunOptions(workers=1))
    assert [t.score for t in first] == [t.score for t in second]


def test_normalisation_formulas():
    raw = np.array([1.0, 2.0])
    z = (np.array([0.0, 1.0]), np.array([1.0, 2.0]))
    t = (0.5, 0.5)
    np.testing.assert_allclose(normalise_scores(raw, "z", z), [1.0, 0.5])
    np.testing.assert_allclose(normalise_scores(raw, "t", t_stats=t), [1.0, 3.0])
    np.testing.assert_allclose(normalise_scores(raw, "s", z, t), [1.0, 1.75])
    mean, std = cohort_statistics([[1.0, 5.0, 3.0, 9.0]], top_n=2)
    assert mean[0] == 7.0 and std[0] == 2.0


def test_evaluate_reports_metrics_and_draws_a_det(enrolled, tmp_path):
    work, ubm, models, trials, _ = enrolled
    scores = work / "raw.scores"
    run("score", "--ubm", ubm, "--models", models, "--trials", trials, "-o", scores)
    result = run("evaluate", scores, "--p-target", "0.01", "--p-target", "0.1", "--json", "--det", tmp_path / "d.png")
    record = json.loads(result.stdout)
    assert record["targets"] == 6 and record["nontargets"] == 6
    assert 0 <= record["eer"] <= 0.5 and set(record["min_dcf"]) == {"0.01", "0.1"}
    assert (tmp_path / "d.png").read_bytes()[:4] == b"\x89PNG"
    unlabelled = tmp_path / "plain.scores"
    unlabelled.write_text("".join("\t".join(line.split("\t")[:3]) + "\n" for line in scores.read_text().splitlines()))
    assert run("evaluate", unlabelled).exit_code == 2
    assert run("evaluate", unlabelled, "--trials", trials).exit_code == 0


def test_calibrate_then_verify_and_score_with_llrs(enrolled, tmp_path):
    work, ubm, models, trials, corpus = enrolled
    raw = tmp_path / "raw"
    run("score", "--ubm", ubm, "--models", models, "--trials", trials, "-o", raw, "--score-norm", "none")
    cal = tmp_path / "cal.json"
    result = run("calibrate", raw, "-o", cal, "--p-target", "0.1")
    assert result.exit_code == 0 and "Cllr" in result.stderr
    calibration = load_calibration(cal)
    assert calibration.scale > 0
    llrs = tmp_path / "llr"
    run("score", "--ubm", ubm, "--models", models, "--trials", trials, "-o", llrs, "--calibration", cal)
    scores, calibrated, _ = read_scores(llrs)
    assert calibrated
    raw_scores = read_scores(raw).scores
    np.testing.assert_allclose([s.score for s in scores], calibration([s.score for s in raw_scores]), atol=1e-5)
    assert "actDCF" in run("evaluate", llrs).stdout
    test = sorted((corpus / "test" / "alice").glob("*.wav"))[0]
    out = run("verify", "--ubm", ubm, "--models", models, "--speaker", "alice", "--calibration", cal,
              "--p-target", "0.1", "--json", test)
    record = json.loads(out.stdout)
    assert 0 <= record["posterior"] <= 1 and record["p_target"] == 0.1
    expected = "accept" if record["score"] >= bayes_threshold(0.1) else "reject"
    assert record["decision"] == expected


def test_a_calibration_is_only_applied_to_scores_normalised_like_its_own(enrolled, tmp_path):
    work, ubm, models, trials, corpus = enrolled
    common = ["score", "--ubm", ubm, "--models", models, "--trials", trials]
    snorm = [*common, "--score-norm", "s", "--cohort", corpus / "background", "--top-n", "5"]
    assert run(*snorm, "-o", tmp_path / "s").exit_code == 0
    assert read_scores(tmp_path / "s").normalisation == "s top-n=5"
    cal = tmp_path / "cal.json"
    assert run("calibrate", tmp_path / "s", "-o", cal).exit_code == 0
    assert load_calibration(cal).normalisation == "s top-n=5"
    assert run(*snorm, "-o", tmp_path / "llr", "--calibration", cal).exit_code == 0
    llr = read_scores(tmp_path / "llr")
    assert llr.calibrated and llr.normalisation == "s top-n=5"
    test = sorted((corpus / "test" / "alice").glob("*.wav"))[0]
    refused = [
        run(*common, "-o", tmp_path / "raw", "--calibration", cal, "--score-norm", "none"),
        run(*common, "--score-norm", "s", "--cohort", corpus / "background", "-o", tmp_path / "x",
            "--calibration", cal),
        run("verify", "--ubm", ubm, "--models", models, "--speaker", "alice", "--calibration", cal, test),
        run("identify", "--ubm", ubm, "--models", models, "--calibration", cal, test),
    ]
    for result in refused:
        assert result.exit_code == 2 and str(cal) in result.stderr and "normalisation 's top-n=5'" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "raw").exists() and not (tmp_path / "x").exists()


def test_calibration_recovers_a_known_llr():
    # Scores ~ N(±1, 1): the true LLR is 2·s. With equal priors the fit must find it.
    rng = np.random.default_rng(0)
    tar, non = rng.normal(1, 1, 20000), rng.normal(-1, 1, 20000)
    cal = fit_calibration(tar, non, p_target=0.5)
    assert cal.scale == pytest.approx(2.0, rel=0.05) and cal.offset == pytest.approx(0.0, abs=0.05)
    cal01 = fit_calibration(3 * tar + 7, 3 * non + 7, p_target=0.01)
    assert cal01.scale == pytest.approx(2 / 3, rel=0.1)
    llr_tar, llr_non = cal01(3 * tar + 7), cal01(3 * non + 7)
    assert cllr(llr_tar, llr_non) >= min_cllr(tar, non) - 1e-9
    assert actual_dcf(llr_tar, llr_non, 0.01) < 1.0


def former_fit_calibration(tar, non, prior):
    """``fit_calibration`` as it was before the fit covered several systems: ``(scale, offset)``."""
    from scipy.optimize import minimize
    from scipy.special import expit

    from spkver.backend.metrics import prior_log_odds

    def cross_entropy(logit, label):
        value = (label * np.logaddexp(0, -logit) + (1 - label) * np.logaddexp(0, logit)).mean()
        return value, (expit(logit) - label) / len(logit)

    def objective(params, tar, non):
        scale, offset = params
        shift = prior_log_odds(prior)
        tar_label, non_label = (len(tar) + 1) / (len(tar) + 2), 1 / (len(non) + 2)
        value_tar, grad_tar = cross_entropy(scale * tar + offset + shift, tar_label)
        value_non, grad_non = cross_entropy(scale * non + offset + shift, non_label)
        grad_scale = prior * grad_tar @ tar + (1 - prior) * grad_non @ non
        grad_offset = prior * grad_tar.sum() + (1 - prior) * grad_non.sum()
        return prior * value_tar + (1 - prior) * value_non, np.array([grad_scale, grad_offset])

    centre = 0.5 * (tar.mean() + non.mean())
    spread = max(np.concatenate([tar, non]).std(), 1e-12)
    scale, offset = minimize(objective, np.zeros(2), args=((tar - centre) / spread, (non - centre) / spread),
                             jac=True, method="BFGS").x
    return scale / spread, offset - scale * centre / spread


@pytest.mark.parametrize("seed", range(12))
def test_calibration_equals_the_former_one_system_fit(seed):
    rng = np.random.default_rng(seed)
    gain, shift = rng.uniform(0.01, 100), rng.uniform(-50, 50)  # scales and shifts the fit must standardise away
    tar = gain * rng.normal(rng.uniform(0, 4), rng.uniform(0.3, 3), int(rng.integers(5, 3000))) + shift
    non = gain * rng.normal(0, 1, int(rng.integers(5, 5000))) + shift
    p_target = [0.5, 0.01, 0.001][seed % 3]
    scale, offset = former_fit_calibration(tar, non, p_target)
    calibration = fit_calibration(tar, non, p_target)
    assert calibration.scale == pytest.approx(scale, rel=1e-9)
    assert calibration.offset == pytest.approx(offset, rel=1e-9, abs=1e-9)


def test_scores_near_the_largest_float_fit_as_their_scaled_down_selves():
    rng = np.random.default_rng(8)
    tar, non = rng.normal(1, 1, (300, 2)), rng.normal(-1, 1, (3000, 2))
    reference_weights, reference_offset = fit_linear_llr(tar, non, 0.01)
    gain = np.array([1.5e307, 1.0])  # the first system's mean and spread would overflow if summed as they are
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow is harmless
        weights, offset = fit_linear_llr(tar * gain, non * gain, 0.01)
    np.testing.assert_allclose(weights * gain, reference_weights, rtol=1e-9)
    assert offset == pytest.approx(reference_offset, rel=1e-9)


def two_gaussian_systems(rng, n_per_class):
    """Scores of two independent systems, Gaussian with equal variance in each class, and their true LLR's
    weights and offset: ``llr = Σ_k (μ₊ − μ₋)/σ² · s_k − (μ₊² − μ₋²)/(2σ²)``."""
    target_means, nontarget_means, sigmas = np.array([3.0, -1.0]), np.array([1.0, -4.0]), np.array([2.0, 5.0])
    tar = rng.normal(target_means, sigmas, (n_per_class, 2))
    non = rng.normal(nontarget_means, sigmas, (n_per_class, 2))
    weights = (target_means - nontarget_means) / sigmas**2
    offset = -np.sum((target_means**2 - nontarget_means**2) / (2 * sigmas**2))
    return tar, non, weights, offset


def test_fusion_recovers_known_weights():
    """With equal class counts and P_target 0.5 the objective is plain logistic regression, which the true LLR
    (linear here) fits exactly: the estimates are then within a few standard errors of it. The standard errors
    are the Fisher information's, sqrt(diag((XᵀWX)⁻¹)); 4 of them leave a 6e-5 chance per coefficient of failing
    on a correct fit, and the errors are checked to be small enough for the test to mean something."""
    rng = np.random.default_rng(7)
    tar, non, true_weights, true_offset = two_gaussian_systems(rng, 20000)
    fusion = fit_fusion(tar, non, p_target=0.5)
    design = np.column_stack([np.concatenate([tar, non]), np.ones(2 * len(tar))])
    posterior = 1 / (1 + np.exp(-(design @ np.append(true_weights, true_offset))))
    weight = posterior * (1 - posterior)
    errors = np.sqrt(np.diag(np.linalg.inv(design.T @ (design * weight[:, None]))))
    fitted = np.append(fusion.weights, fusion.offset)
    truth = np.append(true_weights, true_offset)
    assert (errors < 0.05 * np.abs(truth)).all()
    assert (np.abs(fitted - truth) < 4 * errors).all(), (fitted, truth, errors)
    assert (fusion.targets, fusion.nontargets) == (20000, 20000)


def test_fusion_is_unchanged_by_each_systems_scale_and_shift():
    """Scores standardised per system: a system measured in other units gets its weight rescaled, nothing else."""
    rng = np.random.default_rng(3)
    tar, non, _, _ = two_gaussian_systems(rng, 500)
    reference = fit_fusion(tar, non, p_target=0.01)
    for gain, shift in [(1e4, -3e5), (1e-3, 7.0)]:
        fusion = fit_fusion(tar * [gain, 1] + [shift, 0], non * [gain, 1] + [shift, 0], p_target=0.01)
        np.testing.assert_allclose(fusion.weights, np.array(reference.weights) / [gain, 1], rtol=1e-6)
        np.testing.assert_allclose(fusion(non * [gain, 1] + [shift, 0]), reference(non), rtol=1e-6, atol=1e-6)


def test_fusing_one_system_is_calibrating_it():
    rng = np.random.default_rng(5)
    tar, non = rng.normal(2, 1.5, 300), rng.normal(-1, 1, 3000)
    fusion = fit_fusion(tar[:, None], non[:, None], p_target=0.01)
    calibration = fit_calibration(tar, non, p_target=0.01)
    assert fusion.weights == (calibration.scale,) and fusion.offset == calibration.offset


def test_a_system_that_does_not_vary_gets_weight_zero():
    rng = np.random.default_rng(2)
    tar = np.column_stack([rng.normal(1, 1, 200), np.full(200, 0.1)])
    non = np.column_stack([rng.normal(-1, 1, 2000), np.full(2000, 0.1)])
    weights, _ = fit_linear_llr(tar, non, 0.01)
    assert weights[1] == 0 and weights[0] > 0
    with pytest.raises(ValueError, match="same systems"):
        fit_linear_llr(tar, non[:, :1], 0.01)


def test_fusion_files_round_trip_and_damaged_ones_are_one_line_errors(tmp_path):
    rng = np.random.default_rng(4)
    tar, non, _, _ = two_gaussian_systems(rng, 300)
    fusion = fit_fusion(tar, non, 0.01, systems=["gmm", "other"], normalisations=["s top-n=5", "none"],
                        calibrated=[False, True])
    path = tmp_path / "fusion.json"
    save_fusion(path, fusion)
    loaded = load_fusion(path)
    assert loaded == fusion and loaded.source == str(path) and loaded.normalisation == "s top-n=5 + none"
    good = json.loads(fusion_json(fusion))
    damaged = {"wrong kind": dict(good, kind="spkver-calibration"), "newer version": dict(good, version=2),
               "missing offset": {k: v for k, v in good.items() if k != "offset"},
               "NaN weight": dict(good, weights=[1.0, float("nan")]), "text weight": dict(good, weights=["1", 2]),
               "true weight": dict(good, weights=[True, 2.0]), "huge integer": dict(good, offset=10**400),
               "no weights": dict(good, weights=[], systems=[], normalisations=[], calibrated=[]),
               "lengths differ": dict(good, systems=["gmm"]), "p_target 1": dict(good, p_target=1.0),
               "negative count": dict(good, targets=-1), "text flags": dict(good, calibrated=["no", "no"]),
               "a newline in a normalisation": dict(good, normalisations=["s\n1 2 3", "none"])}
    for problem, data in damaged.items():
        path.write_text(json.dumps(data))
        with pytest.raises(SpkverError) as caught:
            load_fusion(path)
        assert str(caught.value).startswith(str(path)) and "\n" not in str(caught.value), problem
    path.write_text('{"kind": "spkver-fusion", "version": 1, "weights": [1.0')
    with pytest.raises(SpkverError, match="not valid JSON"):
        load_fusion(path)


def test_fusion_refuses_scores_made_otherwise_than_its_own():
    fusion = Fusion((1.0, 2.0), 0.5, 0.01, systems=("gmm", "other"), normalisations=("s", "none"),
                    calibrated=(False, True), source="f.json")
    fusion.require(0, "s", False)
    fusion.require(1, "none", True)
    with pytest.raises(SpkverError, match=r"system 1 of f.json \(gmm\) was learnt on scores with normalisation 's'"):
        fusion.require(0, "none", False, "eval.tsv")
    with pytest.raises(SpkverError, match="learnt on calibrated LLRs, these are raw scores"):
        fusion.require(1, "none", False, "eval.tsv")
    with pytest.raises(SpkverError, match=r"combines 2 systems \(gmm, other\) but 3 score files"):
        fusion.require_systems(3)
    np.testing.assert_allclose(fusion([[1.0, 1.0], [0.0, -1.0]]), [3.5, -1.5])
    with pytest.raises(ValueError, match="3 weights but 2 systems"):
        Fusion((1.0, 2.0, 3.0), 0.0, 0.5, systems=("a", "b"))


def test_the_fusion_examples_run():
    runner = doctest.DocTestRunner()
    for test in doctest.DocTestFinder().find(spkver.backend.fusion):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.attempted >= 3 and result.failed == 0


def scored(*rows):
    """Score records of ``(speaker, test, score, label)`` rows, numbered as lines 1, 2, …"""
    return [Score(speaker, test, value, label, line=number) for number, (speaker, test, value, label)
            in enumerate(rows, 1)]


def test_align_scores_keeps_the_trials_every_system_scores_in_the_first_ones_order():
    first = scored(("a", "x", 1.0, True), ("a", "y", 2.0, None), ("b", "x", 3.0, False), ("b", "z", 4.0, None))
    second = scored(("b", "x", 30.0, None), ("a", "y", 20.0, False), ("a", "x", 10.0, None), ("c", "c", 0.0, None))
    notes = []
    aligned = align_scores([first, second], ["one", "two"], on_note=notes.append)
    assert [(t.speaker, t.test, t.label) for t in aligned.trials] == [("a", "x", True), ("a", "y", False),
                                                                     ("b", "x", False)]
    assert aligned.scores == [[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]] and aligned.left_out == [1, 1]
    assert notes == ["one: 1 of its 4 trials are not scored in every file and are left out: b z (line 4)",
                     "two: 1 of its 4 trials are not scored in every file and are left out: c c (line 4)"]
    with pytest.raises(SpkverError, match=r"^two: line 1: labelled nontarget but one line 1 says target"):
        align_scores([first, scored(("a", "x", 0.0, False))], ["one", "two"])
    with pytest.raises(SpkverError, match="no trial is scored in every file"):
        align_scores([first, scored(("q", "q", 0.0, None))], ["one", "two"])


def test_cllr_and_pav_hand_cases():
    assert cllr([0.0], [0.0]) == pytest.approx(1.0)
    assert min_cllr([2, 3], [0, 1]) == pytest.approx(0.0)
    assert min_cllr([1, 1], [1, 1]) == pytest.approx(1.0)
    np.testing.assert_allclose(pav([0, 1, 0, 1, 1]), [0, 0.5, 0.5, 1, 1])
    np.testing.assert_allclose(pav([1, 0, 0]), [1 / 3] * 3)


def pav_reference(values, weights):
    """spkver's own pool-adjacent-violators loop, before SciPy's isotonic regression replaced it."""
    sums, counts, sizes = [], [], []
    for value, weight in zip(values, weights):
        sums.append(value * weight)
        counts.append(weight)
        sizes.append(1)
        while len(sums) > 1 and sums[-2] / counts[-2] >= sums[-1] / counts[-1]:
            s, c, n = sums.pop(), counts.pop(), sizes.pop()
            sums[-1] += s
            counts[-1] += c
            sizes[-1] += n
    return np.repeat(np.array(sums) / np.array(counts), sizes)


def min_cllr_reference(tar, non):
    """``min_cllr`` as it was computed with :func:`pav_reference`."""
    scores, labels = np.concatenate([tar, non]), np.concatenate([np.ones(len(tar)), np.zeros(len(non))])
    _, group = np.unique(scores, return_inverse=True)
    count = np.bincount(group).astype(np.float64)
    posterior = pav_reference(np.bincount(group, labels) / count, count)[group]
    with np.errstate(divide="ignore"):
        llr = np.log(posterior) - np.log1p(-posterior) - np.log(len(tar) / len(non))
    return cllr(llr[: len(tar)], llr[len(tar) :])


@pytest.mark.parametrize("seed", range(20))
def test_pav_and_min_cllr_equal_the_former_implementation(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 400))
    values = rng.random(n) if seed % 2 else rng.integers(0, 2, n).astype(np.float64)
    weights = rng.uniform(0.1, 10, n) if seed % 3 else np.ones(n)
    np.testing.assert_allclose(pav(values, weights), pav_reference(values, weights), rtol=0, atol=1e-12)
    # Rounded scores make ties, which min_cllr pools before PAV.
    tar = np.round(rng.normal(1.5, 1, int(rng.integers(1, 300))), seed % 3)
    non = np.round(rng.normal(0, 1, int(rng.integers(1, 300))), seed % 3)
    assert abs(min_cllr(tar, non) - min_cllr_reference(tar, non)) <= 1e-12


def test_identify_ranks_speakers_and_answers_unknown(enrolled):
    work, ubm, models, trials, corpus = enrolled
    tests = sorted((corpus / "test").rglob("*.wav"))
    result = run("-q", "identify", "--ubm", ubm, "--models", models, "--top", "2", *tests)
    rows = [line.split("\t") for line in result.stdout.splitlines() if not line.startswith("#")]
    assert len(rows) == len(tests) and all(len(r) == 4 for r in rows)
    correct = np.mean([r[1] == r[0].split("/")[-2] for r in rows])
    assert correct >= 0.6
    result = run("-q", "identify", "--ubm", ubm, "--models", models, "--threshold", "1e9", "--json", tests[0])
    assert json.loads(result.stdout)["decision"] == "unknown"


def test_det_without_matplotlib_is_a_clear_error(monkeypatch, tmp_path):
    import sys

    from spkver.backend.plots import det_plot

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(SpkverError, match=r"needs matplotlib: pip install 'spkver\[plot\]'"):
        det_plot([("x", [1.0, 2.0], [0.0, 0.5])], tmp_path / "d.png")
    assert not (tmp_path / "d.png").exists()


def test_calibration_stays_finite_on_small_or_separable_sets():
    rng = np.random.default_rng(1)
    for n_tar, n_non, gap in [(45, 180, 10.0), (10, 40, 50.0), (1000, 5000, 30.0)]:
        tar, non = rng.normal(gap / 2, 1, n_tar), rng.normal(-gap / 2, 1, n_non)
        cal = fit_calibration(tar, non, p_target=0.01)
        llrs = cal(np.concatenate([tar, non]))
        assert np.isfinite(cal.scale) and 0 < cal.scale and np.abs(llrs).max() <= 20
    warnings = calibration_warnings(tar[:45], non[:180], 0.01)
    assert len(warnings) == 2 and "small development set" in warnings[0] and "do not overlap" in warnings[1]
    assert calibration_warnings(rng.normal(1, 1, 100), rng.normal(0, 1, 1000), 0.01) == []


def test_calibrate_warns_about_a_small_separable_set(tmp_path):
    scores = tmp_path / "dev.tsv"
    lines = [f"a\tt{i}\t{5 + 0.1 * i:.3f}\ttarget" for i in range(20)]
    lines += [f"a\tn{i}\t{-5 - 0.1 * i:.3f}\tnontarget" for i in range(60)]
    scores.write_text("\n".join(lines) + "\n")
    result = run("calibrate", scores, "-o", tmp_path / "cal.json")
    assert result.exit_code == 0
    assert "small development set" in result.stderr and "do not overlap" in result.stderr
    cal = load_calibration(tmp_path / "cal.json")
    assert abs(cal(25.0)) <= 20 and abs(cal(-25.0)) <= 20


def test_full_score_is_the_mean_log_likelihood_ratio():
    rng = np.random.default_rng(0)
    ubm = GMM(np.array([0.4, 0.6]), rng.normal(size=(2, 3)), rng.uniform(0.5, 2, (2, 3)))
    x = rng.normal(size=(40, 3))
    spk = map_adapt(ubm, accumulate(ubm, [x[:20]], np.float64), relevance=2)
    expected = np.mean(spk.frame_log_likelihood(x) - ubm.frame_log_likelihood(x))
    assert llr_scores(ubm, [spk], x, top_c=0)[0] == pytest.approx(expected, rel=1e-10)
    # top-C with C = K is the full sum
    assert llr_scores(ubm, [spk], x, top_c=2)[0] == pytest.approx(expected, rel=1e-10)


def test_top_c_is_close_to_full_for_well_separated_components():
    rng = np.random.default_rng(1)
    means = rng.normal(scale=6, size=(32, 4))
    ubm = GMM(np.full(32, 1 / 32), means, np.ones((32, 4)))
    x = means[rng.integers(0, 32, 500)] + rng.normal(size=(500, 4))
    spk = map_adapt(ubm, accumulate(ubm, [x[:250]], np.float64), relevance=8)
    full, fast = llr_scores(ubm, [spk], x[250:], 0)[0], llr_scores(ubm, [spk], x[250:], 5)[0]
    assert fast == pytest.approx(full, abs=0.01)


def test_empty_frames_give_nan():
    ubm = GMM(np.ones(1), np.zeros((1, 2)), np.ones((1, 2)))
    assert np.isnan(llr_scores(ubm, [ubm], np.zeros((0, 2)))).all()


def test_eer_hand_checked_cases():
    assert eer([2, 3, 4], [0, 1]) == 0.0
    assert eer([0, 1], [2, 3]) == 1.0
    # one target below one non-target out of 4 each: the DET steps cross at 0.25
    assert eer([1, 5, 6, 7], [0, 2, 3, 4]) == pytest.approx(0.25)
    # all scores tied: the only threshold gives (0, 1) then (1, 0): EER 0.5
    assert eer([1, 1, 1], [1, 1]) == pytest.approx(0.5)


def test_ties_move_together():
    p_miss, p_fa = det_points([1, 2, 2], [2, 3])
    assert p_miss.tolist() == pytest.approx([0, 1 / 3, 1, 1])
    assert p_fa.tolist() == pytest.approx([1, 1, 0.5, 0])


def test_eer_and_min_dcf_agree_with_independent_computation():
    rng = np.random.default_rng(2)
    tar, non = rng.normal(2, 1, 500), rng.normal(0, 1, 5000)
    labels = np.r_[np.ones(500), np.zeros(5000)]
    fpr, tpr, _ = roc_curve(labels, np.r_[tar, non])
    fnr = 1 - tpr
    i = np.argmin(np.abs(fnr - fpr))
    assert eer(tar, non) == pytest.approx((fnr[i] + fpr[i]) / 2, abs=2e-3)
    brute = min(0.01 * np.mean(tar < t) + 0.99 * np.mean(non >= t) for t in np.r_[tar, non, np.inf])
    assert min_dcf(tar, non, 0.01) == pytest.approx(brute / 0.01, rel=1e-9)
    assert min_dcf(tar, non, 0.01) <= 1.0


def test_metrics_reject_empty_or_nonfinite():
    with pytest.raises(ValueError):
        eer([], [1.0])
    with pytest.raises(ValueError):
        eer([np.nan], [1.0])


@pytest.mark.parametrize("top_c", [0, 3])
def test_scoring_a_subset_of_models_equals_picking_from_all(top_c):
    from spkver.backend.scoring import Scorer

    rng = np.random.default_rng(3)
    ubm = GMM(np.full(8, 1 / 8), rng.normal(scale=3, size=(8, 2)), np.ones((8, 2)))
    x = rng.normal(scale=3, size=(200, 2))
    speakers = [map_adapt(ubm, accumulate(ubm, [x[i::5]], np.float64), relevance=4) for i in range(5)]
    scorer = Scorer(ubm, speakers, top_c)
    everything = scorer.scores(x[:50])
    np.testing.assert_allclose(scorer.scores(x[:50], [3, 1]), everything[[3, 1]], rtol=1e-12)
