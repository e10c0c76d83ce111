"""The total-variability model (Dehak et al. 2011): training its matrix T by EM, and extracting i-vectors.

In the whitened statistics space of :mod:`spkver.ivector.statistics` an
utterance's supervector offset is ``T w`` with ``w ~ N(0, I)``; T is
(K·D) × R, ``T_k`` its D rows of component k. Given an utterance's ``N`` and
``F̃``, the posterior of ``w`` has precision ``L = I + Σ_k N_k T_kᵀT_k`` and
mean ``L⁻¹ Tᵀ F̃`` (the i-vector).

The heavy algebra is batched: ``T_kᵀT_k`` is precomputed per component and
kept as packed upper triangles (K × R(R+1)/2), so the precisions of a batch
of B utterances are one product ``N (B × K) @ TT (K × R(R+1)/2)``, and the
M-step's ``Σ_u N_uk E[wwᵀ]_u`` another, accumulated in place. Each precision
is factored once (Cholesky, LAPACK ``potrf``): the factor gives the i-vector
(``potrs``), ``log|L|`` and, for training only, ``L⁻¹`` (``potri``), a third
of the work of a general inverse. Memory is this packed block, the
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

import functools
import uuid
from dataclasses import dataclass, field

import numpy as np
from scipy.linalg import blas, lapack

from spkver.errors import SpkverError
from spkver.gmm.engine import Engine
from spkver.run import single_blas_thread

# Utterances per batch: B·R² float64 values of about 128 MiB per batch array, from 1 to 256. Each batch
# streams T_kᵀT_k and the accumulators through memory once: 104 utterances a batch at R = 400 ran 8%
# faster an iteration than 52 on 2 workers.
BATCH_VALUES = 1 << 24
# Shards of EM work: a power of two (2, 4 or 8 workers share them evenly) of at least SHARD_ROWS rows
# each, at most MAX_SHARDS, fixed by the number of utterances only, so sums (and models) do not depend on
# the workers. Each shard returns accumulators of K·R(R+1)/2 + K·D·R values (426 MB at K = 512, D = 60,
# R = 400): their number, not the number of utterances, sets the memory of a run, and handing one over
# (allocation, the file from a pool process, the sum) costs about as much as the E-step of 50–100
# utterances there, so a shard needs well over that to be worth a core (measured: 200 utterances in 4
# shards of 50 took 5.6 s an iteration on 2 workers, in 2 shards of 100 3.4 s, in one 3.4 s).
SHARD_ROWS = 128
MAX_SHARDS = 8


def shards_of(n_rows: int) -> list:
    """The shards of ``n_rows`` statistics rows, each a list of one ``(0, start, stop)`` piece."""
    count = 1 << int(np.log2(max(1, min(MAX_SHARDS, n_rows // SHARD_ROWS))))
    bounds = [i * n_rows // count for i in range(count + 1)]  # equal up to one row
    return [[(0, a, b)] for a, b in zip(bounds[:-1], bounds[1:])]


def batch_size(rank: int) -> int:
    return int(np.clip(BATCH_VALUES // (rank * rank), 1, 256))


@functools.cache
def _row_starts(r: int) -> np.ndarray:
    """Where row i of a packed upper triangle starts (its entries ``(i, i) … (i, r − 1)``); r + 1 values."""
    return np.concatenate([[0], np.cumsum(np.arange(r, 0, -1))])


def pack_upper(square, out) -> np.ndarray:
    """The upper triangles of ``square`` (n, r, r) into ``out`` (n, r(r+1)/2), in ``numpy.triu_indices`` order."""
    starts = _row_starts(square.shape[-1])
    for i in range(square.shape[-1]):  # r slice copies: a gather by index arrays is 5-10x slower
        out[:, starts[i]:starts[i + 1]] = square[:, i, i:]
    return out


def unpack_upper(packed, out) -> np.ndarray:
    """``packed`` (n, r(r+1)/2) into the upper triangles of ``out`` (n, r, r); the lower triangles are left alone."""
    starts = _row_starts(out.shape[-1])
    for i in range(out.shape[-1]):
        out[:, i, i:] = packed[:, starts[i]:starts[i + 1]]
    return out


def _symmetric(upper) -> np.ndarray:
    """Full symmetric matrices (n, r, r) from their upper triangles (the lower ones ignored)."""
    upper = np.triu(upper)
    return upper + np.triu(upper, 1).transpose(0, 2, 1)


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
            blocks = self.matrix.reshape(self.n_components, self.dim, r)
            packed = np.empty((self.n_components, r * (r + 1) // 2))
            step = max(1, BATCH_VALUES // (r * r))
            square = np.empty((min(step, self.n_components), r, r))
            for start in range(0, self.n_components, step):  # a few components at a time: bounded memory
                part = blocks[start:start + step]
                np.matmul(part.transpose(0, 2, 1), part, out=square[:len(part)])
                pack_upper(square[:len(part)], packed[start:start + step])
            self._packed = packed
        return self._packed


@dataclass
class Posteriors:
    """Posteriors of ``w`` for a batch of B utterances."""

    means: np.ndarray  # (B, R): the i-vectors
    covariances: np.ndarray  # (B, R, R): L⁻¹
    log_likelihood: np.ndarray  # (B,): ½ bᵀL⁻¹b − ½ log|L|


def _factor_precisions(tv: TotalVariability, rows, work) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cholesky factors of the precisions ``L`` of ``rows`` (B, K·(1+D)) into ``work`` (≥ B, R, R).

    Returns ``(factors, linear, log_det)``: ``factors[b]`` holds the lower
    factor of ``L_b`` (in LAPACK's column-major view, the upper triangle of
    the row-major array; the other triangle is not used), ``linear`` (B, R) is
    ``TᵀF̃`` and ``log_det`` (B,) is ``log|L_b|``.
    """
    rows = np.asarray(rows, dtype=np.float64)
    if not np.isfinite(rows).all():  # the one check every use of statistics passes
        raise SpkverError("statistics are not valid (negative or non-finite occupation counts)")
    k, r = tv.n_components, tv.rank
    packed = rows[:, :k] @ tv.packed_products()
    packed[:, _row_starts(r)[:-1]] += 1.0  # the identity of the prior
    factors = unpack_upper(packed, work[:len(rows)])
    log_det = np.empty(len(rows))
    for b in range(len(rows)):
        # A symmetric matrix is its own transpose: the row-major upper triangle is LAPACK's lower one.
        factor, info = lapack.dpotrf(factors[b].T, lower=1, overwrite_a=1, clean=0)
        if info != 0:
            raise SpkverError("statistics are not valid (negative or non-finite occupation counts)")
        if not np.shares_memory(factor, factors):  # in place for an F-ordered view, as here
            factors[b] = factor.T
        log_det[b] = 2.0 * np.log(np.diagonal(factor)).sum()
    return factors, rows[:, k:] @ tv.matrix, log_det


def _solve_means(factors, linear) -> np.ndarray:
    """``L⁻¹ TᵀF̃`` for each utterance from the factors of :func:`_factor_precisions`: (B, R)."""
    means = np.empty_like(linear)
    for b in range(len(linear)):
        means[b], info = lapack.dpotrs(factors[b].T, linear[b], lower=1)
    return means


def _invert_factored(factors) -> np.ndarray:
    """The factors of :func:`_factor_precisions` replaced in place by ``L⁻¹`` (upper triangles, row-major)."""
    for b in range(len(factors)):
        inverse, info = lapack.dpotri(factors[b].T, lower=1, overwrite_c=1)
        if not np.shares_memory(inverse, factors):
            factors[b] = inverse.T
    return factors


def posteriors(tv: TotalVariability, rows) -> Posteriors:
    """Posterior means and covariances of ``w`` for statistics ``rows`` (B, K·(1+D)).

    Raises
    ------
    SpkverError
        Statistics that are not finite.
    """
    rows = np.atleast_2d(np.asarray(rows, dtype=np.float64))
    factors, linear, log_det = _factor_precisions(tv, rows, np.zeros((len(rows), tv.rank, tv.rank)))
    means = _solve_means(factors, linear)
    covariance = _symmetric(_invert_factored(factors))
    return Posteriors(means, covariance, 0.5 * np.einsum("bi,bi->b", linear, means) - 0.5 * log_det)


def extract_ivectors(tv: TotalVariability, rows) -> np.ndarray:
    """i-vectors (posterior means of ``w``) of statistics ``rows`` (U, K·(1+D)): (U, R), batch by batch."""
    rows = np.atleast_2d(rows)
    step = batch_size(tv.rank)
    work = np.empty((min(step, len(rows)), tv.rank, tv.rank))
    parts = []
    with single_blas_thread():
        for start in range(0, len(rows), step):
            batch = np.asarray(rows[start:start + step], dtype=np.float64)
            factors, linear, _ = _factor_precisions(tv, batch, work)
            parts.append(_solve_means(factors, linear))
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

    def __iadd__(self, other: Accumulators) -> Accumulators:
        # In place: a new sum of this size per shard costs more in page faults than the additions.
        self.occupancy_second += other.occupancy_second
        self.first_mean += other.first_mean
        self.second += other.second
        self.log_likelihood += other.log_likelihood
        self.utterances += other.utterances
        return self


def _accumulate_product(total, left, right):
    """``total += leftᵀ @ right`` in place (``total`` C-ordered), with no product-sized temporary.

    dgemm's ``beta = 1`` on the column-major view ``totalᵀ += rightᵀ left``: a
    temporary as large as ``total`` (hundreds of MiB) costs more in page faults
    than the product itself.
    """
    result = blas.dgemm(1.0, right.T, np.asfortranarray(left), beta=1.0, c=total.T, overwrite_c=1)
    if not np.shares_memory(result, total):  # not reached for C-ordered totals; kept correct regardless
        total[...] = result.T


def e_step(tv: TotalVariability, rows) -> Accumulators:
    """E-step over statistics ``rows`` (U, K·(1+D)), batch by batch (in a fixed order: same rows, same sums)."""
    k, r = tv.n_components, tv.rank
    starts = _row_starts(r)
    total = Accumulators(np.zeros((k, int(starts[-1]))), np.zeros_like(tv.matrix), np.zeros((r, r)),
                         0.0, 0)
    step = batch_size(r)
    # Buffers made once: fresh arrays of this size per batch cost more in page faults than the products.
    work = np.empty((min(step, len(rows)), r, r))
    second = np.empty((len(work), starts[-1]))
    second_sum = np.zeros(starts[-1])
    for start in range(0, len(rows), step):
        batch = np.asarray(rows[start:start + step], dtype=np.float64)
        n = len(batch)
        factors, linear, log_det = _factor_precisions(tv, batch, work)
        means = _solve_means(factors, linear)
        covariances = _invert_factored(factors)
        for i in range(r):  # E[wwᵀ] = L⁻¹ + E[w]E[w]ᵀ, packed row by row
            np.multiply(means[:, i:i + 1], means[:, i:], out=second[:n, starts[i]:starts[i + 1]])
            second[:n, starts[i]:starts[i + 1]] += covariances[:, i, i:]
        _accumulate_product(total.occupancy_second, batch[:, :k], second[:n])  # A_k += Σ_u N_uk E[wwᵀ]_u
        _accumulate_product(total.first_mean, batch[:, k:], means)  # C += Σ_u F̃_u E[w]ᵀ
        second_sum += second[:n].sum(axis=0)
        total.log_likelihood += float(0.5 * np.einsum("bi,bi->", linear, means) - 0.5 * log_det.sum())
        total.utterances += n
    total.second = _symmetric(unpack_upper(second_sum[None], np.zeros((1, r, r))))[0]
    return total


def m_step(tv: TotalVariability, stats: Accumulators, minimum_divergence: bool = True) -> TotalVariability:
    """``T_k = C_k A_k⁻¹`` for every component, then (by default) the minimum-divergence rescaling.

    A component no utterance occupies (``A_k`` singular) keeps its ``T_k``.
    """
    k, d, r = tv.n_components, tv.dim, tv.rank
    first = stats.first_mean.reshape(k, d, r)
    matrix = tv.matrix.reshape(k, d, r).copy()
    step = max(1, BATCH_VALUES // (r * r))
    full = np.empty((min(step, k), r, r))
    for start in range(0, k, step):  # a few components at a time: bounded memory
        part = unpack_upper(stats.occupancy_second[start:start + step], full[:min(step, k - start)])
        for c in range(len(part)):
            # T_k A_k = C_k with A_k symmetric positive definite: A_k T_kᵀ = C_kᵀ by Cholesky.
            _, solution, info = lapack.dposv(part[c].T, first[start + c].T, lower=1, overwrite_a=1)
            if info == 0:
                matrix[start + c] = solution.T
            elif np.any(stats.occupancy_second[start + c]):  # occupied yet not positive definite
                raise SpkverError("statistics are not valid (negative or non-finite occupation counts)")
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
    """The E-step of one shard of statistics rows (for :meth:`spkver.gmm.engine.Engine.sum_shards`)."""
    if tv._packed is None and tv.token in _PACKED_CACHE:
        tv._packed = _PACKED_CACHE[tv.token]
    _PACKED_CACHE.clear()
    _PACKED_CACHE[tv.token] = tv.packed_products()
    parts = [e_step(tv, arrays[i][a:b]) for i, a, b in shard]
    total = parts[0]
    for part in parts[1:]:
        total += part
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
    if engine is None:  # here, in the same shards summed in the same order: the same bits
        engine = Engine([rows], shards=shards_of(len(rows)))
    with single_blas_thread():
        if state is None:
            state = TrainingState(initial_matrix(n_components, dim, rank, rows, seed), [], 0)
        tv, history = state.tv, list(state.history)
        for step in range(state.step, iterations + 1):
            stats = engine.sum_shards(_e_step_task, tv)
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
