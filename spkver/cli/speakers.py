"""Commands about enrolled speakers: ``enroll``, ``verify`` and ``identify``."""

from __future__ import annotations

import json
from pathlib import Path

import click
from scipy.special import expit

from spkver.audio.sources import gather_inputs
from spkver.backend.calibration import load_calibration
from spkver.backend.metrics import prior_log_odds
from spkver.cli.options import Finite, audio_inputs, decision_options, decision_threshold, load_store, store_options
from spkver.errors import SpkverError, printable
from spkver.gmm.map import ADAPT_MODES, DEFAULT_ADAPT
from spkver.storage.models import save_model
from spkver.storage.speakers import validate_speaker_id


@click.command("enroll")
@click.option("--ubm", "ubm_path", required=True, type=click.Path(path_type=Path))
@click.option("--models", "models_dir", required=True, type=click.Path(path_type=Path),
              help="Speaker store folder (created if missing).")
@click.option("--speaker", required=True)
@click.option("--relevance", type=Finite(min=0), default=16.0, show_default=True)
@click.option("--adapt", type=click.Choice(ADAPT_MODES), default=DEFAULT_ADAPT, show_default=True,
              help="Adapt means (m), and weights (w) and/or variances (v).")
@click.option("--force", is_flag=True, help="Replace an enrolled speaker.")
@audio_inputs
@click.pass_obj
def enroll_command(report, ubm_path, models_dir, speaker, relevance, adapt, force, audio, list_file,
           workers, skip_bad):
    """Enroll SPEAKER by MAP-adapting the UBM to AUDIO."""
    from spkver.api import enroll as enroll_speaker

    validate_speaker_id(speaker)
    ubm, store = load_store(ubm_path, models_dir)
    if store.exists(speaker) and not force:
        raise SpkverError(f"speaker {speaker!r} is already enrolled; pass --force to replace it",
                          store.path(speaker))
    items = gather_inputs(audio, list_file)
    model = enroll_speaker(ubm, items, speaker, relevance=relevance, adapt=adapt,
                           run=report.run_options(workers, skip_bad))
    with store.locked(speaker):
        if store.exists(speaker) and not force:
            raise SpkverError(f"speaker {speaker!r} was enrolled meanwhile; pass --force to replace it",
                              store.path(speaker))
        save_model(store.path(speaker), model)
    report.log(f"enrolled {speaker}: {model.meta['training']['frames']} speech frames from "
               f"{model.meta['training']['files']} files -> {store.path(speaker)}")


@click.command("verify")
@store_options
@click.option("--speaker", required=True, multiple=True, help="Claimed speaker (repeatable).")
@decision_options("Accept when the score is at least this [default: 0, or the Bayes threshold for --p-target "
                  "with --calibration].")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@audio_inputs
@click.pass_obj
def verify_command(report, ubm_path, models_dir, speaker, threshold, top_c, calibration_path, p_target, as_json, audio,
           list_file, workers, skip_bad):
    """Is AUDIO spoken by SPEAKER? Prints speaker, path, score, accept|reject."""
    from spkver.api import verify as verify_trials

    for name in speaker:
        validate_speaker_id(name)
    ubm, store = load_store(ubm_path, models_dir)
    models = [store.load(name, ubm) for name in speaker]
    calibration = load_calibration(calibration_path) if calibration_path else None
    threshold = decision_threshold(threshold, calibration, p_target)
    items = gather_inputs(audio, list_file)
    scores = verify_trials(ubm, models, items, threshold=threshold, top_c=top_c, calibration=calibration,
                           run=report.run_options(workers, skip_bad))
    for t in scores:
        decision = "accept" if t.accepted else "reject"
        if as_json:
            record = {"speaker": t.speaker, "path": t.test, "score": round(t.score, 6),
                      "decision": decision, "frames": t.frames}
            if calibration is not None:
                record["posterior"] = round(float(expit(t.score + prior_log_odds(p_target))), 6)
                record["p_target"] = p_target
            click.echo(json.dumps(record, allow_nan=False))
        else:
            click.echo(f"{printable(t.speaker)}\t{printable(t.test)}\t{t.score:.6f}\t{decision}")


@click.command("identify")
@store_options
@click.option("--top", type=click.IntRange(min=1), default=3, show_default=True, help="Speakers listed per file.")
@decision_options("Answer 'unknown' when the best score is below this (open set) [default: closed set, or the "
                  "Bayes threshold with --calibration].")
@click.option("--json", "as_json", is_flag=True)
@audio_inputs
@click.pass_obj
def identify_command(report, ubm_path, models_dir, top, threshold, top_c, calibration_path, p_target, as_json, audio,
             list_file, workers, skip_bad):
    """Which enrolled speaker is it? Ranks all speakers for each AUDIO file."""
    from spkver.api import identify as identify_files

    ubm, store = load_store(ubm_path, models_dir)
    speakers = [store.load(name, ubm) for name in store.speakers()]
    calibration = load_calibration(calibration_path) if calibration_path else None
    if calibration is not None:
        threshold = decision_threshold(threshold, calibration, p_target)
    items = gather_inputs(audio, list_file)
    answers = identify_files(ubm, speakers, items, top=top, threshold=threshold, top_c=top_c,
                             calibration=calibration, run=report.run_options(workers, skip_bad))
    for answer in answers:
        if as_json:
            ranking = [{"speaker": s, "score": round(v, 6)} for s, v in answer.ranking]
            click.echo(json.dumps({"path": answer.path, "decision": answer.decision, "ranking": ranking},
                                  allow_nan=False))
        else:
            ranked = "\t".join(f"{printable(s)}:{v:.4f}" for s, v in answer.ranking)
            click.echo(f"{printable(answer.path)}\t{printable(answer.decision)}\t{ranked}")
