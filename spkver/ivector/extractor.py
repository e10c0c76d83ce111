"""The total-variability model (Dehak et al. 2011): training its matrix T by EM, and extracting i-vectors.

In the whitened statistics space of :mod:`spkver.ivector.statistics` an
utterance's supervector offset is ``T w`` with ``w ~ N(0, I)``; T is
(K·D) × R, ``T_k`` its D rows of component k. Given an utterance's ``N`` and
``F̃``, the posterior of ``w`` has precision ``L = I + Σ_k N_k T_kᵀT_k`` and
mean ``L⁻¹ Tᵀ F̃`` (the i-vector).

The heavy algebra is batched: ``T_kᵀT_k`` is precomputed per component and
kept as packed upper triangles (K × R(R+1)/2), so the precisions of a batch
of B utterances are one product ``N (B × K) @ TT (K × R(R+1)/2)``, and the
M-step's ``Σ_u N_uk E[wwᵀ]_u`` another. Memory is this packed block, the
accumulators and a batch, whatever the number of utterances.

Training (Kenny's EM): the E-step accumulates ``A_k = Σ_u N_uk E[wwᵀ]_u``,
``C = Σ_u F̃_u E[w]ᵀ`` and ``Σ_u E[wwᵀ]``; the M-step sets ``T_k = C_k A_k⁻¹``
and re-estimates the prior's covariance, folded back into T (minimum
divergence: ``T ← T·chol(Σ_u E[wwᵀ] / U)``), which leaves the likelihood
unchanged and speeds convergence. Each iteration cannot decrease
``Σ_u [½ bᵀL⁻¹b − ½ log|L|]`` with ``b = TᵀF̃_u``: the statistics' log-likelihood
up to a constant (:attr:`TrainingState.history`, per utterance).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import numpy as np

from spkver.errors import SpkverError
from spkver.gmm.chunks import pack
from spkver.run import single_blas_thread

# Utterances per batch: B·R² float64 values of about 64 MiB per batch array, from 1 to 256.
BATCH_VALUES = 1 << 23
# Shards of EM work: at least SHARD_ROWS rows each and at most MAX_SHARDS of them, fixed by the number
# of utterances only, so sums (and models) do not depend on the workers. Each shard returns accumulators
# as large as K·R(R+1)/2 + K·D·R values (408 MiB at K = 512, D = 60, R = 400): their number, not the
# number of utterances, sets the memory of a run.
SHARD_ROWS = 64
MAX_SHARDS = 8


def shards_of(n_rows: int) -> list:
    """The shards of ``n_rows`` statistics rows: ``[(0, start, stop)]`` pieces (:func:`spkver.gmm.chunks.pack`)."""
    count = max(1, min(MAX_SHARDS, -(-n_rows // SHARD_ROWS)))
    return pack([n_rows], max(1, -(-n_rows // count)))


def batch_size(rank: int) -> int:
    return int(np.clip(BATCH_VALUES // (rank * rank), 1, 256))


@dataclass
class TotalVariability:
    """The matrix T of a total-variability model, in the whitened statistics space.

    Attributes
    ----------
    matrix : numpy.ndarray, shape (K·D, R)
        Rows ``k·D … k·D + D − 1`` are ``T_k``.
    n_components, dim : int
        K and D of the UBM it belongs to.
    """

    matrix: np.ndarray
    n_components: int
    dim: int
    _packed: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)
    # Names this matrix across processes: a worker computes T_kᵀT_k once per matrix, not once per shard.
    token: str = field(default_factory=lambda: uuid.uuid4().hex, repr=False, compare=False)

    def __post_init__(self):
        self.matrix = np.ascontiguousarray(self.matrix, dtype=np.float64)
        if self.matrix.ndim != 2 or self.matrix.shape[0] != self.n_components * self.dim:
            raise ValueError("the total-variability matrix must be (components × dimensions, rank)")
        if not np.isfinite(self.matrix).all():
            raise ValueError("the total-variability matrix is not finite")

    @property
    def rank(self) -> int:
        return self.matrix.shape[1]

    def __getstate__(self):
        # Sent to workers without T_kᵀT_k (313 MiB at K = 512, R = 400): they compute it once per matrix.
        return {**self.__dict__, "_packed": None}

    def packed_products(self) -> np.ndarray:
        """``T_kᵀT_k`` for every component as packed upper triangles, (K, R(R+1)/2); computed once."""
        if self._packed is None:
            r = self.rank
            upper = np.triu_indices(r)
            blocks = self.matrix.reshape(self.n_components, self.dim, r)
            packed = np.empty((self.n_components, len(upper[0])))
            step = max(1, BATCH_VALUES // (r * r))
            for start in range(0, self.n_components, step):  # a few components at a time: bounded memory
                part = blocks[start:start + step]
                packed[start:start + step] = (part.transpose(0, 2, 1) @ part)[:, upper[0], upper[1]]
            self._packed = packed
        return self._packed


@dataclass
class Posteriors:
    """Posteriors of ``w`` for a batch of B utterances."""

    means: np.ndarray  # (B, R): the i-vectors
    covariances: np.ndarray  # (B, R, R): L⁻¹
    log_likelihood: np.ndarray  # (B,): ½ bᵀL⁻¹b − ½ log|L|


def posteriors(tv: TotalVariability, rows) -> Posteriors:
    """Posterior means and covariances of ``w`` for statistics ``rows`` (B, K·(1+D)).

    Raises
    ------
    SpkverError
        Statistics that are not finite.
    """
    rows = np.asarray(rows, dtype=np.float64)
    k, r = tv.n_components, tv.rank
    zeroth, first = rows[:, :k], rows[:, k:]
    upper = np.triu_indices(r)
    precision = np.zeros((len(rows), r, r))
    packed = zeroth @ tv.packed_products()
    precision[:, upper[0], upper[1]] = packed
    precision[:, upper[1], upper[0]] = packed
    precision[:, np.arange(r), np.arange(r)] += 1.0
    linear = first @ tv.matrix
    try:
        cholesky = np.linalg.cholesky(precision)
    except np.linalg.LinAlgError:
        raise SpkverError("statistics are not valid (negative or non-finite occupation counts)") from None
    covariance = np.linalg.inv(precision)
    means = np.einsum("bij,bj->bi", covariance, linear)
    log_det = 2.0 * np.log(np.diagonal(cholesky, axis1=1, axis2=2)).sum(axis=1)
    return Posteriors(means, covariance, 0.5 * np.einsum("bi,bi->b", linear, means) - 0.5 * log_det)


def extract_ivectors(tv: TotalVariability, rows) -> np.ndarray:
    """i-vectors (posterior means of ``w``) of statistics ``rows`` (U, K·(1+D)): (U, R), batch by batch."""
    rows = np.atleast_2d(rows)
    step = batch_size(tv.rank)
    with single_blas_thread():
        parts = [posteriors(tv, rows[start:start + step]).means for start in range(0, len(rows), step)]
    return np.vstack(parts) if parts else np.zeros((0, tv.rank))


@dataclass
class Accumulators:
    """What the E-step sums over utterances (adds with ``+``, so it splits over workers)."""

    occupancy_second: np.ndarray  # (K, R(R+1)/2): Σ_u N_uk E[wwᵀ]_u, packed
    first_mean: np.ndarray  # (K·D, R): Σ_u F̃_u E[w]ᵀ
    second: np.ndarray  # (R, R): Σ_u E[wwᵀ]
    log_likelihood: float
    utterances: int

    def __add__(self, other: Accumulators) -> Accumulators:
        return Accumulators(self.occupancy_second + other.occupancy_second, self.first_mean + other.first_mean,
                            self.second + other.second, self.log_likelihood + other.log_likelihood,
                            self.utterances + other.utterances)


def e_step(tv: TotalVariability, rows) -> Accumulators:
    """E-step over statistics ``rows`` (U, K·(1+D)), batch by batch (in a fixed order: same rows, same sums)."""
    k, r = tv.n_components, tv.rank
    upper = np.triu_indices(r)
    total = Accumulators(np.zeros((k, len(upper[0]))), np.zeros_like(tv.matrix), np.zeros((r, r)), 0.0, 0)
    step = batch_size(r)
    # One K × R(R+1)/2 buffer for every batch's product: a new one per batch costs more in page faults
    # than the product itself. (numpy's BLAS only: its threads are the ones spkver limits to one.)
    product = np.empty_like(total.occupancy_second)
    for start in range(0, len(rows), step):
        batch = np.asarray(rows[start:start + step], dtype=np.float64)
        post = posteriors(tv, batch)
        second = post.covariances + post.means[:, :, None] * post.means[:, None, :]
        np.matmul(batch[:, :k].T, second[:, upper[0], upper[1]], out=product)
        total.occupancy_second += product
        total.first_mean += batch[:, k:].T @ post.means
        total.second += second.sum(axis=0)
        total.log_likelihood += float(post.log_likelihood.sum())
        total.utterances += len(batch)
    return total


def m_step(tv: TotalVariability, stats: Accumulators, minimum_divergence: bool = True) -> TotalVariability:
    """``T_k = C_k A_k⁻¹`` for every component, then (by default) the minimum-divergence rescaling."""
    k, d, r = tv.n_components, tv.dim, tv.rank
    upper = np.triu_indices(r)
    first = stats.first_mean.reshape(k, d, r)
    matrix = np.empty((k, d, r))
    step = max(1, BATCH_VALUES // (r * r))
    for start in range(0, k, step):  # a few components at a time: bounded memory
        part = stats.occupancy_second[start:start + step]
        full = np.zeros((len(part), r, r))
        full[:, upper[0], upper[1]] = part
        full[:, upper[1], upper[0]] = part
        # T_k A_k = C_k, A_k symmetric: solve A_k T_kᵀ = C_kᵀ.
        matrix[start:start + step] = np.linalg.solve(full, first[start:start + step].transpose(0, 2, 1)) \
            .transpose(0, 2, 1)
    matrix = matrix.reshape(k * d, r)
    if minimum_divergence and stats.utterances:
        matrix = matrix @ np.linalg.cholesky(stats.second / stats.utterances)
    return TotalVariability(matrix, k, d)


def initial_matrix(n_components: int, dim: int, rank: int, rows, seed: int = 0) -> TotalVariability:
    """A random start: Gaussian entries scaled to the spread of the whitened first-order statistics.

    The scale makes ``T w`` (w ~ N(0, I)) about as large as the utterances'
    mean offsets ``F̃_k / N_k``, so the first E-step is neither flat nor saturated.
    """
    rng = np.random.default_rng(seed)
    sample = np.asarray(rows[: min(len(rows), 1000)], dtype=np.float64)
    zeroth = sample[:, :n_components]
    offsets = sample[:, n_components:].reshape(len(sample), n_components, dim) / np.maximum(zeroth, 1.0)[:, :, None]
    spread = float(np.sqrt(np.average((offsets**2).sum(axis=2), weights=zeroth + 1e-12) / dim)) if len(sample) else 1
    scale = max(spread, 1e-3) / np.sqrt(rank)
    return TotalVariability(rng.standard_normal((n_components * dim, rank)) * scale, n_components, dim)


# This process's T_kᵀT_k of the last matrix it saw (the matrix's token, the packed products).
_PACKED_CACHE: dict = {}


def _e_step_task(arrays, shard, tv):
    """The E-step of one shard of statistics rows (for :meth:`spkver.gmm.engine.Engine.map_shards`)."""
    if tv._packed is None and tv.token in _PACKED_CACHE:
        tv._packed = _PACKED_CACHE[tv.token]
    _PACKED_CACHE.clear()
    _PACKED_CACHE[tv.token] = tv.packed_products()
    parts = [e_step(tv, arrays[i][a:b]) for i, a, b in shard]
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total


@dataclass
class TrainingState:
    """Where T-matrix training stands after ``step`` iterations: enough to resume bit-for-bit."""

    tv: TotalVariability
    history: list
    step: int


def train_total_variability(rows, n_components: int, dim: int, *, rank: int, iterations: int = 10, seed: int = 0,
                            minimum_divergence: bool = True, engine=None, state: TrainingState | None = None,
                            on_iteration=None, on_checkpoint=None) -> TrainingState:
    """Train T by EM on statistics ``rows`` (U, K·(1+D)) from :mod:`spkver.ivector.statistics`.

    Parameters
    ----------
    rows : numpy.ndarray, shape (U, K·(1+D))
        Statistics rows (memory-mapped arrays are read a batch at a time).
    n_components, dim : int
        K and D of the UBM.
    rank : int
        R, the i-vectors' dimension.
    iterations : int
        EM iterations (10).
    seed : int
        Seed of the random start.
    minimum_divergence : bool
        Rescale T after each M-step (the default; faster convergence).
    engine : spkver.gmm.engine.Engine, optional
        Computes the E-step over workers or Dask; its arrays must be ``[rows]``
        cut into :func:`shards_of` its rows. Without one, the E-step
        runs here in the same shards, so the result is bit-identical either way.
    state : TrainingState, optional
        Resume from a checkpoint.
    on_iteration : callable, optional
        ``on_iteration(step, log_likelihood_per_utterance, relative_gain)`` after each E-step.
    on_checkpoint : callable, optional
        Receives a :class:`TrainingState` after every M-step.

    Returns
    -------
    TrainingState
        ``tv`` the trained model, ``history[i]`` the log-likelihood per
        utterance of the model after ``i`` M-steps (the last one measured by a
        final E-step).
    """
    if rank < 1:
        raise ValueError("rank must be at least 1")
    if len(rows) == 0:
        raise ValueError("no utterances to train on")
    with single_blas_thread():
        if state is None:
            state = TrainingState(initial_matrix(n_components, dim, rank, rows, seed), [], 0)
        tv, history = state.tv, list(state.history)
        for step in range(state.step, iterations + 1):
            if engine is not None:
                parts = engine.map_shards(_e_step_task, tv)
            else:
                parts = [_e_step_task([rows], shard, tv) for shard in shards_of(len(rows))]
            stats = parts[0]
            for part in parts[1:]:
                stats = stats + part
            if not np.isfinite(stats.log_likelihood):
                raise SpkverError("total-variability training diverged (non-finite likelihood)")
            average = stats.log_likelihood / stats.utterances
            gain = None if not history else (average - history[-1]) / max(abs(history[-1]), 1e-12)
            history.append(average)
            if on_iteration is not None:
                on_iteration(step, average, gain)
            if step == iterations:
                break
            tv = m_step(tv, stats, minimum_divergence)
            if on_checkpoint is not None:
                on_checkpoint(TrainingState(tv, list(history), step + 1))
    return TrainingState(tv, history, iterations)
