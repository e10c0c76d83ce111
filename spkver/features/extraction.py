"""Features of many recordings, extracted in parallel over the cores."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor

import numpy as np

from spkver.audio.decode import iter_item_blocks, open_recording
from spkver.audio.sources import AudioItem
from spkver.errors import SpkverError
from spkver.features.config import MAX_FEATURE_MAGNITUDE, MIN_SAMPLE_RATE, FeatureConfig
from spkver.features.frontend import extract_blocks
from spkver.run import RunOptions, default_workers, init_worker_process, process_context

# Below this many files, worker start-up costs more than it saves.
MIN_FILES_FOR_WORKERS = 24


def plausible_features(frames) -> bool:
    """Whether every value of ``frames`` is finite and within :data:`MAX_FEATURE_MAGNITUDE`: the check where
    features enter, made from audio or read from a feature store."""
    frames = np.asarray(frames)
    # NaN fails both comparisons, and so does infinity.
    return frames.size == 0 or bool(frames.max() <= MAX_FEATURE_MAGNITUDE and frames.min() >= -MAX_FEATURE_MAGNITUDE)


def features_of(item: AudioItem, config: FeatureConfig, info: dict | None = None, recording=None) -> np.ndarray:
    """Speech-frame features of one utterance (``info`` and ``recording`` as for
    :func:`spkver.audio.decode.iter_item_blocks`).

    Raises
    ------
    SpkverError
        Unreadable audio, or no speech frame left after voice-activity detection.
    """
    frames = extract_blocks(iter_item_blocks(item, config.sample_rate, recording=recording, info=info), config)
    if len(frames) == 0:
        raise SpkverError("no speech found (the recording is silent or too quiet)", item.where)
    if not plausible_features(frames):  # the guard on features, where they are made
        raise SpkverError("features are not finite or out of range (the audio is damaged)", item.where)
    return frames


def _error_line(item: AudioItem, exc: SpkverError) -> str:
    return f"{exc} (named in {item.origin})" if item.origin else str(exc)


def _features_or_error(args):
    """``[(features, error message, native sample rate)]`` of one job: the utterances of one recording.

    The recording is opened (its command run) once for all of them.
    """
    items, config = args
    if len(items) == 1:
        return [_one_features_or_error(items[0], config, None)]
    try:
        with open_recording(items[0]) as recording:
            return [_one_features_or_error(item, config, recording if recording is not None else False)
                    for item in items]
    except SpkverError as exc:
        return [(None, _error_line(item, exc), None) for item in items]


def _one_features_or_error(item: AudioItem, config: FeatureConfig, recording):
    info: dict = {}
    try:
        return features_of(item, config, info, recording), None, info.get("native_rate")
    except SpkverError as exc:
        return None, _error_line(item, exc), info.get("native_rate")
    except MemoryError:
        return None, f"{item.where}: out of memory while reading it", info.get("native_rate")


def recording_groups(items) -> list[list[AudioItem]]:
    """``items`` in order, consecutive segments of one recording grouped (read with one decoding)."""
    groups: list[list[AudioItem]] = []
    for item in items:
        last = groups[-1][-1] if groups else None
        if last is not None and item.segmented and last.segmented and last.recording == item.recording:
            groups[-1].append(item)
        else:
            groups.append([item])
    return groups


def low_rate_message(path, native_rate: int, feature_rate: int) -> str:
    """The warning for audio recorded below the feature rate: its upper band is empty, silently."""
    # The advice names the audio's own rate: any higher feature rate leaves bands empty again.
    advice = (f"for such audio train a UBM at --sample-rate {native_rate}" if native_rate >= MIN_SAMPLE_RATE
              else f"features need audio of at least {MIN_SAMPLE_RATE} Hz")
    return (f"{path}: recorded at {native_rate} Hz, below the model's {feature_rate} Hz features, so the bands "
            f"above {native_rate // 2} Hz are empty and scores suffer; {advice} (further files like this are not "
            "reported)")


def iter_features(items, config: FeatureConfig, workers: int | None = None):
    """Yield ``(item, features, error, native rate)`` for each item, in order.

    ``error`` is the one-line message of a bad file (``features`` is then
    None), so the caller decides whether to stop or skip it.
    """
    workers = workers or default_workers()
    jobs = [(group, config) for group in recording_groups(items)]
    if workers <= 1 or len(jobs) < MIN_FILES_FOR_WORKERS:
        yield from _per_item(jobs, map(_features_or_error, jobs))
        return

    with ProcessPoolExecutor(workers, mp_context=process_context(), initializer=init_worker_process) as pool:
        chunk = max(1, min(64, len(jobs) // (8 * workers)))
        yield from _per_item(jobs, pool.map(_features_or_error, jobs, chunksize=chunk))


def _per_item(jobs, results):
    """``(item, features, error, native rate)`` of each item of each job, in order."""
    for (group, _), group_results in zip(jobs, results):
        for item, result in zip(group, group_results):
            yield (item, *result)


def checked_features(items, config: FeatureConfig, *, run: RunOptions = RunOptions()):
    """Yield ``(item, features or None)`` for every item, in order; None for a bad file that was skipped.

    A bad file raises :class:`SpkverError`, or with ``run.skip_bad`` is
    passed to ``run.on_skip`` (its one-line message). Features are
    (n_speech_frames, ``config.dim``) float32 arrays.

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
                run.note(low_rate_message(item.where, native_rate, config.sample_rate))
                warned = True
            if run.on_detail is not None:
                run.on_detail(f"{item.key}: {len(frames)} speech frames")
            yield item, frames
            continue
        if not run.skip_bad:
            raise SpkverError(error)
        if run.on_skip is not None:
            run.on_skip(error)
        yield item, None


def usable_features(items, config: FeatureConfig, *, run: RunOptions = RunOptions()):
    """Yield ``(item, features)`` of each good recording, in order (:func:`checked_features` without the
    skipped ones)."""
    for item, frames in checked_features(items, config, run=run):
        if frames is not None:
            yield item, frames


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
