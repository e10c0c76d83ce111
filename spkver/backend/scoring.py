"""Verification scores: average per-frame log-likelihood ratio against the UBM."""

from __future__ import annotations

import numpy as np

from spkver.errors import SpkverError
from spkver.gmm.channels import compensations
from spkver.gmm.chunks import iter_chunks
from spkver.gmm.model import GMM, augment, logsumexp_rows


class Scorer:
    """Scores frames against many speaker models adapted from one UBM, in one pass.

    ``score = mean_n [log p(x_n | speaker) − log p(x_n | UBM)]``.

    With top-C fast scoring (Reynolds 2000), the UBM ranks its components for
    each frame with one float32 product, and only the ``top_c`` best are
    evaluated, in float64, in the UBM and in every speaker model: for each
    component, one small product of the frames that chose it with that
    component's parameters across all models.

    Parameters
    ----------
    ubm : GMM
    speakers : list of GMM
        Models adapted from ``ubm`` (same component order).
    top_c : int
        Components evaluated per frame; 0 (or ≥ K) sums over every component.
    """

    def __init__(self, ubm: GMM, speakers, top_c: int = 5, chunk_size: int = 2048):
        self.ubm, self.n_speakers, self.chunk_size = ubm, len(speakers), chunk_size
        self.top_c = 0 if top_c <= 0 or top_c >= ubm.n_components else top_c
        self.ubm_p32 = ubm.projection(np.float32)
        # (K, 2D+1, 1 + S): per component, its parameters in the UBM then in each speaker model.
        self.stacked = np.ascontiguousarray(
            np.stack([ubm.projection(np.float64)] + [s.projection(np.float64) for s in speakers], axis=2)
            .transpose(1, 0, 2)
        )

    def _chunk_log_likelihoods(self, block, stacked):
        """Per-frame log-likelihoods (n, 1 + S): UBM first, then each model of ``stacked``."""
        z = augment(block, np.float64)
        if not self.top_c:
            return np.stack([logsumexp_rows(z @ stacked[:, :, m].T) for m in range(stacked.shape[2])], axis=1)
        ranks = z.astype(np.float32) @ self.ubm_p32
        top = np.argpartition(-ranks, self.top_c - 1, axis=1)[:, : self.top_c]
        flat = top.ravel()
        frame_of = np.repeat(np.arange(len(block)), self.top_c)
        order = np.argsort(flat, kind="stable")
        starts = np.searchsorted(flat[order], np.arange(self.ubm.n_components + 1))
        out = np.empty((len(flat), stacked.shape[2]))
        for k in np.flatnonzero(np.diff(starts)):
            rows = order[starts[k] : starts[k + 1]]
            out[rows] = z[frame_of[rows]] @ stacked[k]
        return logsumexp_rows(out.reshape(len(block), self.top_c, -1))

    def scores(self, frames, speakers=None) -> np.ndarray:
        """Average LLR of ``frames`` for each speaker; NaN when there are no frames.

        ``speakers`` (indices) limits the work to those models, in that order.
        """
        stacked = self.stacked
        if speakers is not None:
            stacked = stacked[:, :, np.concatenate([[0], np.asarray(speakers, dtype=int) + 1])]
        n_scores = stacked.shape[2] - 1
        if len(frames) == 0:
            return np.full(n_scores, np.nan)
        total = np.zeros(n_scores)
        for block in iter_chunks([frames], self.chunk_size):
            ll = self._chunk_log_likelihoods(block, stacked)
            total += (ll[:, 1:] - ll[:, :1]).sum(axis=0)
        return total / len(frames)


class SystemsScorer:
    """Scores frames against speakers of a model of several systems: the mean of each system's :class:`Scorer`.

    A system is a mixture over some columns of the features (a
    :attr:`~spkver.features.config.FeatureConfig.views` slice); averaging the
    frame-average LLRs of systems that see the frames through different
    normalisations lowered the EER on every protocol (README, "Two systems").
    With one system it is that system's :class:`Scorer`, bit for bit (0 + s and s / 1 are exact).

    Parameters
    ----------
    ubms : sequence of GMM
        The UBM's mixture of each system.
    speakers : list of sequence of GMM
        Each speaker's mixtures, one per system, adapted from ``ubms``.
    views : sequence of slice
        The columns of each system.
    top_c : int
        As for :class:`Scorer`.
    channels : sequence of numpy.ndarray, optional
        Each system's eigenchannels (:attr:`~spkver.storage.models.Model.channels`):
        the frames are compensated (:mod:`spkver.gmm.channels`) before scoring.
    """

    def __init__(self, ubms, speakers, views, top_c: int = 5, channels=()):
        if len(ubms) != len(views) or any(len(s) != len(views) for s in speakers):
            raise ValueError("every model needs one mixture per system (view)")
        self.views = tuple(views)
        self.compensations = compensations(ubms, channels)
        self.parts = [Scorer(ubm, [s[i] for s in speakers], top_c) for i, ubm in enumerate(ubms)]
        self.top_c = self.parts[0].top_c

    def system_frames(self, frames) -> tuple:
        """Each system's columns of ``frames`` (n, D), compensated when the UBM has channel factors: what
        :meth:`system_scores` scores, here and in any scorer of the same UBM (a T-norm cohort's), so a
        recording scored by both is compensated once."""
        return tuple(frames[:, view] if compensation is None else compensation.compensate(frames[:, view])
                     for view, compensation in zip(self.views, self.compensations, strict=True))

    def system_scores(self, system_frames, speakers=None) -> np.ndarray:
        """Mean over the systems of :meth:`Scorer.scores` of :meth:`system_frames`, (S,)."""
        total = np.zeros(self.parts[0].n_speakers if speakers is None else len(speakers))
        for part, columns in zip(self.parts, system_frames, strict=True):
            total += part.scores(columns, speakers)
        return total / len(self.parts)

    def scores(self, frames, speakers=None) -> np.ndarray:
        """Mean over the systems of :meth:`Scorer.scores` of their (compensated) columns of ``frames``, (S,)."""
        return self.system_scores(self.system_frames(frames), speakers)


def checked_scores(scores, path) -> np.ndarray:
    """The guard on scores: finite, else the trial is an error naming its recording."""
    scores = np.asarray(scores, dtype=np.float64)
    if not np.isfinite(scores).all():
        raise SpkverError("score is not finite (no speech frames, or damaged audio)", path)
    return scores


def llr_scores(ubm: GMM, speakers, frames, top_c: int = 5):
    """Average log-likelihood ratio of ``frames`` for each speaker model (see :class:`Scorer`).

    Returns
    -------
    numpy.ndarray, shape (len(speakers),)
        Scores; NaN when ``frames`` is empty.
    """
    return Scorer(ubm, speakers, top_c).scores(frames)
