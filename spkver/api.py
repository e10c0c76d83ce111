"""The stages as library calls: train a UBM, enroll speakers, verify, score trial lists, identify.

Each returns plain objects (models, scores); saving and printing are the
caller's. The CLI is a thin layer over these. Options are keyword-only; how
a stage runs over many recordings (worker processes, bad files, progress,
warnings) is one :class:`~spkver.run.RunOptions`, passed as ``run=``.

Examples
--------
The whole pipeline on a small synthetic corpus:

>>> from spkver import RunOptions, enroll, find_audio, train_ubm, verify
>>> from spkver.synth import example_corpus
>>> corpus = example_corpus()
>>> run = RunOptions(workers=1)
>>> ubm = train_ubm(find_audio([corpus / "background"]), n_components=8, iterations=3, run=run)
>>> alice = enroll(ubm, find_audio([corpus / "enroll" / "alice"]), "alice", run=run)
>>> scores = verify(ubm, [alice], find_audio([corpus / "test"]), run=run)
>>> [(s.speaker, s.test.split("/")[-2], s.accepted) for s in scores]  # doctest: +NORMALIZE_WHITESPACE
[('alice', 'alice', True), ('alice', 'alice', True), ('alice', 'bob', False), ('alice', 'bob', False)]
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from spkver import __version__
from spkver.audio.sources import AudioItem
from spkver.backend.calibration import Calibration
from spkver.backend.scorenorm import (
    COHORT_SECONDS,
    COHORT_SEGMENTS,
    Cohort,
    cohort_segments,
    describe_normalisation,
    normalise_scores,
)
from spkver.backend.scoring import SystemsScorer, checked_scores
from spkver.errors import SpkverError
from spkver.features.config import FeatureConfig, default_feature_config
from spkver.features.extraction import checked_features, extract_all, usable_features
from spkver.features.store import FeatureStore, cache_store_path
from spkver.fileio import array_parts, sha256_hex
from spkver.gmm.channels import (
    CHANNEL_ITERATIONS,
    DEFAULT_CHANNEL_FACTORS,
    MAX_CHANNEL_FACTORS,
    channel_degrees_of_freedom,
    channel_training_recordings,
    train_channels,
)
from spkver.gmm.em import AUTO_COMPONENTS, FRAMES_PER_COMPONENT, components_for, train
from spkver.gmm.engine import Engine
from spkver.gmm.map import DEFAULT_ADAPT, adapt_views
from spkver.ivector import DEFAULT_RANK, DEFAULT_SEGMENT_SECONDS, DEFAULT_WCCN
from spkver.ivector.backend import IvectorBackend
from spkver.run import RunOptions, default_workers, single_blas_thread
from spkver.storage.models import Model, checkpoint_writer, load_checkpoint, system_summary, ubm_checkpoint_writer
from spkver.storage.speakers import SpeakerStore, validate_speaker_id
from spkver.storage.trials import Score, Trial

DEFAULT_RUN = RunOptions()


def data_identity(arrays) -> str:
    """Hash of training frames (shapes and bytes), to tie checkpoints to their data."""
    return sha256_hex(array_parts(arrays), 20)


def training_frames(items, config, *, run: RunOptions = DEFAULT_RUN, cache_dir=None, features_dir=None):
    """Training frames from a feature store, a cache, or extraction in memory.

    Returns
    -------
    arrays : list of numpy.ndarray, each (n_i, D)
        Memory-mapped when they come from a store.
    paths : list of Path or None
        The ``.npy`` files behind ``arrays`` (for distributed training).
    config : FeatureConfig
        The store's settings when ``features_dir`` is given, else ``config``.
    """
    return _training_frames(items, config, run, cache_dir, features_dir)[:3]


def _labels_of(kept, items, labels) -> list:
    """The labels of the ``kept`` items (a subset of ``items``, in any order). Keyed by the item itself, not its
    audio: two utterances of one file (a wav.scp naming it twice) may have two speakers."""
    label_of = {id(item): label for item, label in zip(items, labels, strict=True)}
    return [label_of[id(item)] for item in kept]


def _training_frames(items, config, run, cache_dir, features_dir):
    """:func:`training_frames`, and the items kept (None from a feature store)."""
    if features_dir is not None:
        store = FeatureStore(features_dir)
        return store.arrays(), store.paths(), store.config, None
    if cache_dir is not None:
        store = FeatureStore(cache_store_path(cache_dir, config), config)
        kept = store.extract(items, run=run)
        return [a for _, a in kept], [store.file(store.key(i)) for i, _ in kept], config, [i for i, _ in kept]
    extracted = extract_all(items, config, run=run)
    return [frames for _, frames in extracted], None, config, [i for i, _ in extracted]


def train_ubm(items, *, config: FeatureConfig | None = None, n_components: int | None = None, iterations: int = 20,
              init: str = "kmeans", seed: int = 0, tol: float = 1e-4, variance_floor_ratio: float = 1e-3,
              allow_fewer_components: bool = False, cache_dir=None, features_dir=None, scheduler: str | None = None,
              checkpoint=None, resume: bool = False, restart: bool = False, cohort_size: int = COHORT_SEGMENTS,
              labels=None, channel_factors: int | None = None, on_iteration=None, on_log=None,
              run: RunOptions = DEFAULT_RUN) -> Model:
    """Train a universal background model on the speech of ``items``.

    Parameters
    ----------
    items : list of AudioItem
        The training recordings (:func:`~spkver.audio.sources.find_audio`);
        ignored with ``features_dir``.
    config : FeatureConfig, optional
        Feature settings; None takes :func:`~spkver.features.config.default_feature_config`
        of the audio (8 kHz features for telephone-band audio, else 16 kHz).
    n_components : int, optional
        Gaussians; None takes :func:`~spkver.gmm.em.auto_components` of the
        speech frames (about one per 800 frames, a power of two from 16 to 2048).
    iterations, init, seed, tol, variance_floor_ratio
        EM settings; see :func:`spkver.gmm.em.train`. The same data and seed
        give a byte-identical model whatever ``run.workers``.
    allow_fewer_components : bool
        With too little speech, train fewer components instead of failing.
    cache_dir : path, optional
        Keep extracted features there for later runs (a feature store per setting).
    features_dir : path, optional
        Train on a feature store made by ``spkver extract`` instead of ``items``.
    scheduler : str, optional
        Address of a Dask scheduler that computes the EM statistics.
    checkpoint : path, optional
        A file written after every EM iteration, removed when training ends.
    resume : bool
        Continue from ``checkpoint``'s EM state. The checkpoint must come from
        a run with the same data and settings (else SpkverError naming what
        differs, unless ``restart``); without one, training starts afresh.
    restart : bool
        Start over even when ``checkpoint`` holds an interrupted run's state
        (without ``resume`` or ``restart``, an existing checkpoint is an error
        rather than silently overwritten).
    cohort_size : int
        Segments of the training speech the UBM keeps for score normalisation
        (:func:`~spkver.backend.scorenorm.cohort_segments`); 0 keeps none.
    labels : list of str, optional
        The speaker of each item. With speakers that have several recordings,
        the UBM also learns channel factors (:mod:`spkver.gmm.channels`),
        which enrollment and scoring then remove from every recording.
    channel_factors : int, optional
        How many per system; None takes
        :data:`~spkver.gmm.channels.DEFAULT_CHANNEL_FACTORS` when ``labels``
        allow it and none otherwise; 0 learns none.
    on_iteration : callable, optional
        Called as ``on_iteration(step, average_log_likelihood, relative_gain)``.
    on_log : callable, optional
        Receives the choices made (feature rate, number of components).
    run : RunOptions
        Workers, bad files, progress, warnings (``run.on_note``: fewer
        components, re-seeded components, audio below the feature rate).

    Returns
    -------
    Model
        ``kind == "ubm"``; ``model.gmms`` holds one mixture per system of
        ``config.norm`` (``model.gmm`` is the first), each with (K,) weights
        and (K, D) means and variances, D = ``config.system_dim``;
        ``model.cohort`` the kept segments ((n_i, ``config.dim``) each),
        ``model.meta["training"]`` a summary (``"systems"``: each system's,
        when there are several).

    Raises
    ------
    SpkverError
        Bad audio (unless ``run.skip_bad``), too little speech, a damaged checkpoint.

    Examples
    --------
    >>> from spkver import RunOptions, find_audio, train_ubm
    >>> from spkver.synth import example_corpus
    >>> corpus, run = example_corpus(), RunOptions(workers=1)
    >>> ubm = train_ubm(find_audio([corpus / "background"]), n_components=8, iterations=3, run=run)
    >>> ubm.kind, ubm.gmm.n_components, ubm.gmm.dim, ubm.feature_config.sample_rate
    ('ubm', 8, 124, 16000)
    """
    on_note = run.on_note
    _check_training_run(scheduler, cache_dir, features_dir, checkpoint, resume, restart)
    if labels is not None and (features_dir is not None or len(labels) != len(items)):
        raise ValueError("labels must name the speaker of every item (and cannot go with features_dir)")
    if channel_factors and labels is None:
        how = ("a --features store names none: train from the audio with" if features_dir is not None
               else "give")
        raise SpkverError(f"channel factors need the speaker of every recording; {how} --data-dir with utt2spk, "
                          "--per-folder or --speaker-list")
    if config is None and features_dir is None:
        config, why = default_feature_config(items)
        if on_log:
            on_log(why)
    arrays, paths, config, kept = _training_frames(items, config, run, cache_dir, features_dir)
    kept_labels = None
    if labels is not None and channel_factors != 0:
        kept_labels = _labels_of(kept, items, labels)
        if channel_factors is not None:  # asked for: refuse before EM rather than after
            if channel_factors > MAX_CHANNEL_FACTORS:
                raise SpkverError(f"--channel-factors {channel_factors} is more than {MAX_CHANNEL_FACTORS}")
            if channel_degrees_of_freedom(kept_labels) < 1:
                raise SpkverError("channel factors need speakers with two or more recordings each; "
                                  "give more recordings per speaker or --channel-factors 0")
    n_frames = sum(len(a) for a in arrays)
    k = components_for(n_frames, n_components, allow_fewer_components)
    if n_components is None and on_log:
        on_log(f"components: {k} (auto: the power of two nearest one per {FRAMES_PER_COMPONENT} of "
               f"{n_frames} speech frames, {AUTO_COMPONENTS[0]}-{AUTO_COMPONENTS[1]})")
    elif k != n_components and on_note:
        on_note(f"training {k} components instead of {n_components}: only {n_frames} speech frames")
    # What a checkpoint must match to be resumed, named as the options that set it.
    identity = None if checkpoint is None else {  # hashing every frame is only worth it for a checkpoint
        "training data": data_identity(arrays), "feature settings": config.fingerprint(),
        "components": k, "init": init, "seed": seed, "tol": tol, "variance floor ratio": variance_floor_ratio}
    resumed = resumed_state(load_checkpoint, checkpoint, identity, resume, restart, iterations, "EM iteration",
                            on_note)
    asked = {s["max_iterations"] for s in resumed.summaries} if resumed is not None else set()
    if asked and asked != {iterations}:  # the systems finished before the interruption had another limit
        if not restart:
            raise SpkverError(f"is the checkpoint of a run with iterations {min(asked)} (now {iterations}), which "
                              "its finished systems were trained with: resume with the options it was started "
                              "with, or pass --force to start over", checkpoint)
        resumed = None
    if resumed is not None and (len(resumed.trained) >= len(config.views) or [
            s["norm"] for s in resumed.summaries] != list(config.norms[:len(resumed.trained)])):
        raise SpkverError(f"checkpoint is damaged (its trained systems do not fit the {len(config.views)} of "
                          f"{config.norm}); delete it, or pass --force to start over", checkpoint)
    trained = list(resumed.trained) if resumed is not None else []
    summaries = list(resumed.summaries) if resumed is not None else []
    save = None if identity is None else ubm_checkpoint_writer(checkpoint, identity, trained, summaries, on_note)
    for index in range(len(trained), len(config.views)):  # those before were finished by an interrupted run
        if len(config.views) > 1 and on_log:
            on_log(f"system {index + 1} of {len(config.views)}: cepstra normalised by {config.norms[index]}")
        state = resumed.state if resumed is not None and index == len(resumed.trained) else None
        # Every system starts from the same seed: each is the model a one-system run of its normalisation gives.
        view = config.views[index]
        with Engine(arrays, run.workers or default_workers(), scheduler, paths, columns=view) as engine:
            result = train(engine.arrays, k, iterations=iterations, init=init, seed=seed, tol=tol,
                           variance_floor_ratio=variance_floor_ratio, on_iteration=on_iteration, engine=engine,
                           resume=state, on_checkpoint=save)
        if result.reseeded and on_note:
            on_note(f"{result.reseeded} components lost their frames and were re-seeded")
        trained.append(result.gmm)
        summaries.append(system_summary(config.norms[index], result, iterations))
    # The first system's iterations, convergence, log-likelihoods and re-seeding, as one-system models have them.
    first = {key: value for key, value in summaries[0].items() if key not in ("norm", "max_iterations")}
    meta = {
        "training": {
            "files": len(arrays),
            "frames": n_frames,
            "components": k,
            **first,
            "init": init,
            "seed": seed,
            "tolerance": tol,
            "variance_floor_ratio": variance_floor_ratio,
            "spkver_version": __version__,
        }
    }
    if len(config.views) > 1:
        meta["training"]["systems"] = summaries
    channels: tuple = ()
    if kept_labels is not None:
        channels, learnt = _trained_channels(trained, config.views, arrays, kept_labels, channel_factors, on_log)
        if learnt is not None:
            meta["training"]["channels"] = learnt
    if checkpoint:  # only now: the EM work stays resumable until the model is complete
        Path(checkpoint).unlink(missing_ok=True)
    segment_frames = int(round(COHORT_SECONDS * 1000 / config.hop_ms))
    return Model(trained[0], "ubm", config, meta, cohort_segments(arrays, cohort_size, segment_frames),
                 further=tuple(trained[1:]), channels=channels)


def _trained_channels(gmms, views, arrays, labels, wanted: int | None, on_log) -> tuple[tuple, dict | None]:
    """Each system's eigenchannels from the labelled training ``arrays``, and their summary (None, with no
    channels, when no speaker has two recordings and ``wanted`` is None)."""
    available = channel_degrees_of_freedom(labels)
    rank = min(DEFAULT_CHANNEL_FACTORS if wanted is None else wanted, available)
    if rank < 1:  # only with auto: an asked-for number was checked before EM
        if on_log:
            on_log("channel factors: none (no speaker has two recordings)")
        return (), None
    if wanted is not None and rank < wanted and on_log:
        on_log(f"channel factors: {rank} instead of {wanted}: the recordings estimate at most {available}")
    with single_blas_thread():  # the same factors on any number of cores
        channels = tuple(train_channels(gmm, [a[:, view] for a in arrays], labels, rank,
                                        iterations=CHANNEL_ITERATIONS) for gmm, view in zip(gmms, views, strict=True))
    rank = min(u.shape[2] for u in channels)
    channels = tuple(u[:, :, :rank] for u in channels)
    used = [labels[i] for i in channel_training_recordings(labels, gmms)]
    speakers = len(set(used))
    if rank < 1:
        if on_log:
            on_log("channel factors: none (the recordings of each speaker do not vary)")
        return (), None
    if on_log:
        on_log(f"channel factors: {rank} per system, from {speakers} speakers with two or more recordings")
    return channels, {"rank": rank, "speakers": speakers, "recordings": len(used), "iterations": CHANNEL_ITERATIONS}


def _check_training_run(scheduler, cache_dir, features_dir, checkpoint, resume, restart) -> None:
    """Before any extraction: a cluster run cannot start without a shared store, a checkpoint is never overwritten."""
    if scheduler is not None:
        if cache_dir is None and features_dir is None:
            raise SpkverError("a Dask --scheduler reads features from a store on shared storage: give --features "
                              "or a --cache-dir every worker can read (not --no-cache)")
        try:
            import distributed  # noqa: F401
        except ImportError:
            raise SpkverError("--scheduler needs Dask: pip install 'spkver[distributed]'") from None
    if checkpoint is not None and Path(checkpoint).exists() and not (resume or restart):
        raise SpkverError("holds the state of an interrupted training run: continue it with --resume, or pass "
                          "--force to start over", checkpoint)


def resumed_state(load, checkpoint, identity, resume: bool, restart: bool, iterations: int, step_name: str,
                  on_note=None):
    """The training state to resume from ``checkpoint`` (read by ``load(path, identity)``), or None to start afresh.

    Only with ``resume``; a damaged or mismatched checkpoint is an error unless
    ``restart``; one holding more than ``iterations`` steps is an error.
    """
    state = None
    if identity is not None and resume:
        try:
            state = load(checkpoint, identity)
        except SpkverError:
            if not restart:
                raise
    if state is not None and state.step > iterations:
        raise SpkverError(f"checkpoint holds {state.step} iterations, more than --iterations {iterations}: raise "
                          "--iterations, or pass --force to start over", checkpoint)
    if on_note and resume:
        on_note(f"resuming after {step_name} {state.step}" if state is not None else
                "no checkpoint of this run to resume from; starting from the beginning")
    return state


def train_ivector(ubm: Model, items, *, labels=None, rank: int = DEFAULT_RANK, iterations: int = 10, seed: int = 0,
                  segment_seconds: float | None = DEFAULT_SEGMENT_SECONDS, lda_dim: int | None = None,
                  wccn: bool = DEFAULT_WCCN, scoring: str | None = None, cache_dir=None, scheduler: str | None = None,
                  checkpoint=None, resume: bool = False, restart: bool = False, on_iteration=None, on_log=None,
                  run: RunOptions = DEFAULT_RUN) -> IvectorBackend:
    """Train an i-vector back-end on ``ubm``: the total-variability matrix, then LDA/WCCN and PLDA or cosine.

    Parameters
    ----------
    ubm : Model
        The UBM whose posteriors align the frames.
    items : list of AudioItem
        Training recordings (the UBM's own audio is a good choice).
    labels : list of str, optional
        The speaker of each item; without labels (or with fewer than two
        speakers) the back-end scores by cosine similarity.
    rank : int
        Dimension R of the i-vectors.
    iterations : int
        EM iterations of the total-variability matrix.
    seed : int
        Seed of its random start; the same data and seed give the same back-end whatever ``run.workers``.
    segment_seconds : float or None
        Recordings with more than twice this much speech are cut into pieces of
        about this length, each an utterance of its speaker (long recordings
        give the matrix and PLDA sessions the length of typical tests); None keeps them whole.
    lda_dim : int, optional
        LDA to this many dimensions (at most speakers − 1) before PLDA; None: no LDA.
    wccn : bool
        Within-class covariance normalisation after LDA (on by default: it helped on 3 of the 4 protocols).
    scoring : {"plda", "cosine"}, optional
        None: PLDA when the labels allow it, else cosine.
    cache_dir, scheduler, checkpoint, resume, restart, on_iteration, on_log, run
        As for :func:`train_ubm`; ``on_iteration(step, log_likelihood_per_utterance, gain)``.

    Returns
    -------
    IvectorBackend
        ``backend.training`` summarises the run.

    Examples
    --------
    With the ``corpus``, ``run`` and ``ubm`` of :func:`train_ubm`'s example, labelled by folder:

    >>> from spkver import train_ivector
    >>> background = find_audio([corpus / "background"])
    >>> backend = train_ivector(ubm, background, labels=[i.path.parent.name for i in background], rank=4,
    ...                         iterations=2, run=run)
    >>> backend.tv.rank, backend.scoring
    (4, 'plda')
    """
    import tempfile

    from spkver.ivector.backend import fit_backend, plda_problem
    from spkver.ivector.extractor import TotalVariability, extract_ivectors
    from spkver.ivector.training import segments_of, train_extractor, write_statistics
    from spkver.storage.ivectors import load_tv_checkpoint, save_tv_checkpoint

    _check_training_run(scheduler, cache_dir, None, checkpoint, resume, restart)
    items = list(items)
    if labels is not None and len(labels) != len(items):
        raise ValueError("labels must name the speaker of every item")
    problem = plda_problem(labels or []) if scoring == "plda" else None
    if problem:  # now, not after hours of training
        raise SpkverError(f"{problem}: give more speakers, or cosine scoring")
    if labels is None:
        run.note("the training audio names no speakers: the back-end scores by cosine similarity (PLDA, LDA and "
                 "WCCN need speakers: a data folder's utt2spk, --per-folder or --speaker-list)")
    arrays, paths, _, kept = _training_frames(items, ubm.feature_config, run, cache_dir, None)
    segment_frames = None if not segment_seconds else max(1, round(segment_seconds * 1000 / ubm.feature_config.hop_ms))
    pieces = segments_of([len(a) for a in arrays], segment_frames)
    kept_labels = None if labels is None else _labels_of(kept, items, labels)
    piece_labels = None if kept_labels is None else [kept_labels[i] for i, _, _ in pieces]
    if on_log:
        on_log(f"i-vector training: {len(pieces)} utterances from {len(arrays)} recordings"
               + (f" (cut into about {segment_seconds:g} s of speech)" if len(pieces) > len(arrays) else "")
               + (f", {len(set(piece_labels))} speakers" if piece_labels is not None else ", no speaker labels"))
    identity = None if checkpoint is None else {
        "training data": data_identity(arrays), "ubm": ubm.fingerprint, "rank": rank, "seed": seed,
        "segment seconds": segment_seconds}
    state = resumed_state(load_tv_checkpoint, checkpoint, identity, resume, restart, iterations, "iteration",
                          run.on_note)
    save = checkpoint_writer(checkpoint, identity, run.on_note, save_tv_checkpoint) if identity is not None else None
    workers = run.workers or default_workers()
    folder = Path(cache_dir) if cache_dir is not None else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="spkver-ivector-", dir=folder) as scratch:
        stats_path = Path(scratch) / "statistics.npy"
        # The back-end models the first system's columns (all of them, for a one-system UBM).
        rows = write_statistics(ubm.gmm, arrays, pieces, stats_path, workers=workers, scheduler=scheduler,
                                paths=paths, columns=ubm.feature_config.views[0])
        k, d = ubm.gmm.n_components, ubm.gmm.dim
        result = train_extractor(rows, stats_path, k, d, rank=rank, iterations=iterations, seed=seed,
                                 workers=workers, scheduler=scheduler, state=state, on_iteration=on_iteration,
                                 on_checkpoint=save)
        # The stored matrix is float32: the back-end is fitted on what enrollment will use.
        tv = TotalVariability(result.tv.matrix.astype(np.float32), k, d)
        ivectors = extract_ivectors(tv, rows)
        del rows
    backend = fit_backend(tv, ivectors, piece_labels if piece_labels is not None else range(len(pieces)),
                          lda_dim=lda_dim, use_wccn=wccn, scoring=scoring if piece_labels is not None else "cosine",
                          on_note=run.on_note)
    if checkpoint:
        Path(checkpoint).unlink(missing_ok=True)
    backend.training = {
        "recordings": len(arrays), "utterances": len(pieces), "frames": int(sum(len(a) for a in arrays)),
        "speakers": None if piece_labels is None else len(set(piece_labels)), "rank": rank,
        "iterations": len(result.history) - 1, "log_likelihood_history": result.history, "seed": seed,
        "segment_seconds": segment_seconds, "lda_dim": None if backend.projection is None or not lda_dim
        else int(backend.projection.shape[1]), "wccn": wccn and piece_labels is not None, "scoring": backend.scoring,
        "spkver_version": __version__}
    return backend


def enroll(ubm: Model, items, speaker: str, *, relevance: float = 16.0, adapt: str = DEFAULT_ADAPT,
           backend: IvectorBackend | None = None, run: RunOptions = DEFAULT_RUN) -> Model:
    """MAP-adapt ``ubm`` to the speech of ``items``: a speaker model.

    Parameters
    ----------
    ubm : Model
        The UBM (:func:`train_ubm`, or :func:`~spkver.storage.models.load_model`).
    items : list of AudioItem
        The speaker's enrollment recordings.
    speaker : str
        The speaker's id: 1-128 characters from ``A-Z a-z 0-9 . _ -``.
    relevance : float
        MAP relevance factor r (16): larger stays closer to the UBM.
    adapt : {"mw", "m", "mv", "mwv"}
        Which parameters adapt: means, and weights and/or variances.
    backend : IvectorBackend, optional
        Also keep an i-vector per recording (``model.ivectors``), for scoring
        with this back-end (:func:`train_ivector`).
    run : RunOptions
        Workers, bad files, progress; ``run.on_note`` receives a warning when
        audio was recorded below the UBM's feature rate.

    Returns
    -------
    Model
        ``kind == "speaker"``, one mixture per system with the UBM's (K,) and
        (K, D) shapes, and ``meta["ubm_fingerprint"]`` tying it to its UBM.

    Examples
    --------
    Alice's model, from the ``corpus``, ``run`` and ``ubm`` of :func:`train_ubm`'s example:

    >>> from spkver import enroll
    >>> alice = enroll(ubm, find_audio([corpus / "enroll" / "alice"]), "alice", run=run)
    >>> alice.kind, alice.meta["speaker"], alice.gmm.means.shape
    ('speaker', 'alice', (8, 124))
    """
    validate_speaker_id(speaker)
    extracted = extract_all(items, ubm.feature_config, run=run)
    return adapt_model(ubm, [frames for _, frames in extracted], speaker, relevance=relevance, adapt=adapt,
                       backend=backend, on_note=run.on_note)


# Less speech than this moves the UBM so little that the model accepts and rejects almost at random.
SHORT_ENROLLMENT_SECONDS = 1.0


def adapt_model(ubm: Model, arrays, speaker: str, *, relevance: float = 16.0, adapt: str = DEFAULT_ADAPT,
                backend: IvectorBackend | None = None, on_note=None) -> Model:
    """MAP-adapt ``ubm`` to feature ``arrays`` (each (n_i, ``ubm.feature_config.dim``)), every system to its
    columns: the model :func:`enroll` and pair trials make.

    ``speaker`` is recorded in the model's metadata as it is (it is checked
    only where a model is stored). With ``backend``, the model also keeps
    one i-vector per array. ``on_note`` is told when there was less than
    :data:`SHORT_ENROLLMENT_SECONDS` of speech.
    """
    try:
        gmms, stats = adapt_views(ubm.gmms, ubm.feature_config.views, arrays, relevance, adapt, ubm.channels)
    except SpkverError as exc:  # about this speaker's audio: say whose, as a batch enrolls many
        raise SpkverError(f"speaker {speaker!r}: {exc.message}", exc.path) from None
    seconds = stats.n_frames * ubm.feature_config.hop_ms / 1000
    if seconds < SHORT_ENROLLMENT_SECONDS and on_note is not None:
        on_note(f"speaker {speaker!r}: enrolled from only {seconds:.2f} s of speech; the model barely differs from "
                f"the UBM and will decide poorly (enroll {3 * SHORT_ENROLLMENT_SECONDS:g} s or more)")
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
    ivectors = None
    if backend is not None:
        from spkver.ivector.extractor import extract_ivectors
        from spkver.ivector.statistics import statistics_rows

        first = ubm.feature_config.views[0]  # the back-end models the first system's columns
        ivectors = extract_ivectors(backend.tv, statistics_rows(ubm.gmm, [a[:, first] for a in arrays]))
        meta["ivector_extractor"] = backend.extractor_fingerprint
    return Model(gmms[0], "speaker", ubm.feature_config, meta, ivectors=ivectors, further=gmms[1:])


def enroll_many(ubm: Model, speakers: dict, *, relevance: float = 16.0, adapt: str = DEFAULT_ADAPT,
                backend: IvectorBackend | None = None, run: RunOptions = DEFAULT_RUN) -> Iterator[Model]:
    """Enroll many speakers at once: features of all their recordings in one pool, a model per speaker.

    Features are extracted in parallel across every speaker's recordings
    (``run.workers`` processes), and each speaker's model is yielded as soon
    as its last recording is done, so a caller that saves models as they come
    keeps them whatever happens later. Each model is byte-identical to what
    :func:`enroll` makes of the same recordings.

    Parameters
    ----------
    ubm : Model
        The UBM.
    speakers : dict of str to list of AudioItem
        Speaker id to that speaker's enrollment recordings, in enrollment order.
    relevance : float
        MAP relevance factor (16), as for :func:`enroll`.
    adapt : {"mw", "m", "mv", "mwv"}
        Which parameters adapt, as for :func:`enroll`.
    backend : IvectorBackend, optional
        Keep i-vectors too, as for :func:`enroll`.
    run : RunOptions
        Workers and warnings; ``run.progress`` counts speakers. With
        ``run.skip_bad`` a bad recording is left out (its message to
        ``run.on_skip``), and so is a speaker left with no usable recording
        (a message to ``run.on_skip`` too).

    Yields
    ------
    Model
        ``kind == "speaker"``, one per enrolled speaker, in the order of ``speakers``.

    Raises
    ------
    SpkverError
        An invalid speaker id or a speaker without recordings (before any work),
        or a bad recording without ``run.skip_bad`` (after the models of the
        speakers before it were yielded).

    Examples
    --------
    >>> from spkver import RunOptions, enroll_many, find_audio, train_ubm
    >>> from spkver.synth import example_corpus
    >>> corpus, run = example_corpus(), RunOptions(workers=1)
    >>> ubm = train_ubm(find_audio([corpus / "background"]), n_components=8, iterations=3, run=run)
    >>> speakers = {name: find_audio([corpus / "enroll" / name]) for name in ("alice", "bob")}
    >>> [model.meta["speaker"] for model in enroll_many(ubm, speakers, run=run)]
    ['alice', 'bob']
    """
    speakers = {validate_speaker_id(name): list(items) for name, items in speakers.items()}
    for name, items in speakers.items():
        if not items:
            raise SpkverError(f"speaker {name!r} has no recordings to enroll from")
    models: Iterable[Model | None] = _enrolled_in_order(ubm, speakers, relevance, adapt, backend, run)
    if run.progress is not None:
        models = run.progress(iter(models), len(speakers))
    return (model for model in models if model is not None)


def _enrolled_in_order(ubm: Model, speakers: dict, relevance: float, adapt: str, backend, run: RunOptions):
    """Models of ``speakers`` as their recordings' features arrive (None for a speaker left without audio)."""
    owners = [name for name, items in speakers.items() for _ in items]
    files = [item for items in speakers.values() for item in items]
    remaining = {name: len(items) for name, items in speakers.items()}
    arrays: dict[str, list] = {name: [] for name in speakers}
    quiet_files = replace(run, progress=None)  # the progress of a batch counts speakers, not files
    for owner, (_, frames) in zip(owners, checked_features(files, ubm.feature_config, run=quiet_files)):
        if frames is not None:
            arrays[owner].append(frames)
        remaining[owner] -= 1
        if remaining[owner]:
            continue
        if arrays[owner]:
            yield adapt_model(ubm, arrays.pop(owner), owner, relevance=relevance, adapt=adapt, backend=backend,
                              on_note=run.on_note)
        else:
            if run.on_skip is not None:
                run.on_skip(f"speaker {owner!r}: no usable audio left; not enrolled")
            yield None


def _scorer(ubm: Model, speakers: list, top_c: int, backend: IvectorBackend | None):
    """The scorer of ``speakers``: their MAP models against the UBM, or their i-vectors with ``backend``.

    Raises SpkverError for a speaker enrolled without this back-end's extractor.
    """
    if backend is None:
        return SystemsScorer(ubm.gmms, [s.gmms for s in speakers], ubm.feature_config.views, top_c, ubm.channels)
    from spkver.ivector.backend import IvectorScorer

    for model in speakers:
        if model.ivectors is None or model.meta.get("ivector_extractor") != backend.extractor_fingerprint:
            have = "without an i-vector back-end" if model.ivectors is None else "with another i-vector back-end"
            raise SpkverError(f"speaker {model.meta['speaker']!r} was enrolled {have}; re-enroll it with --ivector "
                              "(the back-end given here)", model.source)
        if model.ivectors.shape[1] != backend.tv.rank:
            raise SpkverError(f"model's enrollment i-vectors have {model.ivectors.shape[1]} dimensions where the "
                              f"back-end's have {backend.tv.rank}: they are damaged; re-enroll it", model.source)
    return IvectorScorer(ubm.gmm, backend, [s.ivectors for s in speakers], ubm.feature_config.views[0])


def verify(ubm: Model, speakers, items, *, threshold: float = 0.0, top_c: int = 5,
           calibration: Calibration | None = None, backend: IvectorBackend | None = None,
           run: RunOptions = DEFAULT_RUN) -> list[Score]:
    """Score each recording against each speaker model; accept when the score is at least ``threshold``.

    Parameters
    ----------
    ubm : Model
    speakers : list of Model
        Speaker models enrolled from ``ubm``.
    items : list of AudioItem
        Test recordings.
    threshold : float
        Decision threshold on the scores (0 by default; for calibrated scores
        see :func:`spkver.backend.metrics.bayes_threshold`).
    top_c : int
        UBM components evaluated per frame (5); 0 evaluates all.
    calibration : Calibration, optional
        Fitted on raw scores: the scores become log-likelihood ratios.
    backend : IvectorBackend, optional
        Score with this i-vector back-end (PLDA LLRs or cosine similarities)
        instead of the MAP models; the speakers must be enrolled with it.
    run : RunOptions

    Returns
    -------
    list of Score
        One per recording and speaker, recording by recording: ``test`` is the
        recording's path (its utterance id when it came from a data folder), ``score`` the average log-likelihood ratio,
        ``accepted`` the decision, ``frames`` its speech frames.

    Examples
    --------
    Bob's claims on his own test recordings, with the ``corpus``, ``run`` and ``ubm`` of
    :func:`train_ubm`'s example:

    >>> from spkver import enroll, verify
    >>> bob = enroll(ubm, find_audio([corpus / "enroll" / "bob"]), "bob", run=run)
    >>> [s.accepted for s in verify(ubm, [bob], find_audio([corpus / "test" / "bob"]), run=run)]
    [True, True]
    """
    if calibration is not None:
        calibration.require("none")
    scorer = _scorer(ubm, speakers, top_c, backend)
    extracted = extract_all(items, ubm.feature_config, run=run)
    scores_out = []
    for item, frames in extracted:
        scores = checked_scores(scorer.scores(frames), item.where)
        if calibration is not None:
            scores = calibration(scores)
        for model, score in zip(speakers, scores):
            scores_out.append(Score(model.meta["speaker"], item.name, float(score),
                                    accepted=bool(score >= threshold), frames=len(frames)))
    return scores_out


def _load_speakers(ubm, store: SpeakerStore, trials, run: RunOptions, source) -> dict[str, Model | None]:
    models: dict[str, Model | None] = {}
    for trial in trials:
        if trial.speaker in models:
            continue
        try:
            models[trial.speaker] = store.load(trial.speaker, ubm)
        except SpkverError as exc:
            message = f"line {trial.line}: {exc}"  # the store's errors name the speaker or its model file
            if not run.skip_bad:
                raise SpkverError(message, source) from None
            models[trial.speaker] = None
            if run.on_skip:
                run.on_skip(f"{source}: {message}")
    return models


def _trial_items(trials, utterances) -> list[AudioItem]:
    """The test audio of each trial: its utterance of ``utterances``, else its file."""
    return [utterances[t.test] if utterances and t.test in utterances
            else AudioItem(t.test, t.path, f"trials line {t.line}") for t in trials]


def _features_of(ubm, items, run: RunOptions) -> dict[tuple, np.ndarray]:
    """Features of each distinct audio of ``items`` (by :attr:`AudioItem.audio`), extracted once, in parallel."""
    distinct: dict[tuple, AudioItem] = {}
    for item in items:
        distinct.setdefault(item.audio, item)
    good = usable_features(distinct.values(), ubm.feature_config, run=run)
    return {item.audio: frames for item, frames in good}


def score_trials(ubm: Model, store: SpeakerStore, trials: list[Trial], *, top_c: int = 5, norm: str = "none",
                 cohort: Cohort | None = None, top_n: int | None = None, calibration: Calibration | None = None,
                 source: str = "trials", utterances: dict[str, AudioItem] | None = None,
                 backend: IvectorBackend | None = None, run: RunOptions = DEFAULT_RUN) -> list[Score]:
    """Score every trial; each test file is read and scored against the UBM once.

    Parameters
    ----------
    ubm : Model
    store : SpeakerStore
        Where the trials' speakers are enrolled.
    trials : list of Trial
        From :func:`~spkver.storage.trials.read_trials`, or made by hand.
    top_c : int
        UBM components evaluated per frame (5); 0 evaluates all.
    norm : {"none", "z", "t", "s"}
        Score normalisation against ``cohort`` (required unless ``"none"``).
    cohort : Cohort, optional
        Impostor cohort (:class:`~spkver.backend.scorenorm.Cohort`; ``Cohort(ubm,
        frames=ubm.cohort)`` uses the segments the UBM keeps).
    top_n : int, optional
        Adaptive normalisation: cohort statistics from the N highest cohort scores.
    calibration : Calibration, optional
        Maps the (normalised) scores to log-likelihood ratios.
    source : str
        Names the trial list in error messages.
    utterances : dict of str to AudioItem, optional
        Utterance id to audio (a data folder's :attr:`~spkver.audio.sources.DataDir.items`,
        or a ``wav.scp``): a trial whose test is one of these ids is scored on it.
    backend : IvectorBackend, optional
        Score with this i-vector back-end, as for :func:`verify` (no score normalisation).
    run : RunOptions
        With ``run.skip_bad``, trials of unknown speakers or unreadable files are left out.

    Returns
    -------
    list of Score
        In trial order, with the trials' labels.

    Examples
    --------
    A target and a non-target trial, S-normalised against the UBM's own segments, with the
    ``corpus``, ``run`` and ``ubm`` of :func:`train_ubm`'s example:

    >>> from spkver import Cohort, SpeakerStore, Trial, enroll, save_model, score_trials
    >>> import tempfile
    >>> store = SpeakerStore(tempfile.mkdtemp())
    >>> for name in ("alice", "bob"):
    ...     save_model(store.path(name), enroll(ubm, find_audio([corpus / "enroll" / name]), name, run=run))
    >>> test = corpus / "test" / "alice" / "alice_0.wav"
    >>> trials = [Trial("alice", test.name, test, True), Trial("bob", test.name, test, False)]
    >>> scores = score_trials(ubm, store, trials, norm="s", cohort=Cohort(ubm, frames=ubm.cohort), run=run)
    >>> [(s.speaker, s.label) for s in scores]
    [('alice', True), ('bob', False)]
    >>> scores[0].score > scores[1].score  # the target trial scores higher
    True
    """
    _check_scoring(norm, cohort, top_n, calibration, backend)
    models = _load_speakers(ubm, store, trials, run, source)
    items = _trial_items(trials, utterances)
    features = _features_of(ubm, items, run)
    return _score_models(ubm, models, features, trials, items, top_c=top_c, norm=norm, cohort=cohort, top_n=top_n,
                         calibration=calibration, backend=backend, run=run)


def score_pairs(ubm: Model, trials: list[Trial], *, relevance: float = 16.0, adapt: str = DEFAULT_ADAPT,
                top_c: int = 5, norm: str = "none", cohort: Cohort | None = None, top_n: int | None = None,
                calibration: Calibration | None = None, source: str = "pairs",
                backend: IvectorBackend | None = None, run: RunOptions = DEFAULT_RUN) -> list[Score]:
    """Score pair trials (VoxCeleb style): each enrollment recording becomes a speaker model, once.

    Every distinct file (enrollment or test) is read once, in parallel; each
    distinct enrollment is MAP-adapted once, as :func:`enroll` would from that
    one file, and the trials are then scored as :func:`score_trials` scores them.

    Parameters
    ----------
    ubm : Model
    trials : list of Trial
        With ``enrollment`` set (:func:`~spkver.storage.trials.read_trials` with ``pairs=True``).
    relevance, adapt
        MAP settings, as for :func:`enroll`.
    top_c, norm, cohort, top_n, calibration, source, backend
        As for :func:`score_trials`.
    run : RunOptions
        With ``run.skip_bad``, trials whose enrollment or test file is unusable are left out.

    Returns
    -------
    list of Score
        In trial order, ``speaker`` the enrollment as written, with the trials' labels.
    """
    if any(t.enrollment is None for t in trials):
        raise SpkverError("pair trials need an enrollment recording each", source)
    _check_scoring(norm, cohort, top_n, calibration, backend)
    enrollments = [AudioItem(t.speaker, Path(str(t.enrollment)), f"{source} line {t.line}") for t in trials]
    items = [AudioItem(t.test, t.path, f"{source} line {t.line}") for t in trials]
    features = _features_of(ubm, enrollments + items, run)
    models: dict[str, Model | None] = {}
    for trial, enrollment in zip(trials, enrollments):
        if trial.speaker not in models:
            frames = features.get(enrollment.audio)
            models[trial.speaker] = None if frames is None else \
                adapt_model(ubm, [frames], trial.speaker, relevance=relevance, adapt=adapt, backend=backend)
    return _score_models(ubm, models, features, trials, items, top_c=top_c, norm=norm, cohort=cohort, top_n=top_n,
                         calibration=calibration, backend=backend, run=run)


def _check_scoring(norm: str, cohort: Cohort | None, top_n: int | None, calibration: Calibration | None,
                   backend: IvectorBackend | None = None) -> None:
    """A normalisation needs a cohort (and MAP scoring); a calibration holds only for scores normalised as its
    own were."""
    if norm != "none" and backend is not None:
        raise SpkverError(f"--score-norm {norm} normalises MAP scores: the i-vector back-end's scores are not "
                          "normalised (give --score-norm none)")
    if norm != "none" and cohort is None:
        raise SpkverError(f"--score-norm {norm} needs --cohort")
    if calibration is not None:
        calibration.require(describe_normalisation(norm, top_n))


def _score_models(ubm: Model, models: dict[str, Model | None], features: dict[tuple, np.ndarray], trials,
                  items: list[AudioItem], *, top_c: int, norm: str, cohort: Cohort | None, top_n: int | None,
                  calibration: Calibration | None, backend: IvectorBackend | None, run: RunOptions) -> list[Score]:
    """Score ``trials`` (their test audio ``items``) against ``models`` (None: left out) on ``features``
    (by item name; missing: left out)."""
    by_test: dict[tuple, list[int]] = {}
    for index, (trial, item) in enumerate(zip(trials, items)):
        if models[trial.speaker] is not None and features.get(item.audio) is not None:
            by_test.setdefault(item.audio, []).append(index)
    speakers = {name: model for name, model in models.items() if model is not None}
    loaded = sorted(speakers)
    column = {name: i for i, name in enumerate(loaded)}
    scorer = _scorer(ubm, [speakers[name] for name in loaded], top_c, backend)
    z_stats = None
    if cohort is not None and norm in ("z", "s") and loaded:
        z_stats = cohort.statistics(cohort.z_scores([speakers[name] for name in loaded]), top_n)
    t_cohort = cohort if norm in ("t", "s") else None  # MAP scoring: it scores the trial scorer's frames
    scores: dict[int, float] = {}
    for audio, indices in by_test.items():
        frames = features[audio]
        columns = np.array([column[trials[i].speaker] for i in indices])
        system_frames = scorer.system_frames(frames) if t_cohort is not None else None  # compensated once
        # Only this file's claimed speakers: Kaldi trial lists often pair a file with a few models.
        raw = checked_scores(scorer.scores(frames, columns) if system_frames is None
                             else scorer.system_scores(system_frames, columns), items[indices[0]].where)
        z = t = None
        if z_stats is not None:
            z = (z_stats[0][columns], z_stats[1][columns])
        if t_cohort is not None:
            mean, std = t_cohort.statistics(t_cohort.t_scores(items[indices[0]].identity(), system_frames), top_n)
            t = (mean[0], std[0])
        final = normalise_scores(raw, norm, z, t)
        if calibration is not None:
            final = calibration(final)
        scores.update(zip(indices, final.tolist()))
    if cohort is not None:
        cohort.save(run.on_note)
    return [Score(t.speaker, t.test, scores[i], t.label) for i, t in enumerate(trials) if i in scores]


@dataclass(frozen=True)
class Identification:
    """Who is speaking in one recording.

    Attributes
    ----------
    path : str
        The recording (its utterance id when it came from a data folder).
    decision : str
        The best-scoring speaker, or ``"unknown"`` below the threshold.
    ranking : list of (str, float)
        The ``top`` best speakers and their scores, best first.
    """

    path: str
    decision: str
    ranking: list


def identify(ubm: Model, speakers, items, *, top: int = 3, threshold: float | None = 0.0, top_c: int = 5,
             calibration: Calibration | None = None, backend: IvectorBackend | None = None,
             run: RunOptions = DEFAULT_RUN) -> list[Identification]:
    """Rank enrolled speakers for each recording; ``unknown`` when the best is below ``threshold``.

    Parameters
    ----------
    ubm, speakers, items
        As for :func:`verify`; at least one speaker.
    top : int
        Speakers listed per recording.
    threshold : float or None
        Open-set identification (the default): ``unknown`` when the best score
        is below this, 0 as in :func:`verify` (for calibrated scores see
        :func:`spkver.backend.metrics.bayes_threshold`); None always names the
        best speaker (closed set).
    top_c : int
    calibration : Calibration, optional
        Fitted on raw scores: scores become log-likelihood ratios.
    backend : IvectorBackend, optional
        Score with this i-vector back-end, as for :func:`verify`.
    run : RunOptions

    Returns
    -------
    list of Identification
        One per usable recording, in order.

    Examples
    --------
    Who speaks in each test recording, with the ``corpus``, ``run`` and ``ubm`` of
    :func:`train_ubm`'s example:

    >>> from spkver import enroll, identify
    >>> speakers = [enroll(ubm, find_audio([corpus / "enroll" / n]), n, run=run) for n in ("alice", "bob")]
    >>> [answer.decision for answer in identify(ubm, speakers, find_audio([corpus / "test"]), run=run)]
    ['alice', 'alice', 'bob', 'bob']
    """
    if not speakers:
        raise SpkverError("no speakers are enrolled in the model store")
    if calibration is not None:
        calibration.require("none")
    scorer = _scorer(ubm, speakers, top_c, backend)
    answers = []
    for item, frames in usable_features(items, ubm.feature_config, run=run):
        scores = checked_scores(scorer.scores(frames), item.where)
        if calibration is not None:
            scores = calibration(scores)
        order = np.argsort(-scores, kind="stable")[: max(1, top)]
        ranking = [(speakers[i].meta["speaker"], float(scores[i])) for i in order]
        best_name, best_score = ranking[0]
        decision = best_name if threshold is None or best_score >= threshold else "unknown"
        answers.append(Identification(item.name, decision, ranking))
    return answers
