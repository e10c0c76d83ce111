"""The i-vector back-end: a total-variability extractor, post-processing and a scorer, as one object.

Raw i-vectors are centred on the training mean, optionally projected by LDA
and WCCN, and length-normalised; then scored by PLDA (the default when the
training audio names at least two speakers with two or more recordings) or
by cosine similarity.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from spkver.errors import SpkverError
from spkver.fileio import array_parts, sha256_hex
from spkver.ivector.extractor import TotalVariability
from spkver.ivector.plda import PLDA, train_plda
from spkver.ivector.projection import cosine_scores, lda, length_normalise, wccn

SCORINGS = ("plda", "cosine")


@dataclass
class IvectorBackend:
    """An i-vector extractor with its post-processing and scorer.

    Attributes
    ----------
    tv : TotalVariability
    mean : numpy.ndarray, shape (R,)
        Mean of the training i-vectors.
    projection : numpy.ndarray or None, shape (R, d)
        LDA and/or WCCN, applied after centring (None: identity, d = R).
    plda : PLDA or None
        Trained on the processed training i-vectors; None scores by cosine.
    """

    tv: TotalVariability
    mean: np.ndarray
    projection: np.ndarray | None = None
    plda: PLDA | None = None
    training: dict = field(default_factory=dict)  # a summary of how it was trained, stored with it

    @property
    def scoring(self) -> str:
        return "cosine" if self.plda is None else "plda"

    @property
    def extractor_fingerprint(self) -> str:
        """SHA-256 of T (what an enrolled i-vector depends on; post-processing may be retrained)."""
        return sha256_hex(array_parts([self.tv.matrix], dtype="<f8"))

    def process(self, ivectors) -> np.ndarray:
        """Centred, projected and length-normalised i-vectors, (n, d)."""
        x = np.atleast_2d(np.asarray(ivectors, dtype=np.float64)) - self.mean
        if self.projection is not None:
            x = x @ self.projection
        return length_normalise(x)

    def scores(self, enrollments: list, tests) -> np.ndarray:
        """Scores of each model (its raw enrollment i-vectors, (n_m, R) each) against each test i-vector.

        PLDA: the exact LLR of all of a model's enrollment i-vectors against
        the test; cosine: similarity of the mean processed enrollment with the test.

        Returns
        -------
        numpy.ndarray, shape (M, T)
        """
        means, counts = self.enrollment_means(enrollments)
        return self.compare(means, counts, self.process(tests))

    def enrollment_means(self, enrollments: list) -> tuple[np.ndarray, np.ndarray]:
        """Each model's mean processed enrollment i-vector, (M, d), and its number of i-vectors, (M,)."""
        processed = [self.process(e) for e in enrollments]
        means = np.array([p.mean(axis=0) for p in processed]) if processed else np.zeros((0, self.mean.shape[0]))
        return means, np.array([len(p) for p in processed])

    def compare(self, means, counts, tests) -> np.ndarray:
        """Scores (M, T) of models given by :meth:`enrollment_means` against processed test i-vectors (T, d)."""
        if self.plda is None:
            return cosine_scores(means, tests)
        return self.plda.llr(means, counts, tests)


def fit_backend(tv: TotalVariability, ivectors, labels, *, lda_dim: int | None = None, use_wccn: bool = False,
                scoring: str | None = None, plda_iterations: int = 10, on_note=None) -> IvectorBackend:
    """Fit the post-processing and scorer on training i-vectors (n, R) of speakers ``labels`` (n,).

    Parameters
    ----------
    lda_dim : int, optional
        Project on this many LDA directions (at most speakers − 1); None: no LDA.
    use_wccn : bool
        Whiten the within-speaker covariance (after LDA, if any).
    scoring : {"plda", "cosine"}, optional
        None: PLDA when the labels allow it (two speakers, one with two or more
        recordings), else cosine (``on_note`` says why).

    Raises
    ------
    SpkverError
        ``scoring="plda"`` with labels that do not allow PLDA.
    """
    ivectors = np.asarray(ivectors, dtype=np.float64)
    labels = list(labels)
    speakers = Counter(labels)  # not labels.count per label: that is quadratic in the number of utterances
    problem = plda_problem(labels)
    trainable = problem is None
    if scoring is None:
        scoring = "plda" if trainable else "cosine"
        if not trainable and on_note:
            on_note(f"{problem}: cosine scoring")
    elif scoring not in SCORINGS:
        raise ValueError(f"scoring must be one of {SCORINGS}")
    elif scoring == "plda" and not trainable:  # a user's choice (train-ivector --scoring plda): exit 2, not 1
        raise SpkverError(f"{problem}: give more speakers, or cosine scoring")
    mean = ivectors.mean(axis=0)
    x = ivectors - mean
    projection = None
    if lda_dim is not None and trainable:
        projection = lda(length_normalise(x), labels, min(lda_dim, len(speakers) - 1, x.shape[1]))
    if use_wccn and trainable:
        current = x if projection is None else x @ projection
        step = wccn(length_normalise(current), labels)
        projection = step if projection is None else projection @ step
    backend = IvectorBackend(tv, mean, projection)
    if scoring == "plda":
        dim = x.shape[1] if projection is None else projection.shape[1]
        if len(labels) - len(speakers) < dim and on_note:
            on_note(f"PLDA in {dim} dimensions rests on {len(labels)} i-vectors of {len(speakers)} speakers: its "
                    "within-speaker covariance is barely determined; give more training audio, or --lda-dim")
        backend.plda = train_plda(backend.process(ivectors), labels, iterations=plda_iterations)
    return backend


def plda_problem(labels) -> str | None:
    """Why speaker ``labels`` (one per i-vector) do not allow PLDA, LDA and WCCN; None when they do.

    They need two speakers, one of them with two or more i-vectors.
    """
    speakers = Counter(labels)  # not labels.count per label: that is quadratic in the number of utterances
    if len(speakers) >= 2 and max(speakers.values()) >= 2:
        return None
    why = (f"{len(speakers)} speaker in the training audio" if len(speakers) < 2 else
           f"none of the {len(speakers)} speakers in the training audio has two recordings")
    return f"PLDA scoring needs two or more speakers, one with several recordings, but {why}"


class IvectorScorer:
    """Scores test frames against enrolled speakers with an i-vector back-end.

    The i-vector counterpart of :class:`spkver.backend.scoring.Scorer`, which scores their MAP models.

    Parameters
    ----------
    ubm : GMM
        The UBM the back-end was trained on.
    backend : IvectorBackend
    enrollments : list of numpy.ndarray
        Each speaker's raw enrollment i-vectors, (n_m, R).
    view : slice, optional
        The columns of the frames ``ubm`` models (the first system's, of a
        model of several); all of them by default.
    """

    def __init__(self, ubm, backend: IvectorBackend, enrollments: list, view: slice = slice(None)):
        self.ubm, self.backend, self.view = ubm, backend, view
        self.means, self.counts = backend.enrollment_means(enrollments)

    def ivector(self, frames) -> np.ndarray:
        """The raw i-vector of one utterance's frames, (R,)."""
        from spkver.ivector.extractor import extract_ivectors
        from spkver.ivector.statistics import utterance_statistics

        return extract_ivectors(self.backend.tv, utterance_statistics(self.ubm, frames[:, self.view])[None])[0]

    def scores(self, frames, columns=None) -> np.ndarray:
        """Scores of the utterance against every speaker (or those of ``columns``), shape (M,)."""
        means, counts = (self.means, self.counts) if columns is None else (self.means[columns], self.counts[columns])
        return self.backend.compare(means, counts, self.backend.process(self.ivector(frames)))[:, 0]
