"""evaluate on the score and key formats people have, its thresholds and warnings, and score --pairs."""

import json

import numpy as np
import pytest
from helpers import make_store, run_cli

from spkver.backend.metrics import det_curve, eer_point, min_dcf_point
from spkver.storage.trials import KALDI_SCORES, VERIFY_JSON, VERIFY_OUTPUT, read_key, read_scores

run = run_cli


def trial_set(n_targets=40, n_nontargets=160, seed=3):
    """Labelled trials ``(speaker, test, score, is_target)`` with overlapping scores."""
    rng = np.random.default_rng(seed)
    rows = [(f"spk{i % 5}", f"utt{i:03d}", float(rng.normal(1.5, 1)), True) for i in range(n_targets)]
    rows += [(f"spk{i % 5}", f"imp{i:03d}", float(rng.normal(-1, 1)), False) for i in range(n_nontargets)]
    return rows


def write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def evaluate_json(*args):
    result = run("-q", "evaluate", "--json", *args)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_every_score_and_key_format_gives_the_eer_of_spkvers_tsv(tmp_path):
    rows = trial_set()
    word = {True: "target", False: "nontarget"}
    tsv = write(tmp_path / "scores.tsv", [f"{s}\t{t}\t{v:.6f}\t{word[y]}" for s, t, v, y in rows])
    reference = evaluate_json(tsv)
    kaldi = write(tmp_path / "kaldi.scores", [f"{s} {t} {v:.6f}" for s, t, v, _ in rows])
    kaldi_labelled = write(tmp_path / "kaldi_labelled.scores", [f"{s} {t} {v:.6f} {int(y)}" for s, t, v, y in rows])
    verify_out = write(tmp_path / "verify.txt",
                       [f"{s}\t{t}\t{v:.6f}\t{'accept' if v >= 0 else 'reject'}" for s, t, v, _ in rows])
    verify_json = write(tmp_path / "verify.jsonl", [json.dumps({"speaker": s, "path": t, "score": round(v, 6),
                                                                "decision": "accept" if v >= 0 else "reject",
                                                                "frames": 300}) for s, t, v, _ in rows])
    kaldi_key = write(tmp_path / "trials", [f"{s} {t} {word[y]}" for s, t, _, y in rows])
    vox_key = write(tmp_path / "veri_test.txt", [f"{int(y)} {s} {t}" for s, t, _, y in rows])
    tab_key = write(tmp_path / "key.tsv", [f"{s}\t{t}\t{'tgt' if y else 'imp'}" for s, t, _, y in rows])
    cases = [(kaldi, kaldi_key), (kaldi, vox_key), (kaldi, tab_key), (kaldi_labelled, None),
             (verify_out, kaldi_key), (verify_json, vox_key), (tsv, vox_key)]
    for scores, key in cases:
        record = evaluate_json(scores, *(["--key", key] if key else []))
        assert (record["targets"], record["nontargets"]) == (40, 160)
        assert record["eer"] == pytest.approx(reference["eer"]), (scores, key)
        assert record["min_dcf"] == pytest.approx(reference["min_dcf"]), (scores, key)
        assert record["eer_threshold"] == pytest.approx(reference["eer_threshold"])
    assert [read_scores(p).format for p in (kaldi, verify_out, verify_json)] == [KALDI_SCORES, VERIFY_OUTPUT,
                                                                                 VERIFY_JSON]
    assert evaluate_json(kaldi, "--key", vox_key)["format"] == KALDI_SCORES
    # --trials remains the name of the same option
    assert evaluate_json(kaldi, "--trials", kaldi_key)["eer"] == pytest.approx(reference["eer"])
    assert set(reference["min_dcf"]) == {"0.01", "0.001"}  # both priors by default


def test_key_layouts_and_labels(tmp_path):
    key = write(tmp_path / "k", ["1 a/x.wav b/y.wav", "0 a/x.wav c/z.wav", "true a/x.wav d.wav"])
    trials, _ = read_key(key)
    assert [(t.speaker, t.test, t.label, t.line) for t in trials] == [
        ("a/x.wav", "b/y.wav", True, 1), ("a/x.wav", "c/z.wav", False, 2), ("a/x.wav", "d.wav", True, 3)]
    key = write(tmp_path / "k", ["spk1 utt1 target", "spk1 utt2 nontarget", "spk2 utt1 FALSE"])
    assert [t.label for t in read_key(key)[0]] == [True, False, False]


def test_thresholds_are_the_metrics_thresholds_on_a_hand_case(tmp_path):
    # Targets 3, 1; non-targets 2, 0, -1. Accepting scores >= 1 misses none of the targets and lets one of
    # three non-targets in (0, 1/3); at >= 2 it misses one of two (1/2, 1/3). The EER, 1/3, lies between:
    # the point with the smaller larger-error, threshold 1, operates nearest it. minDCF(0.01) = P_miss +
    # 99 P_fa is least at threshold 3 (1/2 + 0).
    scores = write(tmp_path / "hand.scores", ["a t1 3", "a t2 1", "b t3 2", "b t4 0", "b t5 -1"])
    key = write(tmp_path / "key", ["a t1 target", "a t2 target", "b t3 nontarget", "b t4 nontarget",
                                   "b t5 nontarget"])
    assert eer_point([3, 1], [2, 0, -1]) == (pytest.approx(1 / 3), 1.0)
    assert min_dcf_point([3, 1], [2, 0, -1], 0.01) == (pytest.approx(0.5), 3.0)
    record = evaluate_json(scores, "--key", key, "--p-target", "0.01", "--p-target", "0.5")
    assert record["eer"] == pytest.approx(1 / 3) and record["eer_threshold"] == 1.0
    assert record["min_dcf_threshold"]["0.01"] == 3.0
    # At P = 0.5 the cost is (P_miss + P_fa) / 1: 1/3 at threshold 1 (and at 3: 1/2 + 0 is more).
    assert record["min_dcf"]["0.5"] == pytest.approx(1 / 3) and record["min_dcf_threshold"]["0.5"] == 1.0
    text = run("evaluate", scores, "--key", key, "--p-target", "0.01").stdout
    assert "EER" in text and "at threshold 1.000000" in text
    assert "minDCF(0.01)  0.5000  at threshold 3.000000" in text
    # Every threshold the metrics report is one of the DET curve's: accepting >= it gives its error rates.
    _, _, thresholds = det_curve([3, 1], [2, 0, -1])
    assert {1.0, 3.0} <= set(thresholds.tolist())


def test_a_prior_too_small_for_the_non_targets_warns(tmp_path):
    rows = trial_set(n_targets=50, n_nontargets=1500)
    scores = write(tmp_path / "s.tsv", [f"{s}\t{t}\t{v:.6f}\t{'target' if y else 'nontarget'}" for s, t, v, y in rows])
    result = run("evaluate", scores)
    assert result.exit_code == 0
    warnings = [line for line in result.stderr.splitlines() if line.startswith("spkver: warning:")]
    assert len(warnings) == 1 and "minDCF(0.001)" in warnings[0] and "1500 non-target" in warnings[0]
    assert "10000" in warnings[0]
    assert run("evaluate", scores, "--p-target", "0.01").stderr == ""


def test_scores_and_key_that_differ_are_counted_and_named(tmp_path):
    scores = write(tmp_path / "s", ["a t1 3", "a t2 1", "b t3 2", "b t4 0", "x extra 5"])
    key = write(tmp_path / "k", ["a t1 target", "a t2 target", "b t3 nontarget", "b t4 nontarget",
                                 "c unscored1 target", "c unscored2 nontarget"])
    result = run("evaluate", "--json", scores, "--key", key, "--p-target", "0.5")
    assert result.exit_code == 0
    record = json.loads(result.stdout)
    assert (record["targets"], record["nontargets"]) == (2, 2)
    assert record["scores_not_in_key"] == 1 and record["key_trials_not_scored"] == 2
    assert "1 scored trials are not in the key" in result.stderr and "x extra (scores line 5)" in result.stderr
    assert "2 key trials have no score" in result.stderr and "c unscored1 (key line 5)" in result.stderr
    disjoint = write(tmp_path / "d", ["q r 1", "q s 2"])
    result = run("evaluate", disjoint, "--key", key)
    assert result.exit_code == 2 and len(result.stderr.splitlines()) == 1
    assert "no trial is both scored and in the key" in result.stderr and "q r (scores line 1)" in result.stderr
    contradicting = write(tmp_path / "c", ["a\tt1\t3\tnontarget", "a\tt2\t1\ttarget"])
    result = run("evaluate", contradicting, "--key", key)
    assert result.exit_code == 2 and "line 1: labelled nontarget but the key's line 1 says target" in result.stderr


@pytest.mark.parametrize("name, lines, message", [
    ("key", ["a t1 target", "a t2 maybe"], "line 2: label 'maybe' is not one of target, nontarget, 1, 0"),
    ("key", ["a t1 target", "a t2"], "line 2: no label"),
    ("key", ["1 a.wav b.wav", "2 a.wav c.wav"], "line 2: label '2' is not one of"),
    ("key", ["a t1 target", "a t1 nontarget"], "line 2: repeats the trial of line 1"),
    ("scores", ["a t1 1.5", "a t2 1.5", "a t3"], "line 3: expected 'speaker utterance score [label]' (Kaldi"),
    ("scores", ["a\tt1\t1.5", "a\tt2\tabc"], "line 2: score 'abc' is not a number"),
    ("scores", ["a\tt1\t1.5\ttarget", "a\tt2\t1\tperhaps"], "line 2: label 'perhaps' is not one of"),
    ("scores", ["a\tt1\t1.5\taccept", "a\tt2\t1\ttarget"], "line 2: decision 'target' is not accept or reject"),
    ("scores", ['{"speaker": "a", "path": "t", "score": 1, "decision": "accept"}', '{"speaker": "a"}'],
     "line 2: expected a JSON object with speaker, path, score and decision"),
    ("scores", ["a t1 1", "a t1 2"], "line 2: repeats the trial of line 1"),
])
def test_bad_lines_are_one_line_errors_with_their_line_number(tmp_path, name, lines, message):
    good_scores = write(tmp_path / "good", ["a t1 1", "a t2 2"])
    path = write(tmp_path / name, lines)
    args = [good_scores, "--key", path] if name == "key" else [path, "--key", write(tmp_path / "k", ["a t1 1"])]
    result = run("evaluate", *args)
    assert result.exit_code == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr
    assert result.stderr.startswith(f"spkver: error: {path}: ")


@pytest.fixture(scope="module")
def store(synthetic_corpus, tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("pairs"), synthetic_corpus)


def test_pairs_adapt_each_enrollment_once_and_score_as_enrolled_speakers(store, synthetic_corpus, tmp_path,
                                                                         monkeypatch):
    import spkver.api

    corpus = synthetic_corpus
    pairs = write(tmp_path / "veri_test.txt", [
        "1 enroll/alice/alice_0.wav test/alice/alice_0.wav", "0 enroll/alice/alice_0.wav test/bob/bob_0.wav",
        "1 enroll/bob/bob_1.wav test/bob/bob_1.wav", "0 enroll/bob/bob_1.wav test/alice/alice_0.wav",
        "1 enroll/alice/alice_0.wav test/alice/alice_2.wav"])
    adapted = []
    real_adapt = spkver.api.adapt_model
    monkeypatch.setattr(spkver.api, "adapt_model", lambda ubm, arrays, speaker, **kw: adapted.append(speaker)
                        or real_adapt(ubm, arrays, speaker, **kw))
    out = tmp_path / "pairs.scores"
    for norm in ("none", "s"):
        adapted.clear()
        result = run("score", "--ubm", store / "ubm.npz", "--pairs", pairs, "--audio-root", corpus,
                     "--score-norm", norm, "-o", out)
        assert result.exit_code == 0, result.stderr
        assert sorted(adapted) == ["enroll/alice/alice_0.wav", "enroll/bob/bob_1.wav"]
        pair_scores = read_scores(out).scores
        assert [(s.speaker, s.test, s.label) for s in pair_scores] == [
            (t.speaker, t.test, t.label) for t in read_key(pairs)[0]]
        # By hand: enroll each enrollment file as a speaker, then score the same trials against the store.
        models = tmp_path / f"models-{norm}"
        for name, wav in (("a0", "enroll/alice/alice_0.wav"), ("b1", "enroll/bob/bob_1.wav")):
            assert run("enroll", "--ubm", store / "ubm.npz", "--models", models, "--speaker", name,
                       corpus / wav).exit_code == 0
        speaker = {"enroll/alice/alice_0.wav": "a0", "enroll/bob/bob_1.wav": "b1"}
        trials = write(tmp_path / "trials", [f"{speaker[s.speaker]}\t{corpus / s.test}" for s in pair_scores])
        by_hand = tmp_path / "by_hand.scores"
        assert run("score", "--ubm", store / "ubm.npz", "--models", models, "--trials", trials,
                   "--score-norm", norm, "-o", by_hand).exit_code == 0
        np.testing.assert_allclose([s.score for s in pair_scores], [s.score for s in read_scores(by_hand).scores],
                                   atol=2e-6)
    # evaluate takes the output as it is (labels included)
    assert evaluate_json(out)["targets"] == 3


def test_pairs_of_utterance_ids_through_a_wav_scp(store, synthetic_corpus, tmp_path):
    files = sorted((synthetic_corpus / "test").rglob("*.wav"))[:3]
    scp = write(tmp_path / "wav.scp", [f"u{i} {f}" for i, f in enumerate(files)])
    pairs = write(tmp_path / "pairs", ["u0 u1", "u0 u2"])
    out = tmp_path / "s"
    result = run("score", "--ubm", store / "ubm.npz", "--pairs", pairs, "--wav-scp", scp, "-o", out,
                 "--score-norm", "none")
    assert result.exit_code == 0, result.stderr
    assert [(s.speaker, s.test, s.label) for s in read_scores(out).scores] == [("u0", "u1", None), ("u0", "u2", None)]
    write(pairs, ["u0 u1", "u9 u2"])
    result = run("score", "--ubm", store / "ubm.npz", "--pairs", pairs, "--wav-scp", scp, "-o", out)
    assert result.exit_code == 2 and "line 2: utterance id 'u9' is not in the wav.scp" in result.stderr


def test_score_needs_exactly_one_trial_list(store, tmp_path):
    ubm = store / "ubm.npz"
    for args in ([], ["--trials", "t", "--pairs", "p"]):
        result = run("score", "--ubm", ubm, "--models", store / "models", *args, "-o", tmp_path / "o")
        assert result.exit_code == 2 and "give either --trials" in result.stderr
    result = run("score", "--ubm", ubm, "--trials", "t", "-o", tmp_path / "o")
    assert result.exit_code == 2 and "--trials needs --models" in result.stderr
