"""Where EM statistics are computed: in this process, in a pool of processes, or on Dask.

The frames are cut into a fixed list of shards (whatever the number of
workers); each shard's statistics are computed alone and the results are
summed in shard order, so 1 worker, N workers and a Dask cluster give
bit-identical models.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from spkver.gmm import Statistics, accumulate

MIN_SHARD, MAX_SHARD, SHARDS = 1 << 14, 1 << 17, 16

_ARRAYS = None  # the frames, inherited by forked workers
_OPENED = {}  # per-process cache of memory-mapped feature files (Dask workers)


def shard_size(total_frames: int) -> int:
    """Frames per shard: equal shards, 16 of them (a multiple of 4 on smaller data) or more of ≤ 131 072 frames.

    It depends on the data only, never on the number of workers, so that the
    summation order (and the model) is the same however many workers run.
    A count divisible by 4 keeps 2 or 4 workers evenly loaded (16 also 8
    and 16), and shards of at least 16 384 frames keep a Dask task's round
    trip small against its work (local workers get one contiguous run of
    shards each per iteration).
    """
    if total_frames > SHARDS * MAX_SHARD:
        n_shards = -(-total_frames // MAX_SHARD)
    else:
        n_shards = max(1, min(SHARDS, total_frames // MIN_SHARD))
        if n_shards >= 4:
            n_shards -= n_shards % 4
    return max(1, -(-total_frames // n_shards))


def make_shards(lengths, shard_frames=None):
    """Partition arrays of the given lengths into shards of about ``shard_frames`` frames.

    ``shard_frames`` defaults to :func:`shard_size` of the total.

    Returns
    -------
    list of list of (array index, start row, stop row)
    """
    shard_frames = shard_frames or shard_size(sum(lengths))
    shards, current, count = [], [], 0
    for index, length in enumerate(lengths):
        start = 0
        while start < length:
            take = min(shard_frames - count, length - start)
            current.append((index, start, start + take))
            count += take
            start += take
            if count == shard_frames:
                shards.append(current)
                current, count = [], 0
    if current:
        shards.append(current)
    return shards


def shard_statistics(gmm, arrays, shard, dtype, chunk_size) -> Statistics:
    """Statistics of one shard (the unit of work everywhere)."""
    return accumulate(gmm, [arrays[i][a:b] for i, a, b in shard], dtype, chunk_size)


def limit_blas_threads():
    """One BLAS thread in this process: worker processes share the cores instead."""
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:  # without threadpoolctl, BLAS may oversubscribe the cores
        pass


def _init_worker(arrays):
    global _ARRAYS
    _ARRAYS = arrays
    limit_blas_threads()


def _pool_task(gmm, shards, dtype, chunk_size):
    return [shard_statistics(gmm, _ARRAYS, shard, dtype, chunk_size) for shard in shards]


def split_evenly(items, n_groups):
    """``items`` cut into ``n_groups`` contiguous runs whose lengths differ by at most one."""
    bounds = [len(items) * g // n_groups for g in range(n_groups + 1)]
    return [items[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def _dask_task(gmm, shard, paths, dtype, chunk_size):
    arrays = {}
    for i, _, _ in shard:
        if paths[i] not in _OPENED:
            _OPENED[paths[i]] = np.load(paths[i], mmap_mode="r", allow_pickle=False)
        arrays[i] = _OPENED[paths[i]]
    return shard_statistics(gmm, arrays, shard, dtype, chunk_size)


class Engine:
    """Computes EM statistics of ``arrays`` for a mixture, with ``workers`` processes.

    Parameters
    ----------
    arrays : list of numpy.ndarray
        Frames (memory-mapped arrays are read a chunk at a time).
    workers : int
        1 computes in this process; more fork a pool that lives until
        :meth:`close`.
    scheduler : str, optional
        Address of a Dask scheduler; then ``paths`` (the ``.npy`` files
        behind ``arrays``, readable by every Dask worker) are required.
    """

    def __init__(self, arrays, workers=1, scheduler=None, paths=None, shard_frames=None):
        self.arrays = arrays
        self.shards = make_shards([len(a) for a in arrays], shard_frames)
        self.pool = self.client = None
        if scheduler is not None:
            if paths is None:
                raise ValueError("a Dask scheduler needs features on shared storage (a feature store)")
            from distributed import Client

            self.client = Client(scheduler)
            self.paths = [str(p) for p in paths]
        elif workers > 1 and len(self.shards) > 1:
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            self.workers = min(workers, len(self.shards))
            self.pool = ProcessPoolExecutor(self.workers,
                                            mp_context=multiprocessing.get_context(method),
                                            initializer=_init_worker, initargs=(arrays,))

    def accumulate(self, gmm, dtype=np.float32, chunk_size=None) -> Statistics:
        if self.client is not None:
            futures = [self.client.submit(_dask_task, gmm, shard, self.paths, dtype, chunk_size, pure=False)
                       for shard in self.shards]
            parts = self.client.gather(futures)
        elif self.pool is not None:
            # One task per worker, a contiguous run of shards each: a pool round trip per shard
            # (pickling the model, waking the pool's feeder thread) left workers idle 1–5 ms.
            groups = split_evenly(self.shards, self.workers)
            results = self.pool.map(_pool_task, [gmm] * len(groups), groups, [dtype] * len(groups),
                                    [chunk_size] * len(groups))
            parts = [part for result in results for part in result]
        else:
            parts = [shard_statistics(gmm, self.arrays, shard, dtype, chunk_size) for shard in self.shards]
        total = Statistics.zeros(gmm.n_components, gmm.dim)
        for part in parts:  # always in shard order: the sum is the same however it was computed
            total = total + part
        return total

    def close(self):
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
        if self.client is not None:
            self.client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
