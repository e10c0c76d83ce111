"""Channel factors: the directions in which one speaker's recordings differ, learnt and removed from features.

A speaker's recordings differ by more than the speaker: words said, microphone,
room, mood. Adapted to one recording, the UBM's means move along a few
directions that recur from recording to recording whoever speaks; these
*eigenchannels* are learnt from background speakers with several recordings
each. Every recording is then compensated before it is enrolled or scored:
its position along them is estimated against the UBM and each frame's share
of that offset removed (the feature-domain latent factor analysis of Vair et
al. 2006 and Matrouf et al. 2007, with the channel subspace of Kenny's joint
factor analysis estimated by principal components of within-speaker MAP
offsets, as in nuisance attribute projection).

The channel matrix ``U`` of a mixture is stored in standardised form, shape
(K, D, R): column ``r`` of component ``k`` is a direction in units of that
component's standard deviations, scaled by the square root of its variance
over recordings, so the factors have a standard normal prior.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from spkver.errors import SpkverError
from spkver.gmm.kernels import softmax_rows
from spkver.gmm.model import GMM, augment

# Channel factors when the training audio names speakers (``--channel-factors auto``). 5, 20 and 50
# measured 4.86 / 4.70 / 4.71 % EER on asc and 2.61 / 2.44 / 2.33 on fsdd (README, "Channel factors").
DEFAULT_CHANNEL_FACTORS = 20
MAX_CHANNEL_FACTORS = 400
MAX_CHANNEL_MAGNITUDE = 1e3  # of a stored eigenchannel, in standard deviations
# The recordings' MAP offsets are held in memory for the principal components (float32, K·D each):
# at most this many bytes; beyond it the recordings are subsampled evenly across speakers.
OFFSETS_BUDGET_BYTES = 1 << 30
MAP_RELEVANCE = 16.0  # of the per-recording offsets; enrollment's default relevance


# Frames whose posteriors are computed at once: a recording no longer than this is compensated with one
# E-step (its posteriors serve both the statistics and the removal); a longer one takes two, block by block.
BLOCK_FRAMES = 4096


def _posteriors(ubm: GMM, block) -> np.ndarray:
    """The UBM's component posteriors of each frame of ``block``, (n, K) float32."""
    posteriors = augment(block, np.float32) @ ubm.projection(np.float32)
    softmax_rows(posteriors)
    return posteriors


def _centred_statistics(ubm: GMM, frames, keep: bool = False):
    """Zeroth-order statistics (K,) and first-order ones centred on the UBM's means and divided by its
    standard deviations (K, D) of one recording; with ``keep``, also its posteriors when it is one block
    (else None)."""
    zeroth = np.zeros(ubm.n_components)
    first = np.zeros(ubm.means.shape)
    kept = None
    for start in range(0, len(frames), BLOCK_FRAMES):
        block = np.asarray(frames[start:start + BLOCK_FRAMES], dtype=np.float32)
        posteriors = _posteriors(ubm, block)
        zeroth += posteriors.sum(axis=0, dtype=np.float64)
        first += posteriors.T @ block
        if keep and len(frames) <= BLOCK_FRAMES:
            kept = posteriors
    first = (first - zeroth[:, None] * ubm.means) / np.sqrt(ubm.variances)
    return (zeroth, first, kept) if keep else (zeroth, first)


def _recordings_kept(labels, limit: int) -> list[int]:
    """Indices of the recordings used: those of speakers with two or more, at most ``limit``, taken in turn
    from each speaker (first recordings first) so every speaker keeps as many as it can."""
    by_speaker: dict = {}
    for index, label in enumerate(labels):
        by_speaker.setdefault(label, []).append(index)
    groups = [indices for indices in by_speaker.values() if len(indices) >= 2]
    kept: list[int] = []
    for turn in range(max((len(g) for g in groups), default=0)):
        for group in groups:
            if turn < len(group) and len(kept) < limit:
                kept.append(group[turn])
    # A speaker left with one recording adds nothing within-speaker; drop it.
    counts = Counter(labels[index] for index in kept)
    return sorted(i for i in kept if counts[labels[i]] >= 2)


def channel_degrees_of_freedom(labels) -> int:
    """How many channel factors the labelled recordings can estimate: recordings of speakers with two or
    more, minus those speakers."""
    return sum(n - 1 for n in Counter(labels).values() if n >= 2)


def train_channels(ubm: GMM, arrays, labels, rank: int, *, relevance: float = MAP_RELEVANCE) -> np.ndarray:
    """The ``rank`` leading eigenchannels of ``ubm`` from recordings ``arrays`` of speakers ``labels``.

    Each recording's MAP offset of the means (relevance ``relevance``, in
    units of the UBM's standard deviations) minus its speaker's average offset
    is within-speaker variation; the leading principal components of these
    residuals are the eigenchannels, scaled by the square root of their
    variance (per degree of freedom: recordings minus speakers).

    Parameters
    ----------
    ubm : GMM
        K components, D dimensions.
    arrays : list of numpy.ndarray
        The recordings' frames, (n_i, D) each.
    labels : list
        The speaker of each recording; speakers with one recording are not used.
    rank : int
        Channel factors wanted; fewer are returned when the recordings cannot
        estimate them (:func:`channel_degrees_of_freedom`, or variance that
        vanishes).

    Returns
    -------
    numpy.ndarray, shape (K, D, R), float32
        R ≤ ``rank``.

    Raises
    ------
    SpkverError
        No speaker has two recordings.
    """
    if len(arrays) != len(labels):
        raise ValueError("labels must name the speaker of every recording")
    k, d = ubm.n_components, ubm.dim
    limit = max(OFFSETS_BUDGET_BYTES // (4 * k * d), 8)
    kept = _recordings_kept(list(labels), limit)
    speakers = sorted({labels[i] for i in kept})
    if not kept:
        raise SpkverError("channel factors need speakers with two or more recordings each")
    offsets = np.empty((len(kept), k * d), dtype=np.float32)
    for row, index in enumerate(kept):
        zeroth, first = _centred_statistics(ubm, arrays[index])
        offsets[row] = (first / (zeroth + relevance)[:, None]).ravel()
    kept_labels = np.array([labels[i] for i in kept], dtype=object)
    for speaker in speakers:
        rows = kept_labels == speaker
        offsets[rows] -= offsets[rows].mean(axis=0)
    # Principal components through the recordings' Gram matrix: (n × n) rather than (KD × KD).
    gram = (offsets @ offsets.T).astype(np.float64)
    values, vectors = np.linalg.eigh(gram)
    order = np.argsort(values)[::-1]
    values, vectors = values[order], vectors[:, order]
    usable = int(np.sum(values > max(values[0], 0.0) * 1e-8)) if len(values) else 0
    rank = min(rank, usable, len(kept) - len(speakers))
    if rank < 1:
        return np.zeros((k, d, 0), dtype=np.float32)
    # Unit directions in the KD space, then scaled by the standard deviation of the factors.
    directions = (offsets.T @ vectors[:, :rank].astype(np.float32)) / np.sqrt(values[:rank]).astype(np.float32)
    scale = np.sqrt(values[:rank] / (len(kept) - len(speakers)))
    return (directions * scale.astype(np.float32)).reshape(k, d, rank).astype(np.float32)


class ChannelCompensation:
    """Removes a recording's channel offset from its frames, for one mixture and its eigenchannels.

    Parameters
    ----------
    ubm : GMM
        K components, D dimensions.
    channels : numpy.ndarray, shape (K, D, R)
        Standardised eigenchannels (:func:`train_channels`).
    """

    def __init__(self, ubm: GMM, channels):
        self.ubm = ubm
        channels = np.asarray(channels, dtype=np.float64)
        if channels.shape[:2] != ubm.means.shape:
            raise ValueError("channel matrix does not fit the mixture")
        self.rank = channels.shape[2]
        self._flat = channels.reshape(ubm.n_components * ubm.dim, self.rank)  # (K·D, R)
        # Per component U_kᵀU_k (K, R, R): the precision of the factors is I + Σ_k N_k U_kᵀU_k.
        self._products = np.einsum("kdr,kds->krs", channels, channels)
        self._std = np.sqrt(ubm.variances)

    def _solve(self, zeroth, first) -> np.ndarray:
        precision = np.eye(self.rank) + np.tensordot(zeroth, self._products, axes=1)
        return np.linalg.solve(precision, self._flat.T @ first.ravel())

    def factors(self, frames) -> np.ndarray:
        """The posterior mean of the recording's channel factors, (R,)."""
        return self._solve(*_centred_statistics(self.ubm, frames))

    def compensate(self, frames) -> np.ndarray:
        """``frames`` (n, D) minus each frame's share of the channel offset: Σ_k γ_k(t) σ_k ⊙ U_k x.

        Returns float32 frames; frames without channels (R = 0) or without
        frames come back unchanged (as float32).
        """
        out = np.array(frames, dtype=np.float32)
        if self.rank == 0 or len(out) == 0:
            return out
        zeroth, first, posteriors = _centred_statistics(self.ubm, out, keep=True)
        factors = self._solve(zeroth, first)
        offsets = ((self._flat @ factors).reshape(self._std.shape) * self._std).astype(np.float32)  # (K, D)
        for start in range(0, len(out), BLOCK_FRAMES):
            block = out[start:start + BLOCK_FRAMES]
            block -= (posteriors if posteriors is not None else _posteriors(self.ubm, block)) @ offsets
        return out


def compensations(ubms, channels) -> tuple:
    """One :class:`ChannelCompensation` per system, or Nones when the model has no channel factors."""
    if not channels:
        return (None,) * len(ubms)
    return tuple(ChannelCompensation(ubm, u) for ubm, u in zip(ubms, channels, strict=True))
