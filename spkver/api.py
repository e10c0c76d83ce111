"""The stages as library calls: train a UBM, enroll a speaker, verify, score trial lists, identify.

Each returns plain objects (models, results); saving and printing are the
caller's. The CLI is a thin layer over these.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spkver import __version__
from spkver.audio.sources import AudioItem
from spkver.backend.scorenorm import (
    COHORT_SECONDS,
    COHORT_SEGMENTS,
    Cohort,
    cohort_segments,
    cohort_statistics,
    describe_normalisation,
    normalise_scores,
)
from spkver.backend.scoring import Scorer, checked_scores
from spkver.errors import SpkverError
from spkver.features.config import FeatureConfig, default_feature_config
from spkver.features.extraction import extract_all, usable_features
from spkver.features.store import FeatureStore
from spkver.fileio import file_identity
from spkver.gmm.em import AUTO_COMPONENTS, FRAMES_PER_COMPONENT, components_for, train
from spkver.gmm.engine import Engine
from spkver.gmm.estep import accumulate
from spkver.gmm.map import DEFAULT_ADAPT, check_adapted, map_adapt
from spkver.run import default_workers, single_blas_thread
from spkver.storage.models import Model, checkpoint_writer, load_checkpoint
from spkver.storage.speakers import SpeakerStore, validate_speaker_id


def data_identity(arrays) -> str:
    """Hash of training frames (shapes and bytes), to tie checkpoints to their data."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(str(array.shape).encode())
        digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()[:20]


def training_frames(items, config, workers=None, skip_bad=False, on_skip=None, progress=None,
                    cache_dir=None, features_dir=None, on_note=None):
    """Training frames from a feature store, a cache, or extraction in memory.

    Returns
    -------
    arrays : list of numpy.ndarray
        Memory-mapped when they come from a store.
    paths : list of Path or None
        The ``.npy`` files behind ``arrays`` (for distributed training).
    config : FeatureConfig
        The store's settings when ``features_dir`` is given, else ``config``.
    """
    if features_dir is not None:
        store = FeatureStore(features_dir)
        return store.arrays(), store.paths(), store.config
    if cache_dir is not None:
        store = FeatureStore(Path(cache_dir) / f"features-{config.fingerprint()}", config)
        kept = store.extract(items, workers, skip_bad, on_skip, progress, on_note)
        return [a for _, a in kept], [store.file(store.key(i.path)) for i, _ in kept], config
    extracted = extract_all(items, config, workers, skip_bad, on_skip, progress, on_note)
    return [frames for _, frames in extracted], None, config


def train_ubm(items, config: FeatureConfig | None = None, n_components=None, iterations=20,
              init="kmeans", seed=0, tol=1e-4, variance_floor_ratio=1e-3, workers=None,
              skip_bad=False, allow_fewer_components=False, on_skip=None, progress=None,
              on_iteration=None, on_note=None, cache_dir=None, features_dir=None, scheduler=None,
              checkpoint=None, resume=False, on_log=None, cohort_size=COHORT_SEGMENTS) -> Model:
    """Train a universal background model on the speech of ``items``.

    Parameters mirror ``spkver train-ubm``; see :func:`spkver.gmm.em.train` for
    the EM settings. ``config`` None takes :func:`default_feature_config`;
    ``n_components`` None takes :func:`auto_components` of the speech frames.
    ``on_note`` receives warnings (fewer components, re-seeded components,
    audio below the feature rate); ``on_log`` the choices made (feature rate,
    number of components). With ``features_dir`` the frames come from a
    feature store (``items`` is ignored); with ``cache_dir`` extracted
    features are kept there for later runs. ``checkpoint`` is a file written
    after every EM iteration; ``resume`` continues from it. The UBM keeps
    ``cohort_size`` segments of its training speech (:func:`cohort_segments`)
    for score normalisation; 0 keeps none.
    """
    if config is None and features_dir is None:
        config, why = default_feature_config(items)
        if on_log:
            on_log(why)
    arrays, paths, config = training_frames(items, config, workers, skip_bad, on_skip, progress,
                                            cache_dir, features_dir, on_note)
    n_frames = sum(len(a) for a in arrays)
    k = components_for(n_frames, n_components, allow_fewer_components)
    if n_components is None and on_log:
        on_log(f"components: {k} (auto: the power of two nearest one per {FRAMES_PER_COMPONENT} of "
               f"{n_frames} speech frames, {AUTO_COMPONENTS[0]}-{AUTO_COMPONENTS[1]})")
    elif k != n_components and on_note:
        on_note(f"training {k} components instead of {n_components}: only {n_frames} speech frames")
    identity = "|".join(map(str, [data_identity(arrays), k, init, seed, tol, variance_floor_ratio]))
    state = load_checkpoint(checkpoint, identity) if checkpoint and resume else None
    if resume and state is None and on_note:
        on_note("no matching checkpoint to resume from; starting from the beginning")
    elif state is not None and state.step > iterations:
        raise SpkverError(f"checkpoint holds {state.step} iterations, more than --iterations {iterations}: raise "
                          "--iterations, or run without --resume to start over", checkpoint)
    elif state is not None and on_note:
        on_note(f"resuming after EM iteration {state.step}")
    save = checkpoint_writer(checkpoint, identity, on_note) if checkpoint else None
    with Engine(arrays, workers or default_workers(), scheduler, paths) as engine:
        result = train(arrays, k, iterations, init, seed, tol, variance_floor_ratio,
                       on_iteration=on_iteration, engine=engine, resume=state, on_checkpoint=save)
    if checkpoint:
        Path(checkpoint).unlink(missing_ok=True)
    if result.reseeded and on_note:
        on_note(f"{result.reseeded} components lost their frames and were re-seeded")
    meta = {
        "training": {
            "files": len(arrays),
            "frames": n_frames,
            "components": k,
            "iterations": len(result.history) - 1,
            "converged": result.converged,
            "average_log_likelihood": result.history[-1],
            "log_likelihood_history": result.history,
            "init": init,
            "seed": seed,
            "tolerance": tol,
            "variance_floor_ratio": variance_floor_ratio,
            "reseeded_components": result.reseeded,
            "spkver_version": __version__,
        }
    }
    segment_frames = int(round(COHORT_SECONDS * 1000 / config.hop_ms))
    return Model(result.gmm, "ubm", config, meta, cohort_segments(arrays, cohort_size, segment_frames))


def enroll(ubm: Model, items, speaker: str, relevance=16.0, adapt=DEFAULT_ADAPT, workers=None,
           skip_bad=False, on_skip=None, progress=None, on_note=None) -> Model:
    """MAP-adapt ``ubm`` to the speech of ``items``; returns the speaker model.

    ``on_note`` receives a warning when audio was recorded below the UBM's feature rate.
    """
    validate_speaker_id(speaker)
    extracted = extract_all(items, ubm.feature_config, workers, skip_bad, on_skip, progress, on_note)
    arrays = [frames for _, frames in extracted]
    with single_blas_thread():  # the same statistics, so the same model, on any number of cores
        stats = accumulate(ubm.gmm, arrays, dtype=np.float64)
    floor = ubm.gmm.variances.min(axis=0) * 1e-2
    gmm = check_adapted(ubm.gmm, map_adapt(ubm.gmm, stats, relevance, adapt, variance_floor=floor), stats)
    meta = {
        "speaker": speaker,
        "relevance": relevance,
        "adapt": adapt,
        "ubm_fingerprint": ubm.fingerprint,
        "training": {
            "files": len(arrays),
            "frames": stats.n_frames,
            "average_log_likelihood_ubm": stats.average_log_likelihood,
            "spkver_version": __version__,
        },
    }
    return Model(gmm, "speaker", ubm.feature_config, meta)


@dataclass
class Trial:
    """One verification answer."""

    speaker: str
    path: str
    score: float
    accepted: bool
    frames: int


def verify(ubm: Model, speakers, items, threshold=0.0, top_c=5, workers=None,
           skip_bad=False, on_skip=None, progress=None, calibration=None, on_note=None) -> list[Trial]:
    """Score each recording against each speaker model; accept when score ≥ threshold.

    With ``calibration`` (fitted on raw scores) the scores are log-likelihood
    ratios (compare with :func:`spkver.backend.metrics.bayes_threshold`). ``on_note``
    receives a warning when audio was recorded below the UBM's feature rate.
    """
    if calibration is not None:
        calibration.require("none")
    extracted = extract_all(items, ubm.feature_config, workers, skip_bad, on_skip, progress, on_note)
    scorer = Scorer(ubm.gmm, [s.gmm for s in speakers], top_c)
    trials = []
    for item, frames in extracted:
        scores = checked_scores(scorer.scores(frames), item.path)
        if calibration is not None:
            scores = calibration(scores)
        for model, score in zip(speakers, scores):
            trials.append(
                Trial(model.meta["speaker"], str(item.path), float(score), bool(score >= threshold), len(frames))
            )
    return trials


def _load_speakers(ubm, store: SpeakerStore, trials, skip_bad, on_skip, source):
    models = {}
    for trial in trials:
        if trial.speaker in models:
            continue
        try:
            models[trial.speaker] = store.load(trial.speaker, ubm)
        except SpkverError as exc:
            message = f"line {trial.line}: speaker {trial.speaker!r}: {exc}"
            if not skip_bad:
                raise SpkverError(message, source) from None
            models[trial.speaker] = None
            if on_skip:
                on_skip(f"{source}: {message}")
    return models


def _test_features(ubm, trials, workers, skip_bad, on_skip, progress, on_note=None):
    """Features of each distinct test file, extracted once, in parallel."""
    distinct = {}
    for trial in trials:
        distinct.setdefault(str(trial.path), AudioItem(trial.test, trial.path, f"trials line {trial.line}"))
    good = usable_features(distinct.values(), ubm.feature_config, workers, skip_bad, on_skip, progress, on_note)
    return {str(item.path): frames for item, frames in good}


@dataclass
class ScoredTrial:
    speaker: str
    test: str
    score: float
    label: bool | None


def score_trials(ubm: Model, store: SpeakerStore, trials, top_c=5, norm="none", cohort: Cohort | None = None,
                 top_n=None, calibration=None, workers=None, skip_bad=False, on_skip=None, progress=None,
                 source="trials", on_note=None) -> list[ScoredTrial]:
    """Score every trial; each test file is read and scored against the UBM once.

    Parameters
    ----------
    norm : {"none", "z", "t", "s"}
        Score normalisation against ``cohort`` (required unless ``"none"``).
    top_n : int, optional
        Adaptive normalisation: cohort statistics from the N highest cohort scores.
    calibration : Calibration, optional
        Maps the (normalised) scores to log-likelihood ratios.
    """
    if norm != "none" and cohort is None:
        raise SpkverError(f"--norm {norm} needs --cohort")
    if calibration is not None:
        calibration.require(describe_normalisation(norm, top_n))
    models = _load_speakers(ubm, store, trials, skip_bad, on_skip, source)
    features = _test_features(ubm, trials, workers, skip_bad, on_skip, progress, on_note)
    by_file = {}
    for index, trial in enumerate(trials):
        if models[trial.speaker] is not None and features.get(str(trial.path)) is not None:
            by_file.setdefault(str(trial.path), []).append(index)
    loaded = sorted(name for name, model in models.items() if model is not None)
    column = {name: i for i, name in enumerate(loaded)}
    scorer = Scorer(ubm.gmm, [models[name].gmm for name in loaded], top_c)
    z_stats = None
    if norm in ("z", "s") and loaded:
        z_stats = cohort_statistics(cohort.z_scores([models[name] for name in loaded]), top_n)
    scores = {}
    for path, indices in by_file.items():
        frames = features[path]
        columns = np.array([column[trials[i].speaker] for i in indices])
        # Only this file's claimed speakers: Kaldi trial lists often pair a file with a few models.
        raw = checked_scores(scorer.scores(frames, columns), path)
        z = t = None
        if z_stats is not None:
            z = (z_stats[0][columns], z_stats[1][columns])
        if norm in ("t", "s"):
            mean, std = cohort_statistics(cohort.t_scores(file_identity(path), frames), top_n)
            t = (mean[0], std[0])
        final = normalise_scores(raw, norm, z, t)
        if calibration is not None:
            final = calibration(final)
        scores.update(zip(indices, final.tolist()))
    if cohort is not None:
        cohort.save(on_note)
    return [ScoredTrial(t.speaker, t.test, scores[i], t.label) for i, t in enumerate(trials) if i in scores]


@dataclass
class Identification:
    path: str
    decision: str
    ranking: list


def identify(ubm: Model, speakers, items, top=3, threshold=None, top_c=5, workers=None, skip_bad=False,
             on_skip=None, progress=None, calibration=None, on_note=None) -> list[Identification]:
    """Rank enrolled speakers for each recording; ``unknown`` when the best is below ``threshold``."""
    if not speakers:
        raise SpkverError("no speakers are enrolled in the model store")
    if calibration is not None:
        calibration.require("none")
    scorer = Scorer(ubm.gmm, [s.gmm for s in speakers], top_c)
    answers = []
    for item, frames in usable_features(items, ubm.feature_config, workers, skip_bad, on_skip, progress, on_note):
        scores = checked_scores(scorer.scores(frames), item.path)
        if calibration is not None:
            scores = calibration(scores)
        order = np.argsort(-scores, kind="stable")[: max(1, top)]
        ranking = [(speakers[i].meta["speaker"], float(scores[i])) for i in order]
        best_name, best_score = ranking[0]
        decision = best_name if threshold is None or best_score >= threshold else "unknown"
        answers.append(Identification(str(item.path), decision, ranking))
    return answers
