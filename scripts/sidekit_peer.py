"""SIDEKIT 1.4 as the peer of ``scripts/bench_ivector.py``: T-matrix training and i-vector extraction.

Wraps SIDEKIT's own entry points on statistics held in numpy arrays, so the
benchmark can hand both tools the same numbers. Nothing of SIDEKIT is copied
here; it must be installed (see ``bench_ivector.py`` for the commands).

Inputs (float64 is used throughout):

* ``weights`` (K,), ``means`` (K, D), ``variances`` (K, D): the diagonal UBM;
* ``stat0`` (U, K): zeroth-order statistics ``N_uk = Σ_t γ_ukt``;
* ``stat1`` (U, K·D): first-order statistics, **raw** sums ``Σ_t γ_ukt x_t``,
  component-major (``stat1.reshape(U, K, D)[u, k]``), as SIDEKIT's
  ``StatServer`` stores them.

Conventions of SIDEKIT 1.4.3.2 (``factor_analyser.py``, ``statserver.py``) that the benchmark relies on:

* SIDEKIT centres and whitens the raw sums itself,
  ``F̃_uk = (F_uk − N_uk μ_k) / σ_k``, the same space as spkver's statistics
  rows; it must never be given pre-centred statistics.
* ``FactorAnalyser.F`` is T, (K·D, R), rows ``k·D … k·D + D − 1`` for
  component k: the layout of ``spkver.ivector.extractor.TotalVariability.matrix``.
* Its random start is ``numpy.random.randn(K·D, R)`` (unscaled); pass
  ``tv_init`` to start from another matrix.
* Minimum divergence (on by default) multiplies T by SciPy's *upper* Cholesky
  factor of ``mean E[wwᵀ]`` where Kaldi and spkver use the lower one: the
  column space of T is the same, T itself is not. Compare the two tools'
  T only after iterations without it.
* The i-vector is the posterior mean ``L⁻¹ Tᵀ F̃``.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import sys
import tempfile
import time
import types

import numpy as np

__all__ = [
    "import_sidekit",
    "initial_tv",
    "make_mixture",
    "make_statserver",
    "write_stat_h5",
    "sidekit_train_tv",
    "sidekit_extract",
    "check_iteration_split",
]

# SIDEKIT's default number of utterances per batch (training and multi-process extraction).
SIDEKIT_BATCH = 300


def import_sidekit():
    """Import ``sidekit``, with ``torchaudio`` stubbed out if the installed one does not load.

    SIDEKIT imports torchaudio at start-up for its neural-network code only
    (it touches ``torchaudio.*`` inside functions the benchmark never calls);
    the torchaudio wheel that pip pairs with ``torch==2.13.0`` is built for
    another torch and fails to load, so an empty module stands in for it.

    Raises
    ------
    ImportError
        SIDEKIT is not installed.
    """
    if "sidekit" in sys.modules:
        return sys.modules["sidekit"]
    try:  # a torchaudio that loads is used as it is
        import torchaudio  # noqa: F401
    except Exception:
        # A failed import can leave half-initialised submodules behind; SIDEKIT must see only the stub.
        for name in [m for m in sys.modules if m == "torchaudio" or m.startswith("torchaudio.")]:
            del sys.modules[name]
        sys.modules["torchaudio"] = types.ModuleType("torchaudio")
    import sidekit

    return sidekit


def _blas_limit(blas_threads):
    """Limit BLAS to ``blas_threads`` threads in this process (and processes it forks) for a ``with`` block."""
    if blas_threads is None:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=int(blas_threads), user_api="blas")


def _quiet(quiet):
    # SIDEKIT prints "Iteration N" and the like on stdout, where the benchmark's children report.
    return contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext()


def make_mixture(weights, means, variances):
    """A diagonal ``sidekit.Mixture`` built in memory.

    Parameters
    ----------
    weights : numpy.ndarray, shape (K,)
    means : numpy.ndarray, shape (K, D)
    variances : numpy.ndarray, shape (K, D)
        Variances (SIDEKIT stores their inverses).

    Returns
    -------
    sidekit.Mixture
    """
    sidekit = import_sidekit()
    w = np.ascontiguousarray(weights, dtype=np.float64)
    mu = np.ascontiguousarray(means, dtype=np.float64)
    var = np.ascontiguousarray(variances, dtype=np.float64)
    if w.ndim != 1 or mu.ndim != 2 or var.shape != mu.shape or mu.shape[0] != w.shape[0]:
        raise ValueError("weights (K,), means (K, D), variances (K, D) expected")
    ubm = sidekit.Mixture()
    ubm.w = w
    ubm.mu = mu
    ubm.invcov = 1.0 / var
    ubm._compute_all()  # det, cst and A: the TV code does not use them, but validate() checks them
    if not ubm.validate():
        raise ValueError("sidekit.Mixture did not validate")
    return ubm


def _check_stats(ubm, stat0, stat1):
    k, d = ubm.mu.shape
    stat0 = np.ascontiguousarray(stat0, dtype=np.float64)
    stat1 = np.ascontiguousarray(stat1, dtype=np.float64)
    if stat0.ndim != 2 or stat0.shape[1] != k:
        raise ValueError(f"stat0 must be (U, {k})")
    if stat1.shape != (stat0.shape[0], k * d):
        raise ValueError(f"stat1 must be (U, {k * d}) = (U, K·D), component-major")
    return stat0, stat1


def _ids(n):
    return np.array([f"utt{i:07d}" for i in range(n)], dtype=object)


def make_statserver(stat0, stat1):
    """An in-memory ``sidekit.StatServer`` holding copies of the raw statistics (one model per utterance)."""
    sidekit = import_sidekit()
    server = sidekit.StatServer()
    n = stat0.shape[0]
    server.modelset = _ids(n)
    server.segset = _ids(n)
    server.start = np.empty(n, dtype=object)  # None, as SIDEKIT's own servers hold without segmentation
    server.stop = np.empty(n, dtype=object)
    server.stat0 = np.array(stat0, dtype=np.float64, copy=True)
    server.stat1 = np.array(stat1, dtype=np.float64, copy=True)
    if not server.validate():
        raise ValueError("sidekit.StatServer did not validate")
    return server


def write_stat_h5(path, stat0, stat1, *, stat_storage="float64"):
    """Write the statistics as a SIDEKIT ``StatServer`` HDF5 file (no prefix).

    Parameters
    ----------
    path : str
    stat0, stat1 : numpy.ndarray
        Raw statistics, (U, K) and (U, K·D).
    stat_storage : {"float64", "sidekit"}
        ``"float64"``: uncompressed float64 datasets, so SIDEKIT reads back
        exactly the arrays given (and reads them cheaply: it reads the file on
        every iteration). ``"sidekit"``: ``StatServer.write``, SIDEKIT's own
        format (float32, gzip and Fletcher-32), as its recipes produce.

    Returns
    -------
    str
        ``path``.
    """
    if stat_storage == "sidekit":
        make_statserver(stat0, stat1).write(path)
        return path
    if stat_storage != "float64":
        raise ValueError("stat_storage must be 'float64' or 'sidekit'")
    import h5py

    n = stat0.shape[0]
    ids = _ids(n).astype("S")
    with h5py.File(path, "w") as f:
        # The datasets StatServer.write makes; SIDEKIT's readers look up modelset/segset for the count.
        f.create_dataset("modelset", data=ids, maxshape=(None,))
        f.create_dataset("segset", data=ids, maxshape=(None,))
        f.create_dataset("start", data=np.full(n, -1, dtype=np.int32), maxshape=(None,))
        f.create_dataset("stop", data=np.full(n, -1, dtype=np.int32), maxshape=(None,))
        f.create_dataset("stat0", data=np.asarray(stat0, dtype=np.float64))
        f.create_dataset("stat1", data=np.asarray(stat1, dtype=np.float64))
    return path


def initial_tv(n_components, dim, rank, seed=0):
    """SIDEKIT's own random start after ``numpy.random.seed(seed)``: ``randn(K·D, R)``."""
    return np.random.RandomState(seed).randn(n_components * dim, rank)


def _default_batch(n_utts, processes, batch_size):
    if batch_size is not None:
        return int(batch_size)
    if processes <= 1:
        return SIDEKIT_BATCH
    # SIDEKIT's pool parallelises over batches: at least one batch per E-step process.
    return max(1, min(SIDEKIT_BATCH, math.ceil(n_utts / processes)))


def sidekit_train_tv(weights, means, variances, stat0, stat1, rank, iterations, *, processes=1, seed=0,
                     tv_init=None, min_div=True, batch_size=None, stat_storage="float64", blas_threads=None,
                     workdir=None, quiet=True):
    """Train SIDEKIT's total-variability matrix on raw statistics, timing each EM iteration.

    ``processes=1`` calls ``FactorAnalyser.total_variability_single``;
    ``processes=n ≥ 2`` calls ``FactorAnalyser.total_variability`` with
    ``num_thread=n − 1``, which runs n E-step processes beside a gatherer
    process, a ``multiprocessing.Manager`` server and this process (the
    M-step), all started anew on every iteration. Each is called with
    ``nb_iter=1`` once per iteration, the previous T as ``tv_init``, so that
    iterations can be timed (the same arithmetic as one call with
    ``nb_iter=iterations``: :func:`check_iteration_split`).

    Parameters
    ----------
    weights, means, variances : numpy.ndarray
        The UBM, (K,), (K, D), (K, D).
    stat0, stat1 : numpy.ndarray
        Raw statistics, (U, K) and (U, K·D).
    rank : int
    iterations : int
    processes : int
    seed : int
        Seed of SIDEKIT's random start (:func:`initial_tv`) if ``tv_init`` is not given.
    tv_init : numpy.ndarray, optional
        The starting T, (K·D, rank) (not modified).
    min_div : bool
        SIDEKIT's minimum-divergence step (its default).
    batch_size : int, optional
        Utterances per batch; by default SIDEKIT's 300 in one process, else
        enough batches for every E-step process.
    stat_storage : {"float64", "sidekit"}
        How the statistics file SIDEKIT reads is written (:func:`write_stat_h5`).
    blas_threads : int, optional
        BLAS threads for the call (processes forked by SIDEKIT inherit the
        limit); None leaves the BLAS library's default.
    workdir : str, optional
        Where the temporary statistics file goes.
    quiet : bool
        Swallow SIDEKIT's printing.

    Returns
    -------
    T : numpy.ndarray, shape (K·D, rank)
        In SIDEKIT's (and spkver's) whitened space.
    seconds : list of float
        Wall time of each iteration: E-step, M-step and minimum divergence,
        with SIDEKIT's reading of the statistics file (it reads it on every
        iteration) and its process start-up; writing the file once before
        the first iteration is not included.
    """
    import_sidekit()
    from sidekit.factor_analyser import FactorAnalyser

    ubm = make_mixture(weights, means, variances)
    stat0, stat1 = _check_stats(ubm, stat0, stat1)
    k, d = ubm.mu.shape
    rank, iterations = int(rank), int(iterations)
    if not 0 < rank <= k * d:
        raise ValueError("rank must be in 1..K·D")
    if tv_init is None:
        t = initial_tv(k, d, rank, seed)
    else:
        t = np.array(tv_init, dtype=np.float64, copy=True)
        if t.shape != (k * d, rank):
            raise ValueError(f"tv_init must be ({k * d}, {rank})")
    batch = _default_batch(stat0.shape[0], processes, batch_size)

    seconds = []
    with tempfile.TemporaryDirectory(prefix="sidekit_peer_", dir=workdir) as tmp:
        h5 = write_stat_h5(os.path.join(tmp, "stats.h5"), stat0, stat1, stat_storage=stat_storage)
        with _blas_limit(blas_threads), _quiet(quiet):
            for _ in range(iterations):
                analyser = FactorAnalyser()
                start_matrix = t.copy()  # SIDEKIT updates tv_init in place
                start = time.perf_counter()
                if processes <= 1:
                    analyser.total_variability_single(h5, ubm, rank, nb_iter=1, min_div=min_div,
                                                      tv_init=start_matrix, batch_size=batch)
                else:
                    analyser.total_variability([h5], ubm, rank, nb_iter=1, min_div=min_div,
                                               tv_init=start_matrix, batch_size=batch,
                                               num_thread=int(processes) - 1)
                seconds.append(time.perf_counter() - start)
                t = np.asarray(analyser.F, dtype=np.float64)
    return t, seconds


def sidekit_extract(weights, means, variances, T, stat0, stat1, *, processes=1, batch_size=None,
                    uncertainty=False, blas_threads=None, workdir=None, quiet=True):
    """Extract SIDEKIT's i-vectors (posterior means) of every utterance, timed.

    ``processes=1`` calls ``FactorAnalyser.extract_ivectors_single`` on an
    in-memory ``StatServer``; ``processes=n ≥ 2`` calls
    ``FactorAnalyser.extract_ivectors`` on a statistics file with
    ``num_thread=n − 1`` (the pool layout of training).

    Parameters
    ----------
    weights, means, variances : numpy.ndarray
        The UBM.
    T : numpy.ndarray, shape (K·D, R)
    stat0, stat1 : numpy.ndarray
        Raw statistics, (U, K) and (U, K·D).
    processes : int
    batch_size : int, optional
        As in :func:`sidekit_train_tv` (multi-process only).
    uncertainty : bool
        Also return SIDEKIT's diagonal of ``L⁻¹ + E[w]E[w]ᵀ``.
    blas_threads : int, optional
        As in :func:`sidekit_train_tv`.
    workdir : str, optional
    quiet : bool

    Returns
    -------
    ivectors : numpy.ndarray, shape (U, R)
    seconds : float
        Wall time of SIDEKIT's call (its whitening of the statistics included;
        building the ``StatServer`` or writing the statistics file not).
    second_moment : numpy.ndarray, shape (U, R)
        Only with ``uncertainty=True``.
    """
    import_sidekit()
    from sidekit.factor_analyser import FactorAnalyser

    ubm = make_mixture(weights, means, variances)
    stat0, stat1 = _check_stats(ubm, stat0, stat1)
    k, d = ubm.mu.shape
    T = np.array(T, dtype=np.float64, copy=True)
    if T.ndim != 2 or T.shape[0] != k * d:
        raise ValueError(f"T must be ({k * d}, R)")
    # Only F is used by extraction; mean and Sigma must merely exist.
    analyser = FactorAnalyser(F=T, mean=np.zeros(k * d), Sigma=np.zeros(k * d))
    batch = _default_batch(stat0.shape[0], processes, batch_size)
    with _blas_limit(blas_threads), _quiet(quiet):
        if processes <= 1:
            server = make_statserver(stat0, stat1)  # a copy: SIDEKIT whitens the server's stat1 in place
            start = time.perf_counter()
            out = analyser.extract_ivectors_single(ubm, server, uncertainty=uncertainty)
            seconds = time.perf_counter() - start
        else:
            with tempfile.TemporaryDirectory(prefix="sidekit_peer_", dir=workdir) as tmp:
                h5 = write_stat_h5(os.path.join(tmp, "stats.h5"), stat0, stat1)
                start = time.perf_counter()
                out = analyser.extract_ivectors(ubm, h5, batch_size=batch, uncertainty=uncertainty,
                                                num_thread=int(processes) - 1)
                seconds = time.perf_counter() - start
    if uncertainty:
        server, second_moment = out
        return np.array(server.stat1, dtype=np.float64), seconds, np.array(second_moment, dtype=np.float64)
    return np.array(out.stat1, dtype=np.float64), seconds


def check_iteration_split(weights, means, variances, stat0, stat1, rank, iterations, seed=0):
    """Largest ``|T|`` difference between one SIDEKIT call of ``nb_iter=iterations`` and the timed split.

    :func:`sidekit_train_tv` calls SIDEKIT once per iteration; this checks
    that doing so changes nothing (0.0 on SIDEKIT 1.4.3.2).
    """
    import_sidekit()
    from sidekit.factor_analyser import FactorAnalyser

    ubm = make_mixture(weights, means, variances)
    stat0, stat1 = _check_stats(ubm, stat0, stat1)
    split, _ = sidekit_train_tv(weights, means, variances, stat0, stat1, rank, iterations, seed=seed)
    with tempfile.TemporaryDirectory(prefix="sidekit_peer_") as tmp:
        h5 = write_stat_h5(os.path.join(tmp, "stats.h5"), stat0, stat1)
        analyser = FactorAnalyser()
        np.random.seed(seed)  # SIDEKIT draws its start from the global legacy generator
        with _quiet(True):
            analyser.total_variability_single(h5, ubm, rank, nb_iter=iterations)
    return float(np.max(np.abs(np.asarray(analyser.F) - split)))
