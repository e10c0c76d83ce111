"""Evaluation commands: ``score`` (trial lists), ``evaluate`` (metrics of score files) and ``calibrate``."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import click

from spkver.audio.sources import find_audio, is_audio_file, read_list
from spkver.backend.calibration import (
    calibration_warnings,
    fit_calibration,
    is_calibration_file,
    load_calibration,
    save_calibration,
)
from spkver.backend.metrics import actual_dcf, cllr, eer, min_cllr, min_dcf
from spkver.backend.scorenorm import SCORE_NORMS, Cohort, describe_normalisation, parse_normalisation
from spkver.cli.options import Finite, deprecated_alias, load_store, store_options, top_c_option, workers_option
from spkver.errors import SpkverError, printable
from spkver.fileio import refuse_other_kind, write_atomic
from spkver.run import RunOptions
from spkver.storage.speakers import SpeakerStore
from spkver.storage.trials import (
    format_score,
    is_score_file,
    labelled_scores,
    read_scores,
    read_trials,
    score_file_header,
)


def build_cohort(ubm, models_dir, cohort_paths, top_c, workers, report):
    """A Cohort from --cohort values (model stores and audio), else the UBM's stored cohort."""
    cache_dir = Path(models_dir) / ".cohort-cache"
    if not cohort_paths:
        return Cohort(ubm, top_c=top_c, cache_dir=cache_dir, frames=ubm.cohort, run=RunOptions(workers))
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
                  run=RunOptions(workers, progress=report.progress("cohort")))


@click.command("score")
@store_options
@click.option("--trials", "trials_path", required=True, type=click.Path(path_type=Path),
              help="Lines 'speaker test [target|nontarget]'.")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Scores file to write.")
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
@click.option("--wav-scp", type=click.Path(path_type=Path), help="Kaldi wav.scp: tests are utterance ids.")
@workers_option("Processes for feature extraction [default: all cores].")
@click.option("--skip-bad", is_flag=True, help="Leave out trials with unknown speakers or unreadable files.")
@click.pass_obj
def score_command(report, ubm_path, models_dir, trials_path, output, top_c, score_norm, old_score_norm, cohort, top_n,
          calibration_path, wav_scp, workers, skip_bad):
    """Score a trial list: one 'speaker<TAB>test<TAB>score[<TAB>label]' line per trial."""
    from spkver.api import score_trials

    norm = deprecated_alias(report, "--norm", "--score-norm", old_score_norm, score_norm, None)
    refuse_other_kind(output, is_score_file, "score file")
    ubm, store = load_store(ubm_path, models_dir)
    calibration = load_calibration(calibration_path) if calibration_path else None
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
    scp = {item.key: item.path for item in read_list(wav_scp)} if wav_scp else None
    trials = read_trials(trials_path, scp)
    normalisation = describe_normalisation(norm, top_n)
    cohort_obj = build_cohort(ubm, models_dir, cohort, top_c, workers, report) if norm != "none" else None
    scored = score_trials(ubm, store, trials, top_c=top_c, norm=norm, cohort=cohort_obj, top_n=top_n,
                          calibration=calibration, source=str(trials_path), run=report.run_options(workers, skip_bad))
    lines = score_file_header(calibration is not None, normalisation)
    lines += [format_score(s.speaker, s.test, s.score, s.label) for s in scored]
    write_atomic(output, ("\n".join(lines) + "\n").encode())
    report.log(f"scored {len(scored)} of {len(trials)} trials -> {output}")


def summary(path, trials_path, p_targets):
    scores, calibrated, _ = read_scores(path)
    trials = read_trials(trials_path) if trials_path else None
    tar, non = labelled_scores(scores, trials, str(path))
    result = {"scores": str(path), "targets": len(tar), "nontargets": len(non), "eer": eer(tar, non),
              "min_dcf": {str(p): min_dcf(tar, non, p) for p in p_targets}, "min_cllr": min_cllr(tar, non),
              "calibrated": calibrated}
    if calibrated:
        result["act_dcf"] = {str(p): actual_dcf(tar, non, p) for p in p_targets}
        result["cllr"] = cllr(tar, non)
    return result, tar, non


@click.command("evaluate")
@click.argument("scores_paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--trials", "trials_path", type=click.Path(path_type=Path),
              help="Labels for scores files that have none.")
@click.option("--p-target", "p_targets", multiple=True, type=Finite(0, 1, min_open=True, max_open=True),
              default=(0.01,), show_default=True, help="Target prior for DCF (repeatable).")
@click.option("--det", "det_path", type=click.Path(path_type=Path), help="Draw DET curves to this PNG.")
@click.option("--json", "as_json", is_flag=True)
def evaluate_command(scores_paths, trials_path, p_targets, det_path, as_json):
    """EER, minDCF, Cllr/minCllr (and actual DCF for calibrated scores) of SCORES files."""
    curves = []
    for path in scores_paths:
        result, tar, non = summary(path, trials_path, p_targets)
        curves.append((Path(path).stem, tar, non))
        if as_json:
            click.echo(json.dumps(result, allow_nan=False))
            continue
        click.echo(f"{printable(path)}: {result['targets']} target, {result['nontargets']} non-target trials"
                   f"{' (calibrated LLRs)' if result['calibrated'] else ''}")
        click.echo(f"  EER       {100 * result['eer']:.2f}%")
        for p in p_targets:
            line = f"  minDCF({p:g})  {result['min_dcf'][str(p)]:.4f}"
            if result["calibrated"]:
                line += f"   actDCF({p:g})  {result['act_dcf'][str(p)]:.4f}"
            click.echo(line)
        click.echo(f"  minCllr   {result['min_cllr']:.4f}" +
                   (f"   Cllr  {result['cllr']:.4f}" if result["calibrated"] else ""))
    if det_path:
        from spkver.backend.plots import det_plot

        det_plot(curves, det_path)


@click.command("calibrate")
@click.argument("scores_path", type=click.Path(path_type=Path))
@click.option("--trials", "trials_path", type=click.Path(path_type=Path), help="Labels, if SCORES has none.")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path))
@click.option("--p-target", type=Finite(0, 1, min_open=True, max_open=True), default=0.01,
              show_default=True, help="Prior the calibration is optimised for.")
@click.pass_obj
def calibrate_command(report, scores_path, trials_path, output, p_target):
    """Fit a score → log-likelihood-ratio calibration on a development set's scores."""
    refuse_other_kind(output, is_calibration_file, "calibration file")
    scores, calibrated, normalisation = read_scores(scores_path)
    if calibrated:
        raise SpkverError("scores are already calibrated; calibrate raw scores", scores_path)
    trials = read_trials(trials_path) if trials_path else None
    tar, non = labelled_scores(scores, trials, str(scores_path))
    for warning in calibration_warnings(tar, non, p_target):
        report.warn(f"{scores_path}: {warning}")
    # The calibration remembers the normalisation so it is only applied to scores made the same way.
    calibration = replace(fit_calibration(tar, non, p_target), normalisation=normalisation)
    save_calibration(output, calibration)
    llr_tar, llr_non = calibration(tar), calibration(non)
    report.log(f"calibration ({normalisation} scores): llr = {calibration.scale:.4f} * score "
               f"{calibration.offset:+.4f}; on these trials "
               f"Cllr {cllr(llr_tar, llr_non):.4f} (min {min_cllr(tar, non):.4f}), "
               f"actDCF({p_target:g}) {actual_dcf(llr_tar, llr_non, p_target):.4f} -> {output}")


