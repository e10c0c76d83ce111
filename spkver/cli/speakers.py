"""Commands about enrolled speakers: ``enroll``, ``verify`` and ``identify``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from spkver.audio.sources import read_data_dir
from spkver.backend.metrics import posterior_probability
from spkver.cli.options import (
    audio_inputs,
    audio_items,
    calibration_option,
    decision_options,
    decision_threshold,
    ivector_backend,
    ivector_option,
    load_store,
    map_options,
    read_speaker_list,
    speakers_of_data_dir,
    speakers_per_folder,
    store_options,
    warn_ignored,
)
from spkver.errors import SpkverError, printable
from spkver.storage.models import save_model
from spkver.storage.speakers import validate_speaker_id


@click.command("enroll")
@click.option("--ubm", "ubm_path", required=True, type=click.Path(path_type=Path), help="The UBM.")
@click.option("--models", "models_dir", required=True, type=click.Path(path_type=Path),
              help="Speaker store folder (created if missing).")
@click.option("--speaker", help="The speaker to enroll from AUDIO (else many: see --data-dir, --per-folder, "
                                "--speaker-list).")
@click.option("--per-folder", type=click.Path(path_type=Path),
              help="Enroll one speaker per sub-folder of this folder, named after it, from the audio below it.")
@click.option("--speaker-list", type=click.Path(path_type=Path),
              help="Enroll the speakers of 'speaker path-or-utterance-id' lines (ids of --data-dir; paths "
                   "relative to the list).")
@map_options()
@ivector_option("also keep an i-vector of each recording, so that score/verify/identify --ivector can use "
                "this back-end.")
@click.option("--force", is_flag=True, help="Replace enrolled speakers.")
@audio_inputs
@click.pass_obj
def enroll_command(report, ubm_path, models_dir, speaker, per_folder, speaker_list, relevance, adapt, ivector_path,
                   force, audio, list_file, data_dir, allow_pipes, workers, skip_bad):
    """Enroll SPEAKER by MAP-adapting the UBM to AUDIO, or many speakers at once.

    Many speakers: --data-dir without --speaker (its spk2utt or utt2spk),
    --per-folder DIR, or --speaker-list FILE. Their features are extracted in
    one pool and each model is written as soon as it is made.

    \b
    Example:
      spkver enroll --ubm ubm.npz --models models/ --speaker alice alice/
      spkver enroll --ubm ubm.npz --models models/ --per-folder speakers/
      spkver enroll --ubm ubm.npz --ivector ivector.npz --models models/ --speaker alice alice/
    """
    from spkver.api import enroll as enroll_speaker

    if speaker is None:
        return enroll_batch(report, ubm_path, models_dir, per_folder, speaker_list, relevance, adapt, ivector_path,
                            force, audio, list_file, data_dir, allow_pipes, workers, skip_bad)
    if per_folder or speaker_list:
        raise SpkverError("--speaker enrolls one speaker from AUDIO; --per-folder and --speaker-list enroll many "
                          "(give them without --speaker)")
    validate_speaker_id(speaker)
    ubm, store = load_store(ubm_path, models_dir)
    backend = ivector_backend(ivector_path, ubm)
    refuse_enrolled(store, [speaker], force)
    data = read_data_dir(data_dir) if data_dir is not None else None
    if data is not None and data.speakers:  # the data folder's utterances of this speaker, not everyone's
        if speaker not in data.speakers:
            raise SpkverError(f"speaker {speaker!r} has no utterances in spk2utt/utt2spk (it lists "
                              f"{', '.join(list(data.speakers)[:10])}{' ...' if len(data.speakers) > 10 else ''})",
                              data.root)
        items = audio_items(report, audio, list_file, None, allow_pipes) if audio or list_file else []
        items += data.items_of(speaker)
    else:
        items = audio_items(report, audio, list_file, data_dir, allow_pipes)
    model = enroll_speaker(ubm, items, speaker, relevance=relevance, adapt=adapt, backend=backend,
                           run=report.run_options(workers, skip_bad))
    save_speaker(store, speaker, model, force)
    report.log(f"enrolled {speaker}: {model.meta['training']['frames']} speech frames from "
               f"{model.meta['training']['files']} files -> {store.path(speaker)}")


def refuse_enrolled(store, speakers, force):
    """Unless --force, refuse speakers already in the store (all of them named, before any work)."""
    if force:
        return
    enrolled = [name for name in speakers if store.exists(name)]
    if len(enrolled) == 1:
        raise SpkverError(f"speaker {enrolled[0]!r} is already enrolled; pass --force to replace it",
                          store.path(enrolled[0]))
    if enrolled:
        shown = ", ".join(enrolled[:10]) + (f" and {len(enrolled) - 10} more" if len(enrolled) > 10 else "")
        raise SpkverError(f"{len(enrolled)} speakers are already enrolled ({shown}); pass --force to replace them",
                          store.root)


def save_speaker(store, speaker, model, force):
    """Write one speaker's model atomically, re-checking under its lock that no other run enrolled it meanwhile."""
    with store.locked(speaker):
        if store.exists(speaker) and not force:
            raise SpkverError(f"speaker {speaker!r} was enrolled meanwhile; pass --force to replace it",
                              store.path(speaker))
        save_model(store.path(speaker), model)


def enroll_batch(report, ubm_path, models_dir, per_folder, speaker_list, relevance, adapt, ivector_path, force, audio,
                 list_file, data_dir, allow_pipes, workers, skip_bad):
    """``enroll`` without --speaker: every speaker of --data-dir, --per-folder or --speaker-list."""
    from spkver.api import enroll_many

    if sum(x is not None for x in (per_folder, speaker_list)) + (data_dir is not None and speaker_list is None) != 1:
        raise SpkverError("give --speaker with AUDIO, or one of --data-dir (with spk2utt or utt2spk), --per-folder "
                          "or --speaker-list to enroll many speakers")
    if audio or list_file:
        raise SpkverError("AUDIO and --list are a single speaker's audio: give --speaker, or put the files in "
                          "--per-folder sub-folders or a --speaker-list")
    warn_ignored(report, ["allow_pipes"], "without --list (a --data-dir's wav.scp runs its commands anyway)")
    ubm, store = load_store(ubm_path, models_dir)
    backend = ivector_backend(ivector_path, ubm)
    if per_folder is not None:
        speakers = speakers_per_folder(report, per_folder, skip_bad)
    elif speaker_list is not None:
        speakers = read_speaker_list(speaker_list, data_dir)
    else:
        speakers = speakers_of_data_dir(data_dir)
    refuse_enrolled(store, speakers, force)
    written = 0
    try:
        for model in enroll_many(ubm, speakers, relevance=relevance, adapt=adapt, backend=backend,
                                 run=report.run_options(workers, skip_bad, label="speakers")):
            save_speaker(store, model.meta["speaker"], model, force)
            written += 1
    except SpkverError as exc:
        if written:
            kept = f"; the {written} speaker model(s) written before it are kept"
            raise SpkverError(exc.message + kept, exc.path) from None
        raise
    report.log(f"enrolled {written} of {len(speakers)} speakers -> {store.root}")


@click.command("verify")
@store_options
@click.option("--speaker", required=True, multiple=True, help="Claimed speaker (repeatable).")
@decision_options("Accept when the score is at least this [default: 0, or the Bayes threshold for --p-target "
                  "with --calibration].")
@ivector_option("score with it (PLDA or cosine) instead of the MAP models; speakers enrolled with it.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@audio_inputs
@click.pass_obj
def verify_command(report, ubm_path, models_dir, speaker, threshold, top_c, calibration_path, p_target, ivector_path,
                   as_json, audio, list_file, data_dir, allow_pipes, workers, skip_bad):
    """Is AUDIO spoken by SPEAKER? Prints speaker, path, score, accept|reject.

    \b
    Example:
      spkver verify --ubm ubm.npz --models models/ --speaker alice test.wav
      spkver verify --ubm ubm.npz --models models/ --speaker alice --calibration cal.json --json test.wav
    """
    from spkver.api import verify as verify_trials

    for name in speaker:
        validate_speaker_id(name)
    ubm, store = load_store(ubm_path, models_dir)
    backend = ivector_backend(ivector_path, ubm)
    models = [store.load(name, ubm) for name in speaker]
    calibration = calibration_option(calibration_path)
    if calibration is None:
        warn_ignored(report, ["p_target"], "without --calibration (raw scores are decided at --threshold, 0)")
    threshold = decision_threshold(threshold, calibration, p_target)
    items = audio_items(report, audio, list_file, data_dir, allow_pipes)
    scores = verify_trials(ubm, models, items, threshold=threshold, top_c=top_c, calibration=calibration,
                           backend=backend, run=report.run_options(workers, skip_bad))
    for t in scores:
        decision = "accept" if t.accepted else "reject"
        if as_json:
            record = {"speaker": t.speaker, "path": t.test, "score": round(t.score, 6),
                      "decision": decision, "frames": t.frames}
            if calibration is not None:
                record["posterior"] = round(posterior_probability(t.score, p_target), 6)
                record["p_target"] = p_target
            click.echo(json.dumps(record, allow_nan=False))
        else:
            click.echo(f"{printable(t.speaker)}\t{printable(t.test)}\t{t.score:.6f}\t{decision}")


@click.command("identify")
@store_options
@click.option("--top", type=click.IntRange(min=1), default=3, show_default=True, help="Speakers listed per file.")
@decision_options("Answer 'unknown' when the best score is below this [default: as verify: 0, or the Bayes "
                  "threshold for --p-target with --calibration].")
@click.option("--closed-set", is_flag=True,
              help="Always name the best-scoring speaker, never 'unknown' (every voice is enrolled).")
@ivector_option("score with it (PLDA or cosine) instead of the MAP models; speakers enrolled with it.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file, with the mode and threshold.")
@audio_inputs
@click.pass_obj
def identify_command(report, ubm_path, models_dir, top, threshold, closed_set, top_c, calibration_path, p_target,
                     ivector_path, as_json, audio, list_file, data_dir, allow_pipes, workers, skip_bad):
    """Which enrolled speaker is it? Ranks all speakers for each AUDIO file: 'unknown' when even the best is
    rejected at verify's threshold (open set), or the best always with --closed-set. The first line says
    which ('# spkver identify: open set, ...'); then 'path<TAB>decision<TAB>speaker:score...' per file.

    \b
    Example:
      spkver identify --ubm ubm.npz --models models/ --top 3 unknown.wav
    """
    from spkver.api import identify as identify_files

    if closed_set and threshold is not None:
        raise SpkverError("--closed-set never answers 'unknown', so --threshold has no effect; give one of them")
    ubm, store = load_store(ubm_path, models_dir)
    backend = ivector_backend(ivector_path, ubm)
    names = store.speakers()
    if not names:
        raise SpkverError("no speaker is enrolled in this folder: enroll some first (spkver enroll)", store.root)
    speakers = [store.load(name, ubm) for name in names]
    calibration = calibration_option(calibration_path)
    if calibration is None:
        warn_ignored(report, ["p_target"], "without --calibration (raw scores are decided at --threshold, 0)")
    threshold = None if closed_set else decision_threshold(threshold, calibration, p_target)
    items = audio_items(report, audio, list_file, data_dir, allow_pipes)
    answers = identify_files(ubm, speakers, items, top=top, threshold=threshold, top_c=top_c,
                             calibration=calibration, backend=backend, run=report.run_options(workers, skip_bad))
    mode = "closed set" if threshold is None else "open set"
    if not as_json:
        click.echo(f"# spkver identify: {mode}" + ("" if threshold is None else
                   f", 'unknown' below threshold {threshold:.6f}"))
    for answer in answers:
        if as_json:
            ranking = [{"speaker": s, "score": round(v, 6)} for s, v in answer.ranking]
            click.echo(json.dumps({"path": answer.path, "decision": answer.decision, "ranking": ranking,
                                   "mode": mode.replace(" ", "-"), "threshold": threshold}, allow_nan=False))
        else:
            ranked = "\t".join(f"{printable(s)}:{v:.4f}" for s, v in answer.ranking)
            click.echo(f"{printable(answer.path)}\t{printable(answer.decision)}\t{ranked}")
