"""The three stages as library calls: train a UBM, enroll a speaker, verify.

Each returns plain objects (models, results); saving and printing are the
caller's. The CLI is a thin layer over these.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spkver import __version__
from spkver.adapt import DEFAULT_ADAPT, map_adapt
from spkver.audio import native_sample_rate
from spkver.corpus import default_workers, extract_all
from spkver.engine import Engine
from spkver.errors import SpkverError
from spkver.featstore import FeatureStore
from spkver.features import TELEPHONE_RATE, FeatureConfig, feature_rate_for
from spkver.gmm import GMM, accumulate, train
from spkver.models import Model, load_checkpoint, save_checkpoint, validate_speaker_id
from spkver.scoring import Scorer, checked_scores
from spkver.threads import single_blas_thread

# EM needs several frames per Gaussian to estimate 2·D+1 parameters sensibly.
MIN_FRAMES_PER_COMPONENT = 10
# --components auto: one component per this many speech frames (nearest power of two), within
# these bounds. Measured on short clips and long recordings at 8 and 16 kHz (README).
FRAMES_PER_COMPONENT = 800
AUTO_COMPONENTS = (16, 2048)


def auto_components(n_frames: int) -> int:
    """The default number of components: the power of two nearest ``n_frames / 800``, from 16 to 2048.

    Fewer than 16 only when there are fewer than 160 frames (at least 10 frames per component).
    """
    low, high = AUTO_COMPONENTS
    k = 2 ** round(math.log2(max(n_frames / FRAMES_PER_COMPONENT, 1)))
    k = min(max(k, low), high)
    while k > 1 and k * MIN_FRAMES_PER_COMPONENT > n_frames:
        k //= 2
    return k


def components_for(n_frames: int, requested, allow_fewer: bool) -> int:
    """The number of components to train (``requested``, or :func:`auto_components` for None).

    Raises SpkverError when the data is too short for the number requested.
    """
    if requested is None:
        requested = auto_components(n_frames)
        if requested * MIN_FRAMES_PER_COMPONENT <= n_frames:
            return requested
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


# Every UBM stores a cohort for S-norm (``spkver score``): this many segments of its own speech,
# evenly spread over the training frames, each as long as a typical test (README: measured).
COHORT_SEGMENTS = 100
COHORT_SECONDS = 3.0


def cohort_segments(arrays, n_segments=COHORT_SEGMENTS, segment_frames=300) -> list:
    """``n_segments`` stretches of ``segment_frames`` consecutive frames, evenly spaced over ``arrays``.

    The arrays are read as one sequence, so a segment may join the end of one
    recording to the start of the next. Fewer segments when the frames run
    short; none when there are not two. Returned as float16 (as stored).

    Returns
    -------
    list of numpy.ndarray, each (segment_frames, D), float16
    """
    offsets = np.concatenate([[0], np.cumsum([len(a) for a in arrays])])
    n = min(n_segments, int(offsets[-1]) // segment_frames)
    if n < 2:
        return []
    segments = []
    for start in np.linspace(0, offsets[-1] - segment_frames, n).round().astype(np.int64):
        pieces, position, stop = [], start, start + segment_frames
        while position < stop:
            index = int(np.searchsorted(offsets, position, side="right")) - 1
            take = min(stop, offsets[index + 1]) - position
            pieces.append(np.asarray(arrays[index][position - offsets[index] : position - offsets[index] + take]))
            position += take
        segments.append(np.concatenate(pieces).astype(np.float16))
    return segments


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


def default_feature_config(items, probe_limit=1000) -> tuple[FeatureConfig, str]:
    """The default features for training audio: :func:`spkver.features.feature_rate_for` its native rates.

    Reads the headers of at most ``probe_limit`` recordings, evenly spread.
    Returns the config and a sentence saying why, for the log.
    """
    items = list(items)
    sample = items[:: max(1, -(-len(items) // probe_limit))]
    rates = [native_sample_rate(item.path) for item in sample]
    rate = feature_rate_for(rates)
    known = [r for r in rates if r]
    narrow = sum(r <= TELEPHONE_RATE for r in known)
    why = (f"feature rate {rate} Hz: {narrow} of {len(known)} training recordings"
           f"{' read' if len(known) < len(items) else ''} are telephone-band (at most {TELEPHONE_RATE} Hz)")
    return FeatureConfig(sample_rate=rate), why


def checkpoint_writer(path, identity, on_note=None):
    """A callback writing each EM state to ``path``; when that fails (disk full, read-only), training
    goes on without checkpoints after one warning, since the model itself may still be writable."""
    failed = []

    def write(state):
        if failed:
            return
        try:
            save_checkpoint(path, state, identity)
        except SpkverError as exc:
            failed.append(exc)
            if on_note:
                on_note(f"{exc}; training goes on without checkpoints (--resume will not be possible)")

    return write


def train_ubm(items, config: FeatureConfig | None = None, n_components=None, iterations=20,
              init="kmeans", seed=0, tol=1e-4, variance_floor_ratio=1e-3, workers=None,
              skip_bad=False, allow_fewer_components=False, on_skip=None, progress=None,
              on_iteration=None, on_note=None, cache_dir=None, features_dir=None, scheduler=None,
              checkpoint=None, resume=False, on_log=None, cohort_size=COHORT_SEGMENTS) -> Model:
    """Train a universal background model on the speech of ``items``.

    Parameters mirror ``spkver train-ubm``; see :func:`spkver.gmm.train` for
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


def check_adapted(ubm: GMM, adapted: GMM, stats) -> GMM:
    """The guard on speaker models: one that equals its UBM would score 0 for everyone, so it is refused."""
    if (np.array_equal(adapted.means, ubm.means) and np.array_equal(adapted.weights, ubm.weights)
            and np.array_equal(adapted.variances, ubm.variances)):
        raise SpkverError(f"the enrollment audio did not move the UBM ({stats.n_frames} speech frames, "
                          f"{float(stats.zeroth.sum()):.3g} assigned to components): nothing to tell this speaker "
                          "from anyone else")
    return adapted


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
    ratios (compare with :func:`spkver.metrics.bayes_threshold`). ``on_note``
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
