"""`spkver fuse`: learning a fusion of several score files, applying it, and refusing what does not fit."""

import json

import numpy as np
import pytest
from helpers import run_cli

from spkver.backend.calibration import load_calibration
from spkver.backend.fusion import load_fusion
from spkver.storage.trials import read_scores

run = run_cli
WORD = {True: "target", False: "nontarget"}


def trials(n_targets, n_nontargets):
    """``(speaker, test, is_target)`` of a trial set."""
    rows = [(f"spk{i % 7}", f"tgt{i:04d}", True) for i in range(n_targets)]
    return rows + [(f"spk{i % 7}", f"imp{i:04d}", False) for i in range(n_nontargets)]


def system_scores(rows, rng, separation, unit=1.0, shift=0.0):
    """One system's scores of ``rows``: N(separation, 1) for targets and N(0, 1) otherwise, in its own unit."""
    return [unit * (rng.normal(separation if target else 0.0, 1.0)) + shift for _, _, target in rows]


def write_spkver(path, rows, scores, normalisation=None, labelled=True):
    header = [f"# spkver: normalisation {normalisation}"] if normalisation else []
    path.write_text("\n".join(header + [f"{s}\t{t}\t{v:.6f}" + (f"\t{WORD[y]}" if labelled else "")
                                        for (s, t, y), v in zip(rows, scores)]) + "\n")
    return path


def write_kaldi(path, rows, scores):
    path.write_text("".join(f"{s} {t} {v:.6f}\n" for (s, t, _), v in zip(rows, scores)))
    return path


def write_key(path, rows):
    path.write_text("".join(f"{s} {t} {WORD[y]}\n" for s, t, y in rows))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Development and evaluation scores of two independent systems: 'gmm' (spkver format, S-norm, labelled)
    and 'other' (Kaldi format, another unit and offset, unlabelled: its labels are in a key)."""
    work = tmp_path_factory.mktemp("fusion")
    rng = np.random.default_rng(11)
    paths = {}
    for split in ("dev", "eval"):
        rows = trials(400, 4000)
        paths[split, "gmm"] = write_spkver(work / f"{split}_gmm.tsv", rows, system_scores(rows, rng, 2.0), "s")
        paths[split, "other"] = write_kaldi(work / f"{split}_other.scores", rows,
                                            system_scores(rows, rng, 1.5, unit=20.0, shift=-100.0))
        paths[split, "key"] = write_key(work / f"{split}_key", rows)
    return paths


def evaluated(*args):
    result = run("-q", "evaluate", "--json", *args)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def one_error_line(result, *fragments):
    """Exit 2 with one 'spkver: error:' line holding every fragment; any other line is a warning."""
    assert result.exit_code == 2, (result.exit_code, result.stderr)
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("spkver: error: ")]
    assert len(errors) == 1 and all(line.startswith("spkver: warning: ") for line in lines if line not in errors), \
        result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def test_learn_then_apply_gives_calibrated_llrs_better_than_either_system(files, tmp_path):
    fusion_path = tmp_path / "fusion.json"
    learnt = run("fuse", files["dev", "gmm"], files["dev", "other"], "--key", files["dev", "key"],
                 "-o", fusion_path)
    assert learnt.exit_code == 0, learnt.stderr
    fusion = load_fusion(fusion_path)
    assert fusion.systems == ("dev_gmm", "dev_other") and fusion.normalisations == ("s", "none")
    assert (fusion.targets, fusion.nontargets, fusion.p_target) == (400, 4000, 0.01)
    for name, weight in zip(fusion.systems, fusion.weights):
        assert f"{name}  weight {weight:+.4f}" in learnt.stderr
    assert "fused: Cllr" in learnt.stderr and "actDCF(0.01)" in learnt.stderr
    fused_path = tmp_path / "fused.tsv"
    applied = run("fuse", files["eval", "gmm"], files["eval", "other"], "--fusion", fusion_path, "-o", fused_path)
    assert applied.exit_code == 0, applied.stderr
    fused = read_scores(fused_path)
    assert fused.calibrated and fused.normalisation == "s + none" and len(fused.scores) == 4400
    gmm, other = read_scores(files["eval", "gmm"]).scores, read_scores(files["eval", "other"]).scores
    assert [(s.speaker, s.test, s.label) for s in fused.scores] == [(s.speaker, s.test, s.label) for s in gmm]
    expected = fusion(np.column_stack([[s.score for s in gmm], [s.score for s in other]]))
    np.testing.assert_allclose([s.score for s in fused.scores], expected, atol=1e-6)  # 6 decimals written
    record = evaluated(fused_path)
    assert record["calibrated"] and {"cllr", "act_dcf"} <= set(record)
    # Two independent systems (d' = 2 and 1.5) fuse into a better one (d' = 2.5).
    alone = [evaluated(files["eval", "gmm"]), evaluated(files["eval", "other"], "--key", files["eval", "key"])]
    assert record["min_cllr"] < min(system["min_cllr"] for system in alone)
    assert record["cllr"] < min(system["min_cllr"] for system in alone)  # and they are calibrated, too


def test_fusing_one_system_is_calibrating_it(files, tmp_path):
    fused = run("fuse", files["dev", "gmm"], "-o", tmp_path / "fusion.json", "--p-target", "0.05")
    calibrated = run("calibrate", files["dev", "gmm"], "-o", tmp_path / "cal.json", "--p-target", "0.05")
    assert fused.exit_code == 0 and calibrated.exit_code == 0, fused.stderr + calibrated.stderr
    fusion, calibration = load_fusion(tmp_path / "fusion.json"), load_calibration(tmp_path / "cal.json")
    assert fusion.weights == (calibration.scale,) and fusion.offset == calibration.offset
    applied = run("-q", "fuse", files["eval", "gmm"], "--fusion", tmp_path / "fusion.json", "-o", "-")
    assert applied.exit_code == 0, applied.stderr
    (tmp_path / "llr.tsv").write_text(applied.stdout)
    llrs, raw = read_scores(tmp_path / "llr.tsv"), read_scores(files["eval", "gmm"])
    assert llrs.calibrated and llrs.normalisation == "s"  # the header `score --calibration` writes
    np.testing.assert_allclose([s.score for s in llrs.scores], calibration([s.score for s in raw.scores]), atol=1e-6)


def test_trials_missing_from_a_file_are_left_out_with_a_count(tmp_path):
    rng = np.random.default_rng(1)
    rows = trials(100, 1000)
    gmm = write_spkver(tmp_path / "gmm.tsv", rows[5:], system_scores(rows[5:], rng, 2.0))
    other = write_spkver(tmp_path / "other.tsv", rows[:-7], system_scores(rows[:-7], rng, 1.0))
    result = run("fuse", gmm, other, "-o", tmp_path / "fusion.json")
    assert result.exit_code == 0, result.stderr
    assert f"{gmm}: 7 of its 1095 trials are not scored in every file" in result.stderr
    assert f"{other}: 5 of its 1093 trials are not scored in every file" in result.stderr
    fusion = load_fusion(tmp_path / "fusion.json")
    assert (fusion.targets, fusion.nontargets) == (95, 993)
    applied = run("fuse", gmm, other, "--fusion", tmp_path / "fusion.json", "-o", tmp_path / "fused.tsv")
    assert applied.exit_code == 0 and len(read_scores(tmp_path / "fused.tsv").scores) == 1088


def test_unusable_inputs_are_one_line_and_exit_2(files, tmp_path):
    rng = np.random.default_rng(2)
    rows = trials(50, 500)
    disjoint = [(s, t + "x", y) for s, t, y in rows]
    unrelated = write_spkver(tmp_path / "unrelated.tsv", disjoint, system_scores(disjoint, rng, 1.0))
    one_error_line(run("fuse", files["dev", "gmm"], unrelated, "-o", tmp_path / "f.json"),
                   "no trial is scored in every file")
    one_error_line(run("fuse", files["dev", "gmm"], files["dev", "other"], "-o", tmp_path / "f.json"),
                   str(files["dev", "other"]), "no target/nontarget label", "give --key")
    flipped = write_spkver(tmp_path / "flipped.tsv", [(s, t, not y) for s, t, y in rows], [0.0] * len(rows))
    agreeing = write_spkver(tmp_path / "agreeing.tsv", rows, system_scores(rows, rng, 1.0))
    one_error_line(run("fuse", agreeing, flipped, "-o", tmp_path / "f.json"), str(flipped),
                   "labelled nontarget but", "says target")
    # Each file has both classes, but the trials they share are all targets.
    shared_targets = rows[:50] + disjoint[50:]
    targets_shared = write_spkver(tmp_path / "targets.tsv", shared_targets, system_scores(shared_targets, rng, 1.0))
    one_error_line(run("fuse", agreeing, targets_shared, "-o", tmp_path / "f.json"), "all of one class")
    assert not (tmp_path / "f.json").exists()


def test_applying_refuses_another_number_order_or_kind_of_scores(files, tmp_path):
    fusion_path = tmp_path / "fusion.json"
    assert run("fuse", files["dev", "gmm"], files["dev", "other"], "--key", files["dev", "key"],
               "-o", fusion_path).exit_code == 0
    out = tmp_path / "fused.tsv"
    one_error_line(run("fuse", files["eval", "gmm"], "--fusion", fusion_path, "-o", out),
                   str(fusion_path), "combines 2 systems (dev_gmm, dev_other) but 1 score file was given")
    one_error_line(run("fuse", files["eval", "gmm"], files["eval", "other"], files["eval", "gmm"],
                       "--fusion", fusion_path, "-o", out), "but 3 score files were given")
    one_error_line(run("fuse", files["eval", "other"], files["eval", "gmm"], "--fusion", fusion_path, "-o", out),
                   str(files["eval", "other"]), "system 1 of", "(dev_gmm)", "normalisation 's', these have 'none'")
    calibrated = tmp_path / "calibrated.tsv"
    calibrated.write_text("# spkver: calibrated log-likelihood ratios\n" + files["eval", "other"].read_text())
    one_error_line(run("fuse", files["eval", "gmm"], calibrated, "--fusion", fusion_path, "-o", out),
                   "learnt on raw scores, these are calibrated LLRs")
    assert not out.exists()


@pytest.mark.parametrize("damage", ["truncated", "nan", "missing", "kind"])
def test_a_damaged_fusion_file_is_one_line_and_exit_2(files, tmp_path, damage):
    fusion_path = tmp_path / "fusion.json"
    assert run("fuse", files["dev", "gmm"], "-o", fusion_path).exit_code == 0
    text = fusion_path.read_text()
    data = json.loads(text)
    damaged = {"truncated": text[: len(text) // 2], "nan": json.dumps(dict(data, offset=float("nan"))),
               "missing": json.dumps({k: v for k, v in data.items() if k != "weights"}),
               "kind": json.dumps(dict(data, kind="spkver-calibration"))}[damage]
    fusion_path.write_text(damaged)
    out = tmp_path / "fused.tsv"
    one_error_line(run("fuse", files["eval", "gmm"], "--fusion", fusion_path, "-o", out), str(fusion_path))
    assert not out.exists()


def test_outputs_replace_only_their_own_kind(files, tmp_path):
    scores_copy = tmp_path / "scores.tsv"
    scores_copy.write_text(files["dev", "gmm"].read_text())
    one_error_line(run("fuse", files["dev", "gmm"], "-o", scores_copy), "is not a fusion file")
    fusion_path = tmp_path / "fusion.json"
    assert run("fuse", files["dev", "gmm"], "-o", fusion_path).exit_code == 0
    one_error_line(run("fuse", files["eval", "gmm"], "--fusion", fusion_path, "-o", fusion_path),
                   "is not a score file")
    assert load_fusion(fusion_path).weights  # still the fusion


def test_learning_options_have_no_effect_when_applying(files, tmp_path):
    fusion_path = tmp_path / "fusion.json"
    assert run("fuse", files["dev", "gmm"], "-o", fusion_path).exit_code == 0
    result = run("fuse", files["eval", "gmm"], "--fusion", fusion_path, "--p-target", "0.1", "--key",
                 files["eval", "key"], "-o", tmp_path / "fused.tsv")
    assert result.exit_code == 0, result.stderr
    assert "--key has no effect with --fusion" in result.stderr
    assert "--p-target has no effect with --fusion" in result.stderr


def test_a_small_separable_development_set_warns_and_stays_finite(tmp_path):
    rows = trials(20, 60)
    gmm = write_spkver(tmp_path / "gmm.tsv", rows, [5 + 0.1 * i if y else -5 - 0.1 * i
                                                     for i, (_, _, y) in enumerate(rows)])
    other = write_spkver(tmp_path / "other.tsv", rows, [float(i % 3) for i in range(len(rows))])
    result = run("fuse", gmm, other, "-o", tmp_path / "fusion.json")
    assert result.exit_code == 0, result.stderr
    assert "small development set" in result.stderr and "do not overlap" in result.stderr
    fusion = load_fusion(tmp_path / "fusion.json")
    assert np.abs(fusion([[25.0, 0.0], [-25.0, 2.0]])).max() <= 20


def test_a_constant_system_is_named_and_gets_weight_zero(tmp_path):
    rng = np.random.default_rng(6)
    rows = trials(100, 1000)
    gmm = write_spkver(tmp_path / "gmm.tsv", rows, system_scores(rows, rng, 2.0))
    flat = write_spkver(tmp_path / "flat.tsv", rows, [0.25] * len(rows))
    result = run("fuse", gmm, flat, "-o", tmp_path / "fusion.json")
    assert result.exit_code == 0, result.stderr
    assert f"{flat}: every development trial has the same score" in result.stderr
    assert load_fusion(tmp_path / "fusion.json").weights[1] == 0


def test_fused_scores_that_overflow_are_refused_not_written(files, tmp_path):
    fusion_path = tmp_path / "fusion.json"
    assert run("fuse", files["dev", "gmm"], "-o", fusion_path).exit_code == 0
    assert load_fusion(fusion_path).weights[0] > 1  # so that the largest float overflows
    rows = trials(2, 2)
    huge = write_spkver(tmp_path / "huge.tsv", rows, [1.7e308, 0.0, 0.0, 0.0], "s")
    out = tmp_path / "fused.tsv"
    one_error_line(run("fuse", huge, "--fusion", fusion_path, "-o", out), "overflow")
    assert not out.exists()


def test_mean_of_s_normed_systems_needs_no_development_set(tmp_path, monkeypatch):
    rng = np.random.default_rng(5)
    rows = trials(200, 2000)
    a, b = system_scores(rows, rng, 2.0), system_scores(rows, rng, 2.0)
    first = write_spkver(tmp_path / "cmn.tsv", rows, a, "s")
    second = write_spkver(tmp_path / "warp.tsv", rows[::-1], b[::-1], "s")  # another order: matched by trial
    result = run("fuse", "--mean", first, second, "-o", tmp_path / "fused.tsv")
    assert result.exit_code == 0 and "warning" not in result.stderr, result.stderr
    fused = read_scores(tmp_path / "fused.tsv")
    assert not fused.calibrated and fused.normalisation == "mean of 2: s + s"
    expected = {(s, t): (x + y) / 2 for (s, t, _), x, y in zip(rows, a, b)}
    assert len(fused.scores) == len(rows)
    assert all(abs(s.score - expected[s.speaker, s.test]) < 1e-5 for s in fused.scores)
    # "-" is standard output, even beside a file of that name.
    (tmp_path / "-").write_text("not a score file")
    monkeypatch.chdir(tmp_path)
    to_stdout = run("fuse", "--mean", first, second, "-o", "-")
    assert to_stdout.exit_code == 0 and to_stdout.stdout.startswith("# spkver: normalisation mean of 2"), \
        to_stdout.stderr
    # Two independent systems of equal strength: their mean separates the classes better than either.
    assert evaluated(tmp_path / "fused.tsv")["eer"] < min(evaluated(first)["eer"], evaluated(second)["eer"])


def test_mean_warns_on_unnormalised_scores_and_refuses_what_it_cannot_average(files, tmp_path):
    rows = trials(20, 200)
    raw = write_spkver(tmp_path / "raw.tsv", rows, system_scores(rows, np.random.default_rng(1), 2.0))
    result = run("fuse", "--mean", raw, files["dev", "gmm"], "-o", tmp_path / "m.tsv")
    assert result.exit_code == 0 and "scales may differ" in result.stderr, result.stderr
    one_error_line(run("fuse", "--mean", files["dev", "gmm"], "-o", tmp_path / "one.tsv"), "two or more systems")
    # One system given twice, an input as the output, a mean of means: refused, the input intact.
    copy = tmp_path / "again.tsv"
    copy.symlink_to(raw)
    one_error_line(run("fuse", "--mean", raw, copy, "-o", tmp_path / "twice.tsv"), "again.tsv", "given twice")
    before = raw.read_bytes()
    one_error_line(run("fuse", "--mean", raw, files["dev", "gmm"], "-o", raw), "both an input and the output")
    assert raw.read_bytes() == before
    assert run("fuse", "--mean", files["dev", "gmm"], files["eval", "gmm"], "-o", tmp_path / "m1.tsv").exit_code == 0
    one_error_line(run("fuse", "--mean", tmp_path / "m1.tsv", files["dev", "gmm"], "-o", tmp_path / "m2.tsv"),
                   "already a mean")
    # A mean of scores is not a score `score` can make: calibrate refuses it and names the route that works.
    one_error_line(run("calibrate", tmp_path / "m.tsv", "-o", tmp_path / "cal.json"), "one-system fusion")
    assert not (tmp_path / "cal.json").exists()
    one_error_line(run("fuse", "--mean", "--fusion", tmp_path / "f.json", raw, raw, "-o", tmp_path / "x.tsv"),
                   "--mean or --fusion")
    assert not (tmp_path / "one.tsv").exists() and not (tmp_path / "x.tsv").exists()


def test_mean_of_huge_scores_stays_finite_and_of_llrs_is_no_llr(tmp_path):
    rows = trials(3, 3)
    huge = [write_spkver(tmp_path / f"huge{k}.tsv", rows, [1.7e308] * len(rows), "s") for k in range(2)]
    result = run("fuse", "--mean", *huge, "-o", tmp_path / "huge.tsv")
    assert result.exit_code == 0 and "warning" not in result.stderr, result.stderr
    assert all(s.score == 1.7e308 for s in read_scores(tmp_path / "huge.tsv").scores)
    llrs = []
    for k in range(2):
        path = write_spkver(tmp_path / f"llr{k}.tsv", rows, system_scores(rows, np.random.default_rng(k), 2.0), "s")
        path.write_text("# spkver: calibrated log-likelihood ratios\n" + path.read_text())
        assert read_scores(path).calibrated
        llrs.append(path)
    assert run("fuse", "--mean", *llrs, "-o", tmp_path / "llr.tsv").exit_code == 0
    assert not read_scores(tmp_path / "llr.tsv").calibrated  # a mean of LLRs is not an LLR
