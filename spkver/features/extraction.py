"""Features of many recordings, extracted in parallel over the cores."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor

import numpy as np

from spkver.audio.decode import iter_audio_blocks
from spkver.audio.sources import AudioItem
from spkver.errors import SpkverError
from spkver.features.config import FeatureConfig
from spkver.features.frontend import extract_blocks
from spkver.run import RunOptions, default_workers, init_worker_process, process_context

# Below this many files, worker start-up costs more than it saves.
MIN_FILES_FOR_WORKERS = 24


def features_of(item: AudioItem, config: FeatureConfig, info: dict | None = None) -> np.ndarray:
    """Speech-frame features of one recording (``info`` as for :func:`spkver.audio.decode.iter_audio_blocks`).

    Raises
    ------
    SpkverError
        Unreadable audio, or no speech frame left after voice-activity detection.
    """
    frames = extract_blocks(iter_audio_blocks(item.path, config.sample_rate, info=info), config)
    if len(frames) == 0:
        raise SpkverError("no speech found (the recording is silent or too quiet)", item.path)
    if not np.isfinite(frames).all():  # the guard on features, where they are made
        raise SpkverError("features are not finite (the audio is damaged)", item.path)
    return frames


def _features_or_error(args):
    """``(features, error message, native sample rate)`` of one job."""
    item, config = args
    info = {}
    try:
        return features_of(item, config, info), None, info.get("native_rate")
    except SpkverError as exc:
        return None, f"{exc} (named in {item.origin})" if item.origin else str(exc), info.get("native_rate")
    except MemoryError:
        return None, f"{item.path}: out of memory while reading it", info.get("native_rate")


def low_rate_message(path, native_rate: int, feature_rate: int) -> str:
    """The warning for audio recorded below the feature rate: its upper band is empty, silently."""
    return (f"{path}: recorded at {native_rate} Hz, below the model's {feature_rate} Hz features, so the bands "
            f"above {native_rate // 2} Hz are empty and scores suffer; for such audio train a UBM at "
            f"--sample-rate {8000 if native_rate <= 8000 else native_rate} (further files like this are not reported)")


def iter_features(items, config: FeatureConfig, workers: int | None = None):
    """Yield ``(item, features, error, native rate)`` for each item, in order.

    ``error`` is the one-line message of a bad file (``features`` is then
    None), so the caller decides whether to stop or skip it.
    """
    workers = workers or default_workers()
    jobs = [(item, config) for item in items]
    if workers <= 1 or len(jobs) < MIN_FILES_FOR_WORKERS:
        for job in jobs:
            yield (job[0], *_features_or_error(job))
        return

    with ProcessPoolExecutor(workers, mp_context=process_context(), initializer=init_worker_process) as pool:
        chunk = max(1, min(64, len(jobs) // (8 * workers)))
        for job, result in zip(jobs, pool.map(_features_or_error, jobs, chunksize=chunk)):
            yield (job[0], *result)


def usable_features(items, config: FeatureConfig, *, run: RunOptions = RunOptions()):
    """Yield ``(item, features)`` of each good recording, in order.

    A bad file raises :class:`SpkverError`, or with ``run.skip_bad`` is
    passed to ``run.on_skip`` (its one-line message) and left out. Features
    are (n_speech_frames, ``config.dim``) float32 arrays.

    ``run.progress`` wraps the result iterator (for a progress bar);
    ``run.on_note`` receives one warning, at the first recording made at a
    lower rate than ``config.sample_rate`` (its upper band is empty after
    resampling).
    """
    items = list(items)
    results = iter_features(items, config, run.workers)
    if run.progress is not None:
        results = run.progress(results, len(items))
    warned = run.on_note is None
    for item, frames, error, native_rate in results:
        if error is None:
            if not warned and native_rate and native_rate < config.sample_rate:
                run.note(low_rate_message(item.path, native_rate, config.sample_rate))
                warned = True
            if run.on_detail is not None:
                run.on_detail(f"{item.key}: {len(frames)} speech frames")
            yield item, frames
        elif not run.skip_bad:
            raise SpkverError(error)
        elif run.on_skip is not None:
            run.on_skip(error)


def extract_all(items, config: FeatureConfig, *, run: RunOptions = RunOptions()):
    """Features of every good item (see :func:`usable_features`); at least one must be usable.

    Returns
    -------
    list of (AudioItem, numpy.ndarray of shape (n_speech_frames, config.dim))
    """
    kept = list(usable_features(items, config, run=run))
    if not kept:
        raise SpkverError("no usable audio: every input was skipped")
    return kept
