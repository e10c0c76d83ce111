"""Commands that make a UBM: ``train-ubm``, and ``extract`` (a feature store to train from)."""

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
    feature_cache,
    feature_options,
    training_feature_config,
    warn_ignored,
)
from spkver.cli.report import command_line, stop_with, terminate_as_interrupt
from spkver.errors import SpkverError
from spkver.fileio import folder_usage, locked, megabytes
from spkver.storage.models import checkpoint_step, save_model


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
@feature_options
@audio_inputs
@click.pass_context
def train_ubm_command(ctx, output, components, iterations, init, seed, tol, allow_fewer_components,
                      force, features_dir, cache_dir, no_cache, scheduler, resume, cohort_segments, audio, list_file,
                      data_dir, allow_pipes, workers, skip_bad, **feature_values):
    """Train a universal background model on AUDIO (files or folders).

    A checkpoint (OUTPUT.checkpoint.npz) is written after every EM iteration;
    --resume continues from it after a crash, Ctrl-C or kill. A run without
    --resume refuses to replace an existing checkpoint (--force starts over).

    \b
    Example:
      spkver train-ubm -o ubm.npz background/
      spkver train-ubm -o ubm.npz --data-dir data/train --workers 8
    """
    from spkver.api import train_ubm

    report = ctx.obj
    if not output.parent.is_dir():
        raise SpkverError("output folder does not exist", output.parent)
    if not os.access(output.parent, os.W_OK):  # fail now, not after hours of EM
        raise SpkverError("output folder is not writable", output.parent)
    if output.exists() and not force:
        raise SpkverError("already exists; pass --force to replace it (speakers enrolled from it "
                          "will need re-enrolling)", output)
    if features_dir is not None and (audio or list_file or data_dir):
        raise SpkverError("give either --features or AUDIO/--list/--data-dir, not both")
    if features_dir is not None:
        warn_ignored(report, ["cache_dir", "no_cache", "skip_bad", "allow_pipes", *feature_values],
                     "with --features (the store's features and their settings are used)")
    elif no_cache:
        warn_ignored(report, ["cache_dir"], "with --no-cache")
    items = config = None
    if features_dir is None:
        items = audio_items(report, audio, list_file, data_dir, allow_pipes)
        config = training_feature_config(report, items, feature_values)
        report.log(f"train-ubm: {len(items)} files, {config.dim}-dim features ({config.n_ceps} cepstra of "
                   f"{config.n_mels} mel bands at {config.sample_rate} Hz, VAD {config.vad})")
    cache, cache_created = (None, False) if no_cache or features_dir is not None else feature_cache(report, cache_dir)
    checkpoint = Path(f"{output}.checkpoint.npz")
    try:
        with terminate_as_interrupt():
            model = train_ubm(items, config=config, n_components=components, iterations=iterations, init=init,
                              seed=seed, tol=tol, allow_fewer_components=allow_fewer_components,
                              run=report.run_options(workers, skip_bad), on_iteration=report.iteration(),
                              cache_dir=cache, features_dir=features_dir, scheduler=scheduler, checkpoint=checkpoint,
                              resume=resume,
                              restart=force, on_log=report.log, cohort_size=cohort_segments)
    except KeyboardInterrupt as interrupt:
        code = getattr(interrupt, "exit_code", 130)
        step = checkpoint_step(checkpoint) if checkpoint.exists() else None
        if step is not None:
            stop_with(ctx, code, f"spkver: interrupted after EM iteration {step}; its state is in "
                                 f"{checkpoint}. To continue: {command_line(ctx, '--resume')}")
        cached = f"; the features extracted so far are cached in {cache}" if cache else ""
        stop_with(ctx, code, f"spkver: interrupted before the first EM iteration ended: nothing to resume{cached}. "
                             "Run the same command again.")
    with locked(output.parent / f".{output.name}.lock"):  # another run may have finished meanwhile
        if output.exists() and not force:
            raise SpkverError("was written meanwhile (another train-ubm run?); pass --force to replace it", output)
        save_model(output, model)
    if cache_created:  # the cache grows with every new recording: say so once, where and how much
        report.log(f"features of the training audio are cached in {cache} ({megabytes(folder_usage(cache)[1])}) "
                   "so that re-runs skip extraction; `spkver cache info` shows it, `spkver cache clear` empties it")
    summary = model.meta["training"]
    report.log(f"wrote {output}: {summary['components']} components, {summary['frames']} frames, "
               f"average log-likelihood {summary['average_log_likelihood']:.4f}")


@click.command("extract")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Feature store folder.")
@feature_options
@audio_inputs
@click.pass_obj
def extract_command(report, output, audio, list_file, data_dir, allow_pipes, workers, skip_bad, **feature_values):
    """Extract features of AUDIO into a feature store (re-runs skip unchanged files).

    \b
    Example:
      spkver extract -o feats/ --list train.scp
      spkver train-ubm -o ubm.npz --features feats/
    """
    from spkver.features.store import FeatureStore

    items = audio_items(report, audio, list_file, data_dir, allow_pipes)
    store = FeatureStore(output, training_feature_config(report, items, feature_values))
    kept = store.extract(items, run=report.run_options(workers, skip_bad))
    frames = sum(len(a) for _, a in kept)
    report.log(f"{output}: {len(kept)} of {len(items)} files, {frames} speech frames, "
               f"{len(store.entries)} entries in the store")
