"""Evaluation commands: ``score`` (trial lists), ``evaluate`` (metrics of score files), ``calibrate`` and ``fuse``."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import click
import numpy as np

from spkver.audio.sources import find_audio, is_audio_file, read_data_dir, read_list
from spkver.backend.calibration import (
    calibration_json,
    calibration_warnings,
    fit_calibration,
    is_calibration_file,
    load_calibration,
)
from spkver.backend.fusion import fit_fusion, fusion_json, is_fusion_file, load_fusion
from spkver.backend.metrics import actual_dcf, cllr, eer_point, min_cllr, min_dcf_point, nontargets_needed
from spkver.backend.scorenorm import (
    SCORE_NORMS,
    Cohort,
    cohort_cache_dir,
    describe_normalisation,
    parse_normalisation,
)
from spkver.cli.options import (
    Finite,
    deprecated_alias,
    is_stdout,
    ivector_backend,
    ivector_option,
    load_store,
    map_options,
    refuse_to_replace,
    top_c_option,
    warn_ignored,
    workers_option,
    write_output,
)
from spkver.errors import SpkverError, printable
from spkver.storage.models import load_model
from spkver.storage.speakers import SpeakerStore
from spkver.storage.trials import (
    LABEL_CHOICES,
    SPKVER_SCORES,
    align_scores,
    is_score_file,
    label_trials,
    labelled_scores,
    read_key,
    read_scores,
    read_trials,
    score_file_bytes,
)


def build_cohort(ubm, models_dir, cohort_paths, top_c, workers, report):
    """A Cohort from --cohort values (model stores and audio), else the UBM's stored cohort.

    Raw cohort scores are cached in ``MODELS/.cohort-cache``; without a models folder (pair trials) they are not.
    """
    cache_dir = cohort_cache_dir(models_dir) if models_dir is not None else None
    if not cohort_paths:
        return Cohort(ubm, top_c=top_c, cache_dir=cache_dir, frames=ubm.cohort,
                      run=report.run_options(workers, label="cohort"), source=ubm.source)
    audio, model_store = [], None
    for raw in cohort_paths:
        path = Path(raw)
        if path.is_dir() and any(path.glob("*.npz")):
            if model_store is not None:
                raise SpkverError("give at most one cohort model store", path)
            model_store = SpeakerStore(path)
        elif path.is_file() and not is_audio_file(path):
            audio.extend(read_list(path))
        else:
            audio.extend(find_audio([path]))
    return Cohort(ubm, audio, model_store, top_c=top_c, cache_dir=cache_dir,
                  run=report.run_options(workers, label="cohort"), source=" ".join(map(str, cohort_paths)))


@click.command("score")
@click.option("--ubm", "ubm_path", required=True, type=click.Path(path_type=Path), help="The UBM.")
@click.option("--models", "models_dir", type=click.Path(path_type=Path),
              help="Speaker store the --trials speakers are enrolled in (required with --trials).")
@click.option("--trials", "trials_path", type=click.Path(path_type=Path),
              help="Trial list: lines 'speaker test [label]' (Kaldi trials) against enrolled speakers.")
@click.option("--pairs", "pairs_path", type=click.Path(path_type=Path),
              help="Pair trials: lines '[label] enrollment test' (VoxCeleb lists); each distinct enrollment "
                   "recording is MAP-adapted once, as enroll would, and needs no --models.")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="Scores file to write ('-': standard output).")
@top_c_option
@click.option("--score-norm", type=click.Choice(SCORE_NORMS), default=None,
              help="Score normalisation against --cohort, or the UBM's stored cohort: Z-, T-, S-norm or none "
                   "[default: s when the UBM stores a cohort or --cohort is given, else none].")
@click.option("--norm", "old_score_norm", type=click.Choice(SCORE_NORMS), default=None, hidden=True)
@click.option("--cohort", multiple=True, type=click.Path(path_type=Path),
              help="Impostor cohort: audio folder or list (Z, S, T) and/or a model store (T) [default: the "
                   "speech segments the UBM stores from its training audio]. Repeatable.")
@click.option("--top-n", type=click.IntRange(min=1), default=None,
              help="Adaptive normalisation: statistics of the N highest cohort scores.")
@click.option("--calibration", "calibration_path", type=click.Path(path_type=Path),
              help="CAL.json: write calibrated log-likelihood ratios.")
@click.option("--wav-scp", type=click.Path(path_type=Path),
              help="Kaldi wav.scp: tests (and pair enrollments) are utterance ids.")
@click.option("--data-dir", type=click.Path(path_type=Path),
              help="Kaldi data folder (wav.scp, optional segments): tests are its utterance ids.")
@click.option("--allow-pipes", is_flag=True,
              help="Run the commands of piped --wav-scp lines ('utt cmd |'; only for lists you trust).")
@click.option("--audio-root", type=click.Path(path_type=Path, file_okay=False),
              help="Folder the list's relative paths start from, e.g. VoxCeleb's wav/ [default: the list's folder].")
@map_options("--pairs: ")
@ivector_option("score with it (PLDA LLRs or cosine) instead of the MAP models; --trials speakers enrolled with "
                "it. Scores are not normalised.")
@workers_option("Processes for feature extraction [default: all cores].")
@click.option("--skip-bad", is_flag=True, help="Leave out trials with unknown speakers or unreadable files.")
@click.pass_obj
def score_command(report, ubm_path, models_dir, trials_path, pairs_path, output, top_c, score_norm, old_score_norm,
                  cohort, top_n, calibration_path, wav_scp, data_dir, allow_pipes, audio_root, relevance, adapt,
                  ivector_path, workers, skip_bad):
    """Score a trial list (--trials) or pair trials (--pairs): one 'speaker<TAB>test<TAB>score[<TAB>label]' line
    per trial, ready for evaluate.

    \b
    Example:
      spkver score --ubm ubm.npz --models models/ --trials trials -o scores.tsv
      spkver score --ubm ubm.npz --pairs veri_test.txt --audio-root wav/ -o scores.tsv
      spkver score --ubm ubm.npz --ivector ivector.npz --models models/ --trials trials -o plda.tsv
    """
    from spkver.api import score_pairs, score_trials

    if (trials_path is None) == (pairs_path is None):
        raise SpkverError("give either --trials (speakers enrolled in --models) or --pairs (enrollment recordings)")
    if trials_path is not None and models_dir is None:
        raise SpkverError("--trials needs --models, the store its speakers are enrolled in")
    if pairs_path is not None and models_dir is not None:
        report.warn("--models is not used with --pairs (each enrollment recording is adapted in memory)")
    if trials_path is not None:
        warn_ignored(report, ["relevance", "adapt"], "with --trials (it applies to --pairs; enrolled models are "
                     "used as they are)")
    norm = deprecated_alias(report, "--norm", "--score-norm", old_score_norm, score_norm, None)
    refuse_to_replace(output, is_score_file, "score file")
    ubm, store = load_store(ubm_path, models_dir) if models_dir is not None else (load_model(ubm_path, "ubm"), None)
    calibration = load_calibration(calibration_path) if calibration_path else None
    backend = ivector_backend(ivector_path, ubm)
    if norm is None and backend is not None:
        norm = "none"  # S-norm is for MAP scores; PLDA scores are log-likelihood ratios already
    if norm is None and calibration is not None:
        # A calibration holds only for scores made as its own were: make them so.
        norm, calibrated_top_n = parse_normalisation(calibration.normalisation)
        top_n = top_n or calibrated_top_n
    if norm is None:
        norm = "s" if cohort or ubm.cohort else "none"
        if norm == "none":
            report.warn(f"{ubm_path} stores no cohort (trained before spkver 0.3): scores are not normalised; "
                        "give --cohort for S-norm, or retrain the UBM")
    elif norm != "none" and not cohort and not ubm.cohort:
        raise SpkverError(f"--score-norm {norm} needs --cohort: this UBM stores no cohort", ubm_path)
    if wav_scp and data_dir:
        raise SpkverError("give --wav-scp or --data-dir, not both")
    if not wav_scp:
        warn_ignored(report, ["allow_pipes"], "without --wav-scp (a --data-dir's wav.scp runs its commands anyway)")
    if norm == "none":
        warn_ignored(report, ["cohort", "top_n"], "with --score-norm none (scores are not normalised)")
    utterances = None
    if wav_scp or data_dir:
        listed = read_list(wav_scp, allow_pipes=allow_pipes) if wav_scp else read_data_dir(data_dir).items
        utterances = {item.key: item for item in listed}
    scp = None if utterances is None else {key: item.path for key, item in utterances.items()}
    list_path = trials_path if trials_path is not None else pairs_path
    trials = read_trials(list_path, scp, pairs=pairs_path is not None, audio_root=audio_root)
    normalisation = describe_normalisation(norm, top_n)
    cohort_obj = build_cohort(ubm, models_dir, cohort, top_c, workers, report) if norm != "none" else None
    options = dict(top_c=top_c, norm=norm, cohort=cohort_obj, top_n=top_n, calibration=calibration,
                   source=str(list_path), backend=backend, run=report.run_options(workers, skip_bad))
    if pairs_path is not None:
        if any(item.command is not None or item.segmented for item in (utterances or {}).values()):
            raise SpkverError("--pairs reads whole files: give a wav.scp of plain paths (no pipes or segments)",
                              wav_scp or data_dir)
        scored = score_pairs(ubm, trials, relevance=relevance, adapt=adapt, **options)
    else:
        scored = score_trials(ubm, store, trials, utterances=utterances, **options)
    where = write_score_file(output, calibration is not None, normalisation, scored, [s.score for s in scored])
    report.log(f"scored {len(scored)} of {len(trials)} trials -> {where}")


def read_labels(key_path):
    """The trials of ``--key`` (None without one)."""
    return read_key(key_path)[0] if key_path is not None else None


def summary(path, key, key_path, p_targets, report):
    """The metrics of one score file, labels from the file or from ``key``; warns about thin priors."""
    score_file = read_scores(path)
    labelled = labelled_scores(score_file.scores, key, str(path), on_note=report.warn)
    tar, non = labelled.targets, labelled.nontargets
    eer, eer_threshold = eer_point(tar, non)
    dcf_points = {str(p): min_dcf_point(tar, non, p) for p in p_targets}
    result = {"scores": str(path), "format": score_file.format, "key": None if key_path is None else str(key_path),
              "targets": len(tar), "nontargets": len(non), "eer": eer, "eer_threshold": eer_threshold,
              "min_dcf": {p: cost for p, (cost, _) in dcf_points.items()},
              "min_dcf_threshold": {p: threshold for p, (_, threshold) in dcf_points.items()},
              "min_cllr": min_cllr(tar, non), "calibrated": score_file.calibrated}
    if key is not None:
        result.update(scores_not_in_key=labelled.not_in_key, key_trials_not_scored=labelled.not_scored)
    if score_file.calibrated:
        result["act_dcf"] = {str(p): actual_dcf(tar, non, p) for p in p_targets}
        result["cllr"] = cllr(tar, non)
    for p in p_targets:
        if len(non) < nontargets_needed(p):
            report.warn(f"{path}: minDCF({p:g}) rests on a handful of false alarms: {len(non)} non-target trials, "
                        f"fewer than 10/P_target = {nontargets_needed(p)}")
    return result, tar, non


@click.command("evaluate")
@click.argument("scores_paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--key", "--trials", "key_path", type=click.Path(path_type=Path),
              help=f"Labels for the scores: Kaldi trials 'speaker test label' or VoxCeleb pairs 'label enrollment "
                   f"test', labels among {LABEL_CHOICES}; trials in only one of key and scores are left out "
                   "with a warning.")
@click.option("--p-target", "p_targets", multiple=True, type=Finite(0, 1, min_open=True, max_open=True),
              default=(0.01, 0.001), show_default=True, help="Target prior for minDCF (repeatable).")
@click.option("--det", "det_path", type=click.Path(path_type=Path), help="Draw DET curves to this PNG.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per scores file.")
@click.pass_obj
def evaluate_command(report, scores_paths, key_path, p_targets, det_path, as_json):
    """EER, minDCF and their thresholds, Cllr/minCllr (and actual DCF for calibrated scores) of SCORES files.

    SCORES may be spkver's score files, Kaldi score files ('speaker utterance score [label]'), or the output
    of `spkver verify` (tab-separated or --json), detected per file; thresholds accept scores at least
    that high, as verify --threshold does.

    \b
    Example:
      spkver evaluate scores.tsv
      spkver evaluate kaldi_scores --key trials --det det.png
    """
    key = read_labels(key_path)
    curves = []
    for path in scores_paths:
        result, tar, non = summary(path, key, key_path, p_targets, report)
        curves.append((Path(path).stem, tar, non))
        if as_json:
            click.echo(json.dumps(result, allow_nan=False))
            continue
        source = "" if result["format"] == SPKVER_SCORES else f"{result['format']}, "
        click.echo(f"{printable(path)} ({source}{'calibrated LLRs, ' if result['calibrated'] else ''}"
                   f"labels from {printable(key_path) if key_path else 'the file'}): "
                   f"{result['targets']} target, {result['nontargets']} non-target trials")
        click.echo(f"  EER           {100 * result['eer']:6.2f}%  at threshold {result['eer_threshold']:.6f}")
        for p in p_targets:
            line = f"  minDCF({p:g})  {result['min_dcf'][str(p)]:.4f}  at threshold " \
                   f"{result['min_dcf_threshold'][str(p)]:.6f}"
            if result["calibrated"]:
                line += f"   actDCF({p:g})  {result['act_dcf'][str(p)]:.4f}"
            click.echo(line)
        click.echo(f"  minCllr       {result['min_cllr']:.4f}" +
                   (f"   Cllr  {result['cllr']:.4f}" if result["calibrated"] else ""))
    if det_path:
        from spkver.backend.plots import det_plot

        det_plot(curves, det_path)


@click.command("calibrate")
@click.argument("scores_path", type=click.Path(path_type=Path))
@click.option("--key", "--trials", "key_path", type=click.Path(path_type=Path),
              help="Labels, if SCORES has none (as for evaluate --key).")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="Calibration file to write ('-': standard output).")
@click.option("--p-target", type=Finite(0, 1, min_open=True, max_open=True), default=0.01,
              show_default=True, help="Prior the calibration is optimised for.")
@click.pass_obj
def calibrate_command(report, scores_path, key_path, output, p_target):
    """Fit a score → log-likelihood-ratio calibration on a development set's scores.

    \b
    Example:
      spkver calibrate dev_scores.tsv -o cal.json
    """
    refuse_to_replace(output, is_calibration_file, "calibration file")
    scores, calibrated, normalisation = read_scores(scores_path)
    if calibrated:
        raise SpkverError("scores are already calibrated; calibrate raw scores", scores_path)
    try:  # a calibration is applied by `score`, which must be able to make its scores the same way
        parse_normalisation(normalisation)
    except ValueError:
        raise SpkverError(f"scores normalised as '{normalisation}', which `score` cannot make, so a calibration "
                          "of them could not be applied: calibrate them as a one-system fusion (spkver fuse FILE "
                          "--key KEY -o cal.json, applied by spkver fuse --fusion cal.json)", scores_path) from None
    tar, non, _, _ = labelled_scores(scores, read_labels(key_path), str(scores_path), on_note=report.warn)
    for warning in calibration_warnings(tar, non, p_target):
        report.warn(f"{scores_path}: {warning}")
    # The calibration remembers the normalisation so it is only applied to scores made the same way.
    calibration = replace(fit_calibration(tar, non, p_target), normalisation=normalisation)
    where = write_output(output, calibration_json(calibration))
    report.log(f"calibration ({normalisation} scores): llr = {calibration.scale:.4f} * score "
               f"{calibration.offset:+.4f}; on these trials "
               f"{llr_quality(calibration(tar), calibration(non), min_cllr(tar, non), p_target)} -> {where}")


def llr_quality(llr_tar, llr_non, min_cllr_value, p_target) -> str:
    """How good a development set's LLRs are: Cllr (and the minimum any calibration reaches), actual DCF."""
    return (f"Cllr {cllr(llr_tar, llr_non):.4f} (min {min_cllr_value:.4f}), "
            f"actDCF({p_target:g}) {actual_dcf(llr_tar, llr_non, p_target):.4f}")


@click.command("fuse")
@click.argument("scores_paths", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="SCORES...")
@click.option("--fusion", "fusion_path", type=click.Path(path_type=Path),
              help="FUSION.json from an earlier `spkver fuse`: apply it to SCORES (one file per system, in the "
                   "fusion's order) and write their fused LLRs, rather than learn one.")
@click.option("--key", "--trials", "key", type=click.Path(path_type=Path),
              help="Labels of the development trials, if the SCORES files have none (as for evaluate --key).")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="The fusion file to write, or with --fusion the fused score file ('-': standard output).")
@click.option("--p-target", type=Finite(0, 1, min_open=True, max_open=True), default=0.01,
              show_default=True, help="Prior the fusion is optimised for.")
@click.option("--mean", is_flag=True,
              help="Write the mean of the SCORES instead, learning nothing: for systems whose scores share a scale "
                   "(S-normed, as `score` writes by default); no development set needed.")
@click.pass_obj
def fuse_command(report, scores_paths, fusion_path, key, output, p_target, mean):
    """Fuse several systems' scores of the same trials into one calibrated log-likelihood ratio, or their mean.

    Learns llr = w1*score1 + w2*score2 + ... + offset on development SCORES (one file per system, in any format
    evaluate reads) by calibrate's prior-weighted logistic regression; with --fusion, applies it to other SCORES
    given in the same order, and writes a calibrated score file. Trials are matched by speaker and test; those
    not in every file are left out with a warning.

    With --mean, writes the mean of each trial's scores (a score file, not calibrated LLRs).

    \b
    Example:
      spkver fuse dev_gmm.tsv dev_other.tsv --key dev_trials -o fusion.json
      spkver fuse eval_gmm.tsv eval_other.tsv --fusion fusion.json -o fused.tsv
      spkver fuse --mean cmn.tsv warp.tsv -o fused.tsv
    """
    if mean:
        if fusion_path is not None:
            raise SpkverError("--mean learns nothing and applies no fusion: give --mean or --fusion, not both")
        warn_ignored(report, ["key", "p_target"], "with --mean (nothing is learnt)")
        mean_scores(report, scores_paths, output)
        return
    if fusion_path is None:
        learn_fusion(report, scores_paths, key, output, p_target)
        return
    warn_ignored(report, ["key", "p_target"], "with --fusion (the fusion was learnt with its own)")
    apply_fusion(report, scores_paths, fusion_path, output)


def learn_fusion(report, scores_paths, key_path, output, p_target):
    """``spkver fuse`` without ``--fusion``: learn a fusion on development scores and write it."""
    refuse_to_replace(output, is_fusion_file, "fusion file")
    files = read_system_scores(scores_paths, output)
    key = read_labels(key_path)
    labelled = [label_trials(score_file.scores, key, str(path), on_note=report.warn)
                for path, score_file in zip(scores_paths, files)]
    aligned = align_scores([trials.scores for trials in labelled], [str(path) for path in scores_paths],
                           [trials.labels for trials in labelled], on_note=report.warn)
    matrix = np.array(aligned.scores, dtype=np.float64)
    is_target = np.array([trial.label for trial in aligned.trials], dtype=bool)
    if is_target.all() or not is_target.any():
        raise SpkverError("the trials scored in every file are all of one class: need target and non-target trials "
                          "to learn a fusion")
    for path, column in zip(scores_paths, matrix.T):
        if column.min() == column.max():
            report.warn(f"{path}: every development trial has the same score: this system carries no evidence and "
                        "gets weight 0")
    tar, non = matrix[is_target], matrix[~is_target]
    fusion = fit_fusion(tar, non, p_target, systems=[Path(path).stem for path in scores_paths],
                        normalisations=[f.normalisation for f in files], calibrated=[f.calibrated for f in files])
    with np.errstate(over="ignore", invalid="ignore"):  # checked below, in words
        llr_tar, llr_non = fusion(tar), fusion(non)
    if not (np.isfinite(llr_tar).all() and np.isfinite(llr_non).all()):
        raise SpkverError("the fit gives no finite fusion of these scores")
    for warning in calibration_warnings(llr_tar, llr_non, p_target):
        report.warn(f"fused development scores: {warning}")
    where = write_output(output, fusion_json(fusion))
    systems = f"{len(files)} system{'s' if len(files) > 1 else ''}"
    report.log(f"fusion of {systems} on {len(tar)} target, {len(non)} non-target trials (P_target {p_target:g}) "
               f"-> {where}")
    for k in range(len(files)):
        alone = min_cllr(tar[:, k], non[:, k])
        kind = "calibrated LLRs, " if fusion.calibrated[k] else ""
        report.log(f"  {fusion.systems[k]}  weight {fusion.weights[k]:+.4f}  minCllr alone {alone:.4f}  "
                   f"({kind}normalisation {fusion.normalisations[k]})")
    report.log(f"  offset {fusion.offset:+.4f}")
    report.log(f"  fused: {llr_quality(llr_tar, llr_non, min_cllr(llr_tar, llr_non), p_target)}")


def read_system_scores(scores_paths, output) -> list:
    """The score files of several systems, one file each, none of them ``output``.

    A file given twice would count one system twice, and an output that is an
    input would be overwritten by what was read from it; a header whose
    normalisation holds control characters is refused (it would be copied into
    the fused file's header).
    """
    files = [read_scores(path) for path in scores_paths]
    for k, (path, score_file) in enumerate(zip(scores_paths, files)):
        if printable(score_file.normalisation) != score_file.normalisation:
            raise SpkverError("the header's normalisation holds control characters", path)
        if any(Path(path).samefile(earlier) for earlier in scores_paths[:k]):
            raise SpkverError("is given twice: give each system's scores once", path)
        if not is_stdout(output) and Path(output).exists() and Path(path).samefile(output):
            raise SpkverError("is both an input and the output (-o): write the output to another file", path)
    return files


def write_score_file(output, calibrated: bool, normalisation: str, trials, values) -> str:
    """A score file of ``trials`` (each with speaker, test and label) and their ``values``; returns where it
    went (``-``: stdout)."""
    rows = ((trial.speaker, trial.test, value, trial.label) for trial, value in zip(trials, values))
    return write_output(output, score_file_bytes(calibrated, normalisation, rows))


# How `fuse --mean` names its scores' normalisation: "mean of 2: s + s".
MEAN_MARK = "mean of "


def mean_scores(report, scores_paths, output):
    """``spkver fuse --mean``: the mean of several systems' scores of the same trials, into a score file."""
    refuse_to_replace(output, is_score_file, "score file")
    if len(scores_paths) < 2:
        raise SpkverError("--mean needs the score files of two or more systems", scores_paths[0])
    files = read_system_scores(scores_paths, output)
    for path, score_file in zip(scores_paths, files):
        if score_file.calibrated != files[0].calibrated:
            raise SpkverError(f"holds {'calibrated LLRs' if score_file.calibrated else 'raw scores'} where "
                              f"{scores_paths[0]} holds {'calibrated LLRs' if files[0].calibrated else 'raw scores'}: "
                              "a mean needs scores of one kind", path)
        if score_file.normalisation.startswith(MEAN_MARK):  # a mean of means would weigh its systems unequally
            raise SpkverError("is already a mean of several systems: give each system's own scores", path)
    if len({f.normalisation for f in files}) > 1 or files[0].normalisation == "none":
        report.warn("the scores were not all S-normed alike, so their scales may differ and the mean may favour one "
                    "system: score each with the same --score-norm (S-norm by default), or learn weights with --key")
    aligned = align_scores([f.scores for f in files], [str(path) for path in scores_paths], on_note=report.warn)
    # Each score divided first: the mean of finite scores stays finite, however large they are.
    means = (np.array(aligned.scores, dtype=np.float64) / len(files)).sum(axis=1)
    # The header names the mean, so neither `score` nor a fusion takes these for one system's scores; a mean of
    # LLRs is no LLR, so it is never marked calibrated.
    normalisation = f"{MEAN_MARK}{len(files)}: " + " + ".join(f.normalisation for f in files)
    where = write_score_file(output, False, normalisation, aligned.trials, means)
    report.log(f"mean of {len(files)} systems' scores over {len(means)} trial{'s' if len(means) > 1 else ''} "
               f"-> {where}")


def apply_fusion(report, scores_paths, fusion_path, output):
    """``spkver fuse --fusion``: fuse score files, one per system of the fusion, into a calibrated score file."""
    refuse_to_replace(output, is_score_file, "score file")
    fusion = load_fusion(fusion_path)
    fusion.require_systems(len(scores_paths))
    files = read_system_scores(scores_paths, output)
    for k, (path, score_file) in enumerate(zip(scores_paths, files)):
        fusion.require(k, score_file.normalisation, score_file.calibrated, path)
    aligned = align_scores([f.scores for f in files], [str(path) for path in scores_paths], on_note=report.warn)
    with np.errstate(over="ignore", invalid="ignore"):  # checked below, in words
        llrs = fusion(np.array(aligned.scores, dtype=np.float64))
    if not np.isfinite(llrs).all():
        trial = aligned.trials[int(np.flatnonzero(~np.isfinite(llrs))[0])]
        raise SpkverError(f"line {trial.line}: the fused score of {printable(trial.speaker)} {printable(trial.test)} "
                          "overflows: its scores are far beyond those the fusion was learnt on", scores_paths[0])
    where = write_score_file(output, True, fusion.normalisation, aligned.trials, llrs)
    systems = f"{len(files)} system{'s' if len(files) > 1 else ''}"
    report.log(f"fused {len(llrs)} trials of {systems} ({fusion.describe_systems()}) -> {where}")


