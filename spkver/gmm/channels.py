"""Channel factors: the directions in which one speaker's recordings differ, learnt and removed from features.

A speaker's recordings differ by more than the speaker: words said, microphone,
room, mood. Adapted to one recording, the UBM's means move along a few
directions that recur from recording to recording whoever speaks; these
*eigenchannels* are learnt from background speakers with several recordings
each. Every recording is then compensated before it is enrolled or scored:
its position along them is estimated against the UBM and each frame's share
of that offset removed (the feature-domain latent factor analysis of Vair et
al. 2006 and Matrouf et al. 2007). The channel subspace is that of Kenny's
joint factor analysis: started from the principal components of
within-speaker MAP offsets, as in nuisance attribute projection, then refined
by Kenny's EM with minimum-divergence steps.

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
# measured a mean EER of 4.63 / 4.40 / 4.43 % over the five protocols (README, "Channel factors").
DEFAULT_CHANNEL_FACTORS = 20
MAX_CHANNEL_FACTORS = 400
MAX_CHANNEL_MAGNITUDE = 1e3  # of a stored eigenchannel, in standard deviations
# The recordings' first-order statistics and MAP offsets are held in memory (float32, K·D each, two arrays):
# at most this many bytes together; beyond it the recordings are subsampled evenly across speakers.
OFFSETS_BUDGET_BYTES = 1 << 30
MAP_RELEVANCE = 16.0  # of the per-recording offsets; enrollment's default relevance
# EM iterations after the principal components: 0 / 2 / 5 / 10 measured 4.70 / 4.08 / 4.10 / 4.05 % EER on asc and
# 2.44 / 1.58 / 1.57 / 1.52 on fsdd (README, "Channel factors"; before the prior of MAP_RELEVANCE frames on the
# channels, with which 10 gave 4.04 and 1.54); each costs about one pass of matrix products.
CHANNEL_ITERATIONS = 10


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


def _recording_limit(ubm: GMM) -> int:
    """How many recordings' statistics fit :data:`OFFSETS_BUDGET_BYTES` (first order twice, float32)."""
    return max(OFFSETS_BUDGET_BYTES // (2 * 4 * ubm.n_components * ubm.dim), 8)


def channel_training_recordings(labels, ubms) -> list[int]:
    """Indices of the recordings :func:`train_channels` learns from for every one of ``ubms`` (the
    systems' mixtures): those of speakers with two or more, within the budget of the largest."""
    return _recordings_kept(list(labels), min(_recording_limit(ubm) for ubm in ubms))


def channel_degrees_of_freedom(labels) -> int:
    """How many channel factors the labelled recordings can estimate: recordings of speakers with two or
    more, minus those speakers."""
    return sum(n - 1 for n in Counter(labels).values() if n >= 2)


def _training_statistics(ubm: GMM, arrays, labels, limit: int):
    """The centred statistics of the recordings used for training (:func:`_recordings_kept`): zeroth order
    (n, K) float64, first order (n, K·D) float32, and each one's speaker (n,) as an object array."""
    kept = _recordings_kept(list(labels), limit)
    if not kept:
        raise SpkverError("channel factors need speakers with two or more recordings each")
    zeroth = np.empty((len(kept), ubm.n_components))
    first = np.empty((len(kept), ubm.n_components * ubm.dim), dtype=np.float32)
    for row, index in enumerate(kept):
        zeroth[row], statistics = _centred_statistics(ubm, arrays[index])
        first[row] = statistics.ravel()
    return zeroth, first, np.array([labels[i] for i in kept], dtype=object)


def _principal_channels(zeroth, first, speakers, rank: int, relevance: float) -> np.ndarray:
    """The ``rank`` (or fewer) leading principal components of the recordings' MAP offsets minus their
    speaker's average, scaled by the square root of their variance per degree of freedom; (K·D, R)."""
    k = zeroth.shape[1]
    offsets = (first.reshape(len(first), k, -1) / (zeroth + relevance)[:, :, None].astype(np.float32)).reshape(
        first.shape)
    for speaker in set(speakers):
        rows = speakers == speaker
        offsets[rows] -= offsets[rows].mean(axis=0)
    values, directions = _leading_components(offsets, rank)
    freedom = channel_degrees_of_freedom(speakers)
    rank = min(len(values), freedom)
    return directions[:, :rank] * np.sqrt(values[:rank] / freedom)


def _leading_components(rows, rank: int):
    """The ``rank`` (or fewer: those whose variance does not vanish) largest eigenvalues of ``rowsᵀ rows``
    and their unit eigenvectors, (R,) and (columns, R) float64, ``rows`` being (n, columns).

    Through whichever square matrix is smaller, the rows' Gram matrix (n × n) or
    their scatter (columns × columns): the budget on ``rows`` then bounds it to
    the square root of the budget's elements either way.
    """
    through_gram = len(rows) <= rows.shape[1]
    values, vectors = np.linalg.eigh((rows @ rows.T if through_gram else rows.T @ rows).astype(np.float64))
    order = np.argsort(values)[::-1]
    values, vectors = values[order], vectors[:, order]
    # Variance that vanishes next to the largest, or is float32 rounding of offsets (in standard deviations;
    # 1e-5 on average over the rows), is no direction.
    usable = int(np.sum(values > max(values[0] * 1e-8, len(rows) * 1e-10))) if len(values) else 0
    values, vectors = values[:min(rank, usable)], vectors[:, :min(rank, usable)]
    if through_gram:  # from the rows' space to the columns': rowsᵀv / √λ is a unit vector
        vectors = (rows.T @ vectors.astype(rows.dtype)).astype(np.float64) / np.sqrt(values)
    return values, vectors


def _remove_speakers(zeroth, first, speakers, relevance: float) -> None:
    """Takes from each recording's first-order statistics (in place) what its speaker explains: its zeroth-order
    statistics times the speaker's MAP offset from all its recordings pooled."""
    k = zeroth.shape[1]
    view = first.reshape(len(first), k, -1)
    for speaker in set(speakers):
        rows = np.flatnonzero(speakers == speaker)
        pooled = view[rows].sum(axis=0, dtype=np.float64) / (zeroth[rows].sum(axis=0) + relevance)[:, None]
        view[rows] -= (zeroth[rows][:, :, None] * pooled).astype(np.float32)


def _channel_products(channels) -> np.ndarray:
    """Each component's U_kᵀU_k, (K, R, R), of eigenchannels (K, D, R)."""
    return np.einsum("kdr,kds->krs", channels, channels)


def _factor_precisions(zeroth, products) -> np.ndarray:
    """The precision of a recording's channel factors, I + Σ_k N_k U_kᵀU_k: (R, R) for zeroth-order statistics
    (K,), (n, R, R) for (n, K)."""
    return np.eye(products.shape[1]) + np.tensordot(zeroth, products, axes=1)


# Recordings whose (R × R) factor posteriors are held at once in the EM: bounds its memory to a few of
# these blocks (at 400 factors, 256 recordings' three R × R float64 arrays take 1 GB).
POSTERIOR_BLOCK = 256


def _factor_posteriors(flat, zeroth, first):
    """E-step, block by block of recordings: the rows of the block, the precision of their factors
    (n_b, R, R) and the linear term b = Uᵀ F (n_b, R), from eigenchannels ``flat`` (K·D, R) and
    speaker-free statistics."""
    k, rank = zeroth.shape[1], flat.shape[1]
    products = _channel_products(flat.reshape(k, -1, rank))
    unfolded = flat.astype(first.dtype)
    for start in range(0, len(zeroth), POSTERIOR_BLOCK):
        rows = slice(start, start + POSTERIOR_BLOCK)
        yield rows, _factor_precisions(zeroth[rows], products), (first[rows] @ unfolded).astype(np.float64)


def channel_log_likelihood(channels, zeroth, first) -> float:
    """The log-likelihood of speaker-free statistics under eigenchannels ``channels`` (K, D, R), up to a term
    that does not depend on them: Σ ½ bᵀP⁻¹b − ½ log|P| over recordings; EM never lowers it."""
    flat = np.asarray(channels, dtype=np.float64).reshape(-1, np.shape(channels)[-1])
    total = 0.0
    for _, precisions, linear in _factor_posteriors(flat, zeroth, first):
        quadratic = np.einsum("nr,nr->", linear, np.linalg.solve(precisions, linear[:, :, None])[:, :, 0])
        total += 0.5 * quadratic - 0.5 * np.linalg.slogdet(precisions)[1].sum()
    return float(total)


def _em_step(flat, zeroth, first, freedom: int | None = None, relevance: float = 0.0) -> np.ndarray:
    """One EM iteration of Kenny's eigenchannel estimation: factor posteriors, then per component
    U_k = (Σ F_k E[x]ᵀ)(Σ N_k E[xxᵀ] + r·I)⁻¹; (K·D, R) in and out.

    ``relevance`` r, in frames, is a Gaussian prior on each component's
    channels (every entry N(0, 1/r), in the UBM's standard deviations): a
    component the recordings reach with far fewer than r frames in all keeps
    channels near zero, as MAP keeps its mean near the UBM's, instead of
    fitting its few frames with a large offset. With r > 0 and no
    ``freedom`` the step is a MAP one, never lowering the likelihood minus
    r/2·‖U‖²; r = 0 is Kenny's ML step. (The minimum-divergence step below
    rescales U, so with both the penalised objective may dip slightly.)

    With ``freedom`` (degrees of freedom of the recordings' factors), a
    minimum-divergence step follows: the factors' prior covariance is
    re-estimated, G = Σ E[xxᵀ] / ``freedom``, and folded into the channels
    (U ← U·chol(G)) so the prior stays standard normal (Kenny et al. 2008, "A
    study of inter-speaker variability"). Plain EM corrects the channels'
    scale by a few per cent an iteration; this step, in one or two. With
    ``freedom`` the number of recordings it is an EM step of the factors'
    prior, and never lowers the likelihood; the recordings minus their
    speakers (whose offsets were taken out of the same statistics) make G
    unbiased, as the principal components' scale is.
    """
    k, rank = zeroth.shape[1], flat.shape[1]
    accumulated = np.zeros((k, rank * rank))
    crossed = np.zeros((flat.shape[0], rank))
    prior = np.zeros((rank, rank))
    for rows, precisions, linear in _factor_posteriors(flat, zeroth, first):
        covariances = np.linalg.inv(precisions)
        factors = np.einsum("nrs,ns->nr", covariances, linear)
        second = covariances + factors[:, :, None] * factors[:, None, :]  # E[xxᵀ], (n_b, R, R)
        accumulated += zeroth[rows].T @ second.reshape(len(second), -1)
        crossed += first[rows].T @ factors.astype(first.dtype)
        prior += second.sum(axis=0)
    accumulated = accumulated.reshape(k, rank, rank) + max(relevance, 1e-9) * np.eye(rank)  # 1e-9: unreached
    # U_k A_k = C_k with A_k symmetric: solve A_k U_kᵀ = C_kᵀ.
    crossed = crossed.reshape(k, -1, rank)
    updated = np.linalg.solve(accumulated, crossed.transpose(0, 2, 1)).transpose(0, 2, 1).reshape(flat.shape)
    if freedom is not None:
        updated = updated @ np.linalg.cholesky(prior / freedom)
    return updated


def _canonical(flat) -> np.ndarray:
    """The same channel subspace and prior with orthogonal columns, largest first: compensation depends on U
    only through UUᵀ, so U·Q for orthogonal Q is the same model, and a truncated one keeps the strongest."""
    left, singular, _ = np.linalg.svd(flat, full_matrices=False)
    left *= np.where(left[np.argmax(np.abs(left), axis=0), np.arange(left.shape[1])] < 0, -1.0, 1.0)
    return left * singular


def train_channels(ubm: GMM, arrays, labels, rank: int, *, relevance: float = MAP_RELEVANCE,
                   iterations: int = CHANNEL_ITERATIONS) -> np.ndarray:
    """The ``rank`` leading eigenchannels of ``ubm`` from recordings ``arrays`` of speakers ``labels``.

    Each recording's MAP offset of the means (relevance ``relevance``, in
    units of the UBM's standard deviations) minus its speaker's average offset
    is within-speaker variation; the leading principal components of these
    residuals, scaled by the square root of their variance (per degree of
    freedom: recordings minus speakers), start ``iterations`` iterations of
    Kenny's EM for eigenchannels (Kenny et al. 2005; 2008, "A study of
    inter-speaker variability"), on each recording's statistics minus what its
    speaker's pooled MAP offset explains. The principal components see MAP
    offsets, which relevance shrinks toward zero most for the components a
    recording uses least; EM weighs every component by the frames it has.

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
    relevance : float
        Relevance factor of the MAP offsets.
    iterations : int
        EM iterations after the principal components (0: the principal
        components alone).

    Returns
    -------
    numpy.ndarray, shape (K, D, R), float32
        R ≤ ``rank``, columns orthogonal, largest first.

    Raises
    ------
    SpkverError
        No speaker has two recordings.
    """
    if len(arrays) != len(labels):
        raise ValueError("labels must name the speaker of every recording")
    k, d = ubm.n_components, ubm.dim
    zeroth, first, speakers = _training_statistics(ubm, arrays, labels, _recording_limit(ubm))
    flat = _principal_channels(zeroth, first, speakers, rank, relevance)
    if flat.shape[1] and iterations:
        _remove_speakers(zeroth, first, speakers, relevance)
        freedom = channel_degrees_of_freedom(speakers)
        for _ in range(iterations):
            flat = _em_step(flat, zeroth, first, freedom, relevance)
        flat = _canonical(flat)
    return flat.reshape(k, d, flat.shape[1]).astype(np.float32)


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
        self._products = _channel_products(channels)
        self._std = np.sqrt(ubm.variances)

    def _solve(self, zeroth, first) -> np.ndarray:
        precision = _factor_precisions(zeroth, self._products)
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
