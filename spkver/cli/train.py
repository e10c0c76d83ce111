"""Commands that train models: ``train-ubm``, ``extract`` (a feature store to train from) and ``train-ivector``."""

from __future__ import annotations

import os
from pathlib import Path

import click

from spkver.backend.scorenorm import COHORT_SEGMENTS
from spkver.cli.options import (
    AutoOrPositiveInt,
    Finite,
    audio_inputs,
    audio_items,
    check_store_feature_options,
    feature_cache,
    feature_options,
    is_stdout,
    read_speaker_list,
    speakers_of_data_dir,
    speakers_per_folder,
    training_feature_config,
    warn_ignored,
)
from spkver.cli.report import command_line, stop_with, terminate_as_interrupt
from spkver.errors import SpkverError
from spkver.fileio import folder_usage, locked, megabytes
from spkver.gmm.channels import DEFAULT_CHANNEL_FACTORS
from spkver.ivector import DEFAULT_RANK, DEFAULT_SEGMENT_SECONDS, DEFAULT_WCCN
from spkver.storage.models import checkpoint_step, checkpoint_systems_trained, load_model, save_model


def check_output(output: Path, force: bool, users: str) -> None:
    """Before any work: OUTPUT's folder exists and is writable, and OUTPUT is not replaced without --force."""
    if not output.parent.is_dir():
        raise SpkverError("output folder does not exist", output.parent)
    if not os.access(output.parent, os.W_OK):  # fail now, not after hours of training
        raise SpkverError("output folder is not writable", output.parent)
    if output.exists() and not force:
        raise SpkverError(f"already exists; pass --force to replace it (speakers {users} will need re-enrolling)",
                          output)


def stop_interrupted(ctx, interrupt, checkpoint: Path, step_name: str, kept: str = "") -> None:
    """End a training run stopped by Ctrl-C or SIGTERM: the checkpoint and the command that resumes it, or why
    there is nothing to resume (``kept`` says what was kept)."""
    code = getattr(interrupt, "exit_code", 130)
    step = checkpoint_step(checkpoint) if checkpoint.exists() else None
    if step is not None:
        finished = checkpoint_systems_trained(checkpoint)
        system = f" of system {finished + 1}" if finished else ""
        stop_with(ctx, code, f"spkver: interrupted after {step_name} {step}{system}; its state is in {checkpoint}. "
                             f"To continue: {command_line(ctx, '--resume')}")
    stop_with(ctx, code, f"spkver: interrupted before the first {step_name} ended: nothing to resume{kept}. "
                         "Run the same command again.")


@click.command("train-ubm")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="UBM file to write (.npz).")
@click.option("--components", type=AutoOrPositiveInt(), default="auto", show_default=True,
              help="Gaussians in the UBM; auto: the power of two nearest one per 800 speech frames, 16-2048.")
@click.option("--iterations", type=click.IntRange(min=0), default=20, show_default=True,
              help="EM iterations at most (training stops earlier when the gain is below --tol).")
@click.option("--init", type=click.Choice(["kmeans", "split"]), default="kmeans", show_default=True,
              help="Start EM from k-means, or grow the mixture by binary splitting (1, 2, 4, ...).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Random seed of the initialisation: the same data and seed give the same bytes.")
@click.option("--tol", type=Finite(min=0), default=1e-4, show_default=True,
              help="Stop when the relative gain in average log-likelihood is below this.")
@click.option("--allow-fewer-components", is_flag=True,
              help="With too little speech, train fewer components instead of failing.")
@click.option("--force", is_flag=True,
              help="Replace an existing OUTPUT (speakers enrolled from it must be re-enrolled).")
@click.option("--features", "features_dir", type=click.Path(path_type=Path),
              help="Train on a feature store made by `spkver extract` (instead of AUDIO).")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
              help="Keep extracted features here for re-runs [default: $SPKVER_CACHE_DIR or ~/.cache/spkver].")
@click.option("--no-cache", is_flag=True, help="Keep features in memory only.")
@click.option("--scheduler", default=None, help="Dask scheduler address: accumulate EM statistics on a cluster.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from OUTPUT's checkpoint.")
@click.option("--cohort-segments", type=click.IntRange(min=0), default=COHORT_SEGMENTS, show_default=True,
              help="3 s segments of the training speech kept in the UBM for `spkver score`'s S-norm; 0 for none.")
@click.option("--channel-factors", type=AutoOrPositiveInt(minimum=0), default="auto", show_default=True,
              help="Directions in which one speaker's recordings differ (words, microphone, room), learnt from "
                   f"speakers with several recordings and removed from every recording; auto: "
                   f"{DEFAULT_CHANNEL_FACTORS} when the audio names speakers (--data-dir with utt2spk, "
                   "--per-folder, --speaker-list), else none; 0 for none.")
@click.option("--per-folder", type=click.Path(path_type=Path),
              help="Speakers are the sub-folders of this folder (their names), the audio below each.")
@click.option("--speaker-list", type=click.Path(path_type=Path),
              help="Speakers from 'speaker path-or-utterance-id' lines (ids of --data-dir).")
@feature_options
@audio_inputs
@click.pass_context
def train_ubm_command(ctx, output, components, iterations, init, seed, tol, allow_fewer_components,
                      force, features_dir, cache_dir, no_cache, scheduler, resume, cohort_segments, channel_factors,
                      per_folder, speaker_list, audio, list_file, data_dir, allow_pipes, workers, skip_bad,
                      **feature_values):
    """Train a universal background model on AUDIO (files or folders).

    A checkpoint (OUTPUT.checkpoint.npz) is written after every EM iteration;
    --resume continues from it after a crash, Ctrl-C or kill. A run without
    --resume refuses to replace an existing checkpoint (--force starts over).

    \b
    Example:
      spkver train-ubm -o ubm.npz background/
      spkver train-ubm -o ubm.npz --data-dir data/train --workers 8
      spkver train-ubm -o ubm.npz --per-folder background/
    """
    from spkver.api import train_ubm

    report = ctx.obj
    check_output(output, force, "enrolled from it")
    if features_dir is not None and (audio or list_file or data_dir or per_folder or speaker_list):
        raise SpkverError("give either --features or AUDIO/--list/--data-dir/--per-folder/--speaker-list, not both")
    if features_dir is not None:
        from spkver.features.store import FeatureStore

        warn_ignored(report, ["cache_dir", "no_cache", "skip_bad", "allow_pipes"],
                     "with --features (the store's features are used)")
        check_store_feature_options(report, FeatureStore(features_dir).config, feature_values, features_dir,
                                    "train on it")
    elif no_cache:
        warn_ignored(report, ["cache_dir"], "with --no-cache")
    items = config = labels = None
    if features_dir is None:
        items, labels = labelled_audio(report, audio, list_file, data_dir, allow_pipes, per_folder, speaker_list,
                                       skip_bad)
        config = training_feature_config(report, items, feature_values)
        systems = f"{len(config.norms)} systems ({', '.join(config.norms)}) of " if len(config.norms) > 1 else ""
        report.log(f"train-ubm: {len(items)} files, {config.dim}-dim features ({systems}{config.n_ceps} cepstra of "
                   f"{config.n_mels} mel bands at {config.sample_rate} Hz{', pitch' if config.pitch else ''}, "
                   f"VAD {config.vad})")
    cache, cache_created = (None, False) if no_cache or features_dir is not None else feature_cache(report, cache_dir)
    checkpoint = Path(f"{output}.checkpoint.npz")
    try:
        with terminate_as_interrupt():
            model = train_ubm(items, config=config, n_components=components, iterations=iterations, init=init,
                              seed=seed, tol=tol, allow_fewer_components=allow_fewer_components,
                              run=report.run_options(workers, skip_bad), on_iteration=report.iteration(),
                              cache_dir=cache, features_dir=features_dir, scheduler=scheduler, checkpoint=checkpoint,
                              resume=resume, restart=force, on_log=report.log, cohort_size=cohort_segments,
                              labels=labels, channel_factors=channel_factors)
    except KeyboardInterrupt as interrupt:
        cached = f"; the features extracted so far are cached in {cache}" if cache else ""
        stop_interrupted(ctx, interrupt, checkpoint, "EM iteration", cached)
    with locked(output.parent / f".{output.name}.lock"):  # another run may have finished meanwhile
        if output.exists() and not force:
            raise SpkverError("was written meanwhile (another train-ubm run?); pass --force to replace it", output)
        save_model(output, model)
    if cache_created:  # the cache grows with every new recording: say so once, where and how much
        report.log(f"features of the training audio are cached in {cache} ({megabytes(folder_usage(cache)[1])}) "
                   "so that re-runs skip extraction; `spkver cache info` shows it, `spkver cache clear` empties it")
    summary = model.meta["training"]
    likelihoods = ", ".join(f"{s['average_log_likelihood']:.4f} ({s['norm']})" for s in summary["systems"]) \
        if "systems" in summary else f"{summary['average_log_likelihood']:.4f}"
    channels = f", {summary['channels']['rank']} channel factors" if summary.get("channels") else ""
    report.log(f"wrote {output}: {summary['components']} components{' per system' if 'systems' in summary else ''}"
               f"{channels}, {summary['frames']} frames, average log-likelihood {likelihoods}")


@click.command("extract")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Feature store folder.")
@feature_options
@audio_inputs
@click.pass_obj
def extract_command(report, output, audio, list_file, data_dir, allow_pipes, workers, skip_bad, **feature_values):
    """Extract features of AUDIO into a feature store (re-runs skip unchanged files).

    Adding to an existing store extracts with the store's own settings;
    feature options that would change them are refused.

    \b
    Example:
      spkver extract -o feats/ --list train.scp
      spkver train-ubm -o ubm.npz --features feats/
    """
    from spkver.features.store import FeatureStore

    if is_stdout(output):
        raise SpkverError("a feature store is a folder, it cannot go to standard output; name a folder", output)
    if not FeatureStore.exists(output):
        FeatureStore.check_new_folder(output)  # before any audio is read
    items = audio_items(report, audio, list_file, data_dir, allow_pipes)
    if FeatureStore.exists(output):
        store = FeatureStore(output)
        check_store_feature_options(report, store.config, feature_values, output, "add to it")
        report.log(f"{output}: adding with the store's feature settings ({store.config.dim}-dim features at "
                   f"{store.config.sample_rate} Hz)")
    else:
        store = FeatureStore(output, training_feature_config(report, items, feature_values))
    kept = store.extract(items, run=report.run_options(workers, skip_bad))
    frames = sum(len(a) for _, a in kept)
    report.log(f"{output}: {len(kept)} of {len(items)} files, {frames} speech frames, "
               f"{len(store.entries)} entries in the store")


@click.command("train-ivector")
@click.option("--ubm", "ubm_path", required=True, type=click.Path(path_type=Path), help="The UBM.")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="i-vector back-end file to write (.npz).")
@click.option("--rank", type=click.IntRange(min=1, max=4096), default=DEFAULT_RANK, show_default=True,
              help="Dimension of the i-vectors (rank of the total-variability matrix).")
@click.option("--iterations", type=click.IntRange(min=0), default=10, show_default=True,
              help="EM iterations of the total-variability matrix.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Random seed of the matrix's start: the same data and seed give the same bytes.")
@click.option("--segment-seconds", type=Finite(min=0), default=DEFAULT_SEGMENT_SECONDS, show_default=True,
              help="Cut recordings with more than twice this much speech into pieces this long (0: keep them "
                   "whole).")
@click.option("--lda-dim", type=click.IntRange(min=1), default=None,
              help="Project i-vectors on this many LDA directions before scoring [default: no LDA].")
@click.option("--wccn/--no-wccn", default=DEFAULT_WCCN, show_default=True,
              help="Within-class covariance normalisation (after LDA), when the audio names speakers.")
@click.option("--scoring", type=click.Choice(["auto", "plda", "cosine"]), default="auto", show_default=True,
              help="auto: PLDA when the audio names two or more speakers with several recordings, else cosine.")
@click.option("--per-folder", type=click.Path(path_type=Path),
              help="Speakers are the sub-folders of this folder (their names), the audio below each.")
@click.option("--speaker-list", type=click.Path(path_type=Path),
              help="Speakers from 'speaker path-or-utterance-id' lines (ids of --data-dir).")
@click.option("--force", is_flag=True, help="Replace an existing OUTPUT, or start over from a checkpoint.")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
              help="Keep extracted features here for re-runs [default: $SPKVER_CACHE_DIR or ~/.cache/spkver].")
@click.option("--no-cache", is_flag=True, help="Keep features in memory only.")
@click.option("--scheduler", default=None,
              help="Dask scheduler address: statistics and EM on a cluster (the cache must be shared).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from OUTPUT's checkpoint.")
@audio_inputs
@click.pass_context
def train_ivector_command(ctx, ubm_path, output, rank, iterations, seed, segment_seconds, lda_dim, wccn, scoring,
                          per_folder, speaker_list, force, cache_dir, no_cache, scheduler, resume, audio, list_file,
                          data_dir, allow_pipes, workers, skip_bad):
    """Train an i-vector back-end on a UBM: total-variability matrix, then PLDA (or cosine) scoring.

    Speakers (for PLDA, LDA and WCCN) come from --data-dir's utt2spk/spk2utt,
    --per-folder or --speaker-list; AUDIO or --list without speakers trains a
    cosine-scoring back-end. Then `enroll --ivector` keeps i-vectors with each
    speaker and `score`, `verify`, `identify --ivector` score with them; fuse
    its scores with the MAP scores by `spkver fuse`. A checkpoint
    (OUTPUT.checkpoint.npz) is written after every iteration; --resume continues.

    \b
    Example:
      spkver train-ivector --ubm ubm.npz -o ivector.npz --data-dir data/train
      spkver train-ivector --ubm ubm.npz -o ivector.npz --per-folder background/
    """
    from spkver.api import train_ivector
    from spkver.storage.ivectors import save_backend

    report = ctx.obj
    check_output(output, force, "enrolled with it")
    if no_cache:
        warn_ignored(report, ["cache_dir"], "with --no-cache")
    ubm = load_model(ubm_path, kind="ubm")
    items, labels = labelled_audio(report, audio, list_file, data_dir, allow_pipes, per_folder, speaker_list,
                                   skip_bad)
    if labels is None and scoring == "plda":
        raise SpkverError("PLDA scoring needs speakers: give --data-dir with utt2spk, --per-folder or "
                          "--speaker-list")
    report.log(f"train-ivector: {len(items)} files, " +
               (f"{len(set(labels))} speakers" if labels is not None else "no speaker labels (cosine scoring)"))
    cache, _ = (None, False) if no_cache else feature_cache(report, cache_dir)
    checkpoint = Path(f"{output}.checkpoint.npz")
    try:
        with terminate_as_interrupt():
            backend = train_ivector(ubm, items, labels=labels, rank=rank, iterations=iterations, seed=seed,
                                    segment_seconds=segment_seconds or None, lda_dim=lda_dim, wccn=wccn,
                                    scoring=None if scoring == "auto" else scoring, cache_dir=cache,
                                    scheduler=scheduler, checkpoint=checkpoint, resume=resume, restart=force,
                                    on_iteration=report.iteration("T-matrix iteration", "log-likelihood per utterance"),
                                    on_log=report.log, run=report.run_options(workers, skip_bad))
    except KeyboardInterrupt as interrupt:
        stop_interrupted(ctx, interrupt, checkpoint, "T-matrix iteration")
    with locked(output.parent / f".{output.name}.lock"):
        if output.exists() and not force:
            raise SpkverError("was written meanwhile (another train-ivector run?); pass --force to replace it", output)
        save_backend(output, backend, ubm, backend.training)
    summary = backend.training
    report.log(f"wrote {output}: rank {summary['rank']}, {summary['utterances']} utterances, "
               f"{backend.scoring} scoring" + (f" on {summary['speakers']} speakers" if summary["speakers"] else ""))


def labelled_audio(report, audio, list_file, data_dir, allow_pipes, per_folder, speaker_list, skip_bad):
    """The training audio and its speakers (None when the inputs name none)."""
    if per_folder is not None and speaker_list is not None:
        raise SpkverError("give --per-folder or --speaker-list, not both")
    speakers = None
    if per_folder is not None or speaker_list is not None:
        if audio or list_file:
            raise SpkverError("AUDIO and --list name no speakers: put the files in --per-folder sub-folders or a "
                              "--speaker-list")
        speakers = (speakers_per_folder(report, per_folder, skip_bad) if per_folder is not None
                    else read_speaker_list(speaker_list, data_dir))
    elif data_dir is not None and not (audio or list_file):
        from spkver.audio.sources import read_data_dir

        if read_data_dir(data_dir).speakers:  # in wav.scp's order, as without speakers
            items = audio_items(report, audio, list_file, data_dir, allow_pipes)
            speaker_of = {item.key: name for name, files in speakers_of_data_dir(data_dir).items() for item in files}
            missing = [item.key for item in items if item.key not in speaker_of]
            if missing:
                raise SpkverError(f"utterance {missing[0]!r} has no speaker in utt2spk/spk2utt", data_dir)
            return items, [speaker_of[item.key] for item in items]
    if speakers is None:
        return audio_items(report, audio, list_file, data_dir, allow_pipes), None
    items = [item for files in speakers.values() for item in files]
    return items, [name for name, files in speakers.items() for _ in files]
