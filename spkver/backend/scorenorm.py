"""Score normalisation against an impostor cohort: Z-, T- and S-norm (adaptive top-N).

- Z-norm: each speaker model scores the cohort recordings; its scores are
  standardised by their mean and deviation (one pair per model).
- T-norm: each test recording scores the cohort models; standardised by
  that pair (one pair per test file).
- S-norm: the mean of the two. With ``top_n``, only the N highest cohort
  scores enter the statistics (adaptive S-norm, Matějka et al. 2017).

A cohort is audio (scored as impostor tests for Z, and each file MAP-adapted
into an impostor model for T), or the speech segments a UBM stores from its
own training audio (the default of ``spkver score``), and/or a store of
cohort speaker models (T). Raw cohort scores are cached per UBM and cohort
in ``DIR/.cohort-cache``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace
from pathlib import Path

import numpy as np

from spkver.backend.scoring import SystemsScorer
from spkver.errors import SpkverError
from spkver.features.extraction import usable_features
from spkver.fileio import file_identity, read_json, sha256_hex, write_atomic
from spkver.gmm.map import DEFAULT_ADAPT, adapt_views
from spkver.gmm.model import GMM
from spkver.run import RunOptions
from spkver.storage.models import Model
from spkver.storage.speakers import SpeakerStore

SCORE_NORMS = ("none", "z", "t", "s")


# Raw cohort scores are cached beside the speaker models, in this folder of the model store.
COHORT_CACHE = ".cohort-cache"


def cohort_cache_dir(models_dir) -> Path:
    """Where the raw cohort scores of a model store are cached."""
    return Path(models_dir) / COHORT_CACHE

def describe_normalisation(norm: str, top_n=None) -> str:
    """How scores were normalised, as recorded in score and calibration files: ``none``, ``s``, ``s top-n=200``."""
    return norm if norm == "none" or not top_n else f"{norm} top-n={top_n}"


def parse_normalisation(text: str):
    """``(norm, top_n)`` of a :func:`describe_normalisation` string; raises ValueError when it is not one."""
    norm, _, rest = text.partition(" top-n=")
    if norm not in SCORE_NORMS or (rest and (norm == "none" or not rest.isdigit() or int(rest) < 1)):
        raise ValueError(f"unknown normalisation {text!r}")
    return norm, int(rest) if rest else None


def _finite_floats(value):
    """``value`` as a list of finite floats, or None when it is not one (a damaged or forged cache entry)."""
    if not isinstance(value, list) or not all(type(v) in (int, float) for v in value):
        return None
    try:
        floats = [float(v) for v in value]
    except OverflowError:
        return None
    return floats if all(math.isfinite(v) for v in floats) else None


def distinct(arrays) -> int:
    """How many of ``arrays`` differ: copies of one recording (or model) give every score the same
    cohort score, whose deviation of 0 would blow normalised scores up."""
    return len({sha256_hex([np.ascontiguousarray(a).tobytes()]) for a in arrays})


# Cohort scores that vary less than this (average frame LLR) come from copies, or near-copies, of one
# recording or model: normalising by so small a deviation would blow every score up.
MIN_COHORT_DEVIATION = 1e-3


def cohort_statistics(scores, top_n=None):
    """Mean and standard deviation of cohort scores (rows), optionally of the top N only."""
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    if top_n and top_n < scores.shape[1]:
        scores = -np.sort(-scores, axis=1)[:, :top_n]
    return scores.mean(axis=1), np.maximum(scores.std(axis=1), 1e-6)


def normalise_scores(raw, kind, z_stats=None, t_stats=None):
    """Apply Z-, T- or S-norm to raw scores given (mean, std) pairs aligned with them."""
    raw = np.asarray(raw, dtype=np.float64)
    if kind == "none":
        return raw
    z = (raw - z_stats[0]) / z_stats[1] if kind in ("z", "s") else None
    t = (raw - t_stats[0]) / t_stats[1] if kind in ("t", "s") else None
    return {"z": z, "t": t, "s": None if z is None or t is None else 0.5 * (z + t)}[kind]


class Cohort:
    """Impostor cohort for one UBM; computes and caches raw cohort scores.

    Parameters
    ----------
    ubm : Model
    audio_items : list of AudioItem
        Cohort recordings (needed for Z- and S-norm; also become T models).
    model_store : SpeakerStore, optional
        Cohort speaker models adapted from ``ubm`` (used for T-norm when given).
    top_c, relevance, adapt
        Scoring and MAP settings of the cohort scores (as for ``spkver score``).
    cache_dir : Path, optional
        Where raw cohort scores are kept between runs.
    frames : list of numpy.ndarray, each (n_i, D), optional
        Cohort segments as features (a UBM's ``model.cohort``) instead of audio.
    run : RunOptions
        Workers and progress for extracting the cohort recordings (bad ones are skipped).
    source : str or path, optional
        What the cohort came from (``--cohort``, or the UBM holding it), for messages.
    """

    def __init__(self, ubm: Model, audio_items=(), model_store: SpeakerStore | None = None, *, top_c: int = 5,
                 cache_dir=None, relevance: float = 16.0, adapt: str = DEFAULT_ADAPT, frames=None,
                 run: RunOptions = RunOptions(), source=None):
        self.ubm, self.audio_items, self.model_store = ubm, list(audio_items), model_store
        self.source = source
        self.top_c, self.relevance, self.run = top_c, relevance, run
        self.adapt = adapt
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self._features = None if frames is None else [np.asarray(f, dtype=np.float32) for f in frames]
        self._models: list[tuple[GMM, ...]] | None = None  # each cohort model's mixtures, one per system
        self._t_scorer: SystemsScorer | None = None
        identity = [ubm.fingerprint, str(top_c), str(relevance), adapt]
        audio_identities = [item.identity() for item in self.audio_items]
        if None in audio_identities:  # a command's output has no identity: its scores cannot be cached safely
            self.cache_dir = None
        identity += sorted(i for i in audio_identities if i is not None)
        if frames is not None:
            digest = sha256_hex(np.ascontiguousarray(segment).data for segment in frames)
            identity.append(f"frames:{len(frames)}:{digest}")
        if model_store is not None:
            identity += [f"{s}:{file_identity(model_store.path(s))}" for s in model_store.speakers()]
        self.key = sha256_hex(["\n".join(identity)], 20)
        self._cache = {"z": self._load("z"), "t": self._load("t")}

    def _cache_path(self, kind):
        return None if self.cache_dir is None else self.cache_dir / f"{self.key}-{kind}.json"

    def _load(self, kind):
        path = self._cache_path(kind)
        if path is None or not path.is_file():
            return {}
        try:
            data = read_json(path, "cohort cache")
        except SpkverError:
            return {}  # a damaged cache is recomputed, never trusted
        if not isinstance(data, dict):
            return {}
        checked = {key: _finite_floats(value) for key, value in data.items()}
        return {key: value for key, value in checked.items() if value is not None}

    def save(self, on_note=None):
        """Keep the raw cohort scores for next time; a folder that cannot take them only costs a warning."""
        if self.cache_dir is None:
            return
        try:
            os.makedirs(self.cache_dir, exist_ok=True)
            for kind, data in self._cache.items():
                if data:
                    write_atomic(self._cache_path(kind), json.dumps(data, allow_nan=False).encode(), sync=False)
        except (OSError, SpkverError) as exc:
            if on_note:
                on_note(f"cohort scores are not cached ({exc}); the next run computes them again")

    def features(self):
        if self._features is None:
            if not self.audio_items:
                raise SpkverError("Z- and S-norm need cohort recordings, not only models: give --cohort audio files "
                                  "too, or a UBM that stores a cohort (used without --cohort)", self.source)
            run = replace(self.run, skip_bad=True)  # a bad cohort file is left out, and said so
            features = [frames for _, frames in usable_features(self.audio_items, self.ubm.feature_config, run=run)]
            if not features:
                raise SpkverError("every cohort recording was skipped as unusable: give readable cohort audio",
                                  self.source)
            self._features = features
        if distinct(self._features) < 2:  # Z-norm divides by the deviation of the cohort's scores
            raise SpkverError("a cohort needs at least two different recordings", self.source)
        return self._features

    def models(self):
        """Cohort models: the given store, else one MAP model per cohort recording."""
        if self._models is None:
            if self.model_store is not None and self.model_store.speakers():
                self._models = [self.model_store.load(s, self.ubm).gmms for s in self.model_store.speakers()]
            else:
                self._models = [adapt_views(self.ubm.gmms, self.ubm.feature_config.views, [f], self.relevance,
                                            self.adapt, self.ubm.channels)[0] for f in self.features()]
            if distinct([m[0].means for m in self._models]) < 2:
                raise SpkverError("a cohort needs at least two different models or recordings", self.source)
        return self._models

    def _scorer(self, models) -> SystemsScorer:
        """The scorer of ``models`` (each a tuple of mixtures, one per system) against the UBM."""
        return SystemsScorer(self.ubm.gmms, models, self.ubm.feature_config.views, self.top_c, self.ubm.channels)

    def statistics(self, scores, top_n=None) -> tuple[np.ndarray, np.ndarray]:
        """:func:`cohort_statistics` of raw cohort scores (rows); a cohort whose scores barely vary is refused."""
        mean, std = cohort_statistics(scores, top_n)
        if std.size and std.min() < MIN_COHORT_DEVIATION:
            raise SpkverError(f"the cohort's scores barely vary (deviation {std.min():.2g}): its recordings or models "
                              "are (nearly) copies of one another; give a cohort of different speakers", self.source)
        return mean, std

    def z_scores(self, speakers) -> np.ndarray:
        """Scores of the cohort recordings against each speaker model, (S, cohort size)."""
        missing = [m for m in speakers if m.fingerprint not in self._cache["z"]]
        if missing:
            scorer = self._scorer([m.gmms for m in missing])
            table = np.array([scorer.scores(f) for f in self.features()]).T
            for model, row in zip(missing, table):
                self._cache["z"][model.fingerprint] = row.tolist()
        return np.array([self._cache["z"][m.fingerprint] for m in speakers])

    def t_scores(self, test_key: str | None, system_frames) -> np.ndarray:
        """Scores of one test recording, as :meth:`SystemsScorer.system_frames` of this UBM, against every
        cohort model (kept under ``test_key`` unless None)."""
        if test_key is None or test_key not in self._cache["t"]:
            if self._t_scorer is None:
                self._t_scorer = self._scorer(self.models())
            scores = self._t_scorer.system_scores(system_frames).tolist()
            if test_key is None:
                return np.array(scores)
            self._cache["t"][test_key] = scores
        return np.array(self._cache["t"][test_key])


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
