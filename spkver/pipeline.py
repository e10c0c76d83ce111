"""The three stages as library calls: train a UBM, enroll a speaker, verify.

Each returns plain objects (models, results); saving and printing are the
caller's. The CLI is a thin layer over these.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spkver import __version__
from spkver.adapt import map_adapt
from spkver.corpus import default_workers, extract_all
from spkver.engine import Engine
from spkver.errors import SpkverError
from spkver.featstore import FeatureStore
from spkver.features import FeatureConfig
from spkver.gmm import accumulate, train
from spkver.models import Model, load_checkpoint, save_checkpoint, validate_speaker_id
from spkver.scoring import Scorer

# EM needs several frames per Gaussian to estimate 2·D+1 parameters sensibly.
MIN_FRAMES_PER_COMPONENT = 10


def components_for(n_frames: int, requested: int, allow_fewer: bool) -> int:
    """The number of components to train, or a clear error when data is short."""
    needed = requested * MIN_FRAMES_PER_COMPONENT
    if n_frames >= needed:
        return requested
    if allow_fewer and n_frames >= MIN_FRAMES_PER_COMPONENT:
        return max(1, n_frames // MIN_FRAMES_PER_COMPONENT)
    raise SpkverError(
        f"{n_frames} speech frames are too few for {requested} components: need at least {needed} "
        f"({MIN_FRAMES_PER_COMPONENT} per component); give more audio, lower --components, "
        "or pass --allow-fewer-components"
    )


def data_identity(arrays) -> str:
    """Hash of training frames (shapes and bytes), to tie checkpoints to their data."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(str(array.shape).encode())
        digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()[:20]


def training_frames(items, config, workers=None, skip_bad=False, on_skip=None, progress=None,
                    cache_dir=None, features_dir=None):
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
        kept = store.extract(items, workers, skip_bad, on_skip, progress)
        return [a for _, a in kept], [store.file(store.key(i.path)) for i, _ in kept], config
    extracted = extract_all(items, config, workers, skip_bad, on_skip, progress)
    return [frames for _, frames in extracted], None, config


def train_ubm(items, config: FeatureConfig = FeatureConfig(), n_components=512, iterations=20,
              init="kmeans", seed=0, tol=1e-4, variance_floor_ratio=1e-3, workers=None,
              skip_bad=False, allow_fewer_components=False, on_skip=None, progress=None,
              on_iteration=None, on_note=None, cache_dir=None, features_dir=None, scheduler=None,
              checkpoint=None, resume=False) -> Model:
    """Train a universal background model on the speech of ``items``.

    Parameters mirror ``spkver train-ubm``; see :func:`spkver.gmm.train` for
    the EM settings. ``on_note`` receives warnings (fewer components,
    re-seeded components). With ``features_dir`` the frames come from a
    feature store (``items`` is ignored); with ``cache_dir`` extracted
    features are kept there for later runs. ``checkpoint`` is a file written
    after every EM iteration; ``resume`` continues from it.
    """
    arrays, paths, config = training_frames(items, config, workers, skip_bad, on_skip, progress,
                                            cache_dir, features_dir)
    n_frames = sum(len(a) for a in arrays)
    k = components_for(n_frames, n_components, allow_fewer_components)
    if k != n_components and on_note:
        on_note(f"training {k} components instead of {n_components}: only {n_frames} speech frames")
    identity = "|".join(map(str, [data_identity(arrays), k, init, seed, tol, variance_floor_ratio]))
    state = load_checkpoint(checkpoint, identity) if checkpoint and resume else None
    if resume and state is None and on_note:
        on_note("no matching checkpoint to resume from; starting from the beginning")
    elif state is not None and on_note:
        on_note(f"resuming after EM iteration {state.step}")
    save = (lambda s: save_checkpoint(checkpoint, s, identity)) if checkpoint else None
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
    return Model(result.gmm, "ubm", config, meta)


def enroll(ubm: Model, items, speaker: str, relevance=16.0, adapt="m", workers=None,
           skip_bad=False, on_skip=None, progress=None) -> Model:
    """MAP-adapt ``ubm`` to the speech of ``items``; returns the speaker model."""
    validate_speaker_id(speaker)
    extracted = extract_all(items, ubm.feature_config, workers, skip_bad, on_skip, progress)
    arrays = [frames for _, frames in extracted]
    stats = accumulate(ubm.gmm, arrays, dtype=np.float64)
    floor = ubm.gmm.variances.min(axis=0) * 1e-2
    gmm = map_adapt(ubm.gmm, stats, relevance, adapt, variance_floor=floor)
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
           skip_bad=False, on_skip=None, progress=None, calibration=None) -> list[Trial]:
    """Score each recording against each speaker model; accept when score ≥ threshold.

    With ``calibration`` (fitted on raw scores) the scores are log-likelihood
    ratios (compare with :func:`spkver.metrics.bayes_threshold`).
    """
    if calibration is not None:
        calibration.require("none")
    extracted = extract_all(items, ubm.feature_config, workers, skip_bad, on_skip, progress)
    scorer = Scorer(ubm.gmm, [s.gmm for s in speakers], top_c)
    trials = []
    for item, frames in extracted:
        scores = scorer.scores(frames)
        if calibration is not None:
            scores = calibration(scores)
        for model, score in zip(speakers, scores):
            trials.append(
                Trial(model.meta["speaker"], str(item.path), float(score), bool(score >= threshold), len(frames))
            )
    return trials
