"""Where EM statistics are computed: in this process, in a pool of processes, or on Dask.

The frames are cut into a fixed list of shards (whatever the number of
workers); each shard's statistics are computed alone and the results are
summed in shard order, so 1 worker, N workers and a Dask cluster give
bit-identical models. With N local workers this process is one of them,
beside N − 1 pool processes.
"""

from __future__ import annotations

import contextlib
import functools
import mmap
import os
import pickle
import shutil
import tempfile
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

import numpy as np

from spkver.gmm.chunks import pack
from spkver.gmm.estep import Statistics, accumulate
from spkver.run import init_worker_process, process_context, single_blas_thread

MIN_SHARD, MAX_SHARD, SHARDS = 1 << 14, 1 << 17, 16
# Feature files a Dask worker keeps memory-mapped between tasks (least recently used closed first).
OPEN_FILES = 1024
# Arrays at least this large in a pool process's results travel through a file, not the result pipe.
SPILL_BYTES = 1 << 20


class PoolWorker:
    """What one pool process holds while its :class:`Engine` lives: the frames, the shards, the shard counter.

    The pool's initializer fills the one instance, :data:`POOL_WORKER`, in each
    pool process; the parent's stays empty.
    """

    arrays = shards = next_shard = spill_folder = None

    def set(self, arrays, shards, next_shard, spill_folder):
        self.arrays, self.shards, self.next_shard, self.spill_folder = arrays, shards, next_shard, spill_folder


POOL_WORKER = PoolWorker()


def shard_size(total_frames: int) -> int:
    """Frames per shard: equal shards, 16 of them (a multiple of 4 on smaller data) or more of ≤ 131 072 frames.

    It depends on the data only, never on the number of workers, so that the
    summation order (and the model) is the same however many workers run.
    A count divisible by 4 keeps 2 or 4 workers evenly loaded (16 also 8
    and 16), and shards of at least 16 384 frames keep a Dask task's round
    trip small against its work (local workers claim shards one at a time,
    see :func:`_pool_task`).
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
    return pack(lengths, shard_frames or shard_size(sum(lengths)))


def shard_statistics(gmm, arrays, shard, dtype, chunk_size) -> Statistics:
    """Statistics of one shard (the unit of work everywhere)."""
    return accumulate(gmm, [arrays[i][a:b] for i, a, b in shard], dtype, chunk_size)


def _init_worker(arrays, shards, next_shard, spill_folder):
    POOL_WORKER.set(arrays, shards, next_shard, spill_folder)
    init_worker_process()


def spill(result, folder) -> tuple:
    """``result`` pickled with its large arrays written to one file in ``folder``: what :func:`unspill` reads.

    A pool's result pipe moved the i-vector E-step's accumulators (hundreds of
    MiB per shard) at about 150 MB/s on a VM, longer than computing them; a
    file in the page cache is one copy out and none back (the reader maps it).
    If the file cannot be written (a full disk), the result goes through the
    pipe as before.
    """
    spans: list = []
    try:
        handle = tempfile.NamedTemporaryFile(dir=folder, suffix=".shards", delete=False)
    except OSError:
        return pickle.dumps(result, protocol=5), None, spans

    def out_of_band(buffer):
        data = buffer.raw()
        if data.nbytes < SPILL_BYTES:
            return True
        handle.write(bytes(-handle.tell() % 64))  # aligned arrays
        spans.append((handle.tell(), data.nbytes))
        handle.write(data)
        return False

    try:
        with handle:
            payload = pickle.dumps(result, protocol=5, buffer_callback=out_of_band)
    except OSError:
        os.unlink(handle.name)
        return pickle.dumps(result, protocol=5), None, []
    if not spans:
        os.unlink(handle.name)
        return payload, None, spans
    return payload, handle.name, spans


def unspill(payload, path, spans):
    """The result :func:`spill` wrote: its arrays map the file (copy-on-write), which is removed at once."""
    if path is None:
        return pickle.loads(payload)
    with open(path, "rb") as handle:
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
    with contextlib.suppress(OSError):  # a mapped file cannot be removed on Windows: close() removes the folder
        os.unlink(path)
    view = memoryview(mapped)
    return pickle.loads(payload, buffers=[view[start:start + size] for start, size in spans])


def claim_shards(task, arrays, shards, next_shard, args, limit=None) -> dict:
    """``task(arrays, shard, *args)`` of shards claimed one at a time from a shared counter until none is left.

    Returns ``{shard index: result}``, of at most ``limit`` shards if given.
    A worker that runs faster (or starts sooner) claims more shards, at the
    cost of one lock per shard instead of one pool round trip.
    """
    done = {}
    while limit is None or len(done) < limit:
        with next_shard.get_lock():
            index = next_shard.value
            next_shard.value = index + 1
        if index >= len(shards):
            break
        done[index] = task(arrays, shards[index], *args)
    return done


def _pool_task(task, args, limit=None):
    # One BLAS thread here too, not only from the initializer: a library loaded since (scipy's OpenBLAS,
    # in a spawned worker) would otherwise use every core and sum in another order.
    with single_blas_thread():
        done = claim_shards(task, POOL_WORKER.arrays, POOL_WORKER.shards, POOL_WORKER.next_shard, args, limit)
    return spill(done, POOL_WORKER.spill_folder)


def _added(total, part):
    # In place where the type allows it (the i-vector accumulators): a new sum per shard costs page faults.
    if total is None:
        return part
    total += part
    return total


@functools.lru_cache(maxsize=OPEN_FILES)
def open_shared(path: str) -> np.ndarray:
    """A feature file on shared storage, memory-mapped (kept open between a Dask worker's tasks)."""
    return np.load(path, mmap_mode="r", allow_pickle=False)


def _dask_task(task, shard, paths, args, columns=slice(None)):
    arrays = {piece[0]: open_shared(paths[piece[0]])[:, columns] for piece in shard}
    with single_blas_thread():  # as every local shard: a multi-threaded product sums in another order
        return task(arrays, shard, *args)


def _statistics_task(arrays, shard, gmm, dtype, chunk_size) -> Statistics:
    return shard_statistics(gmm, arrays, shard, dtype, chunk_size)


SPILL_PREFIX = "spkver-shards-"


def spill_folder() -> str:
    """A new folder in the temporary directory for shard results handed over by pool processes.

    Its name carries this process's id. A process killed before it could
    remove its folder (SIGKILL, power loss) leaves the folder behind with
    whatever results were in flight, up to hundreds of MB each for T-matrix
    accumulators, so the folders of processes that no longer exist are
    removed here first (POSIX only: elsewhere a process cannot be probed
    without signalling it).
    """
    if os.name == "posix":
        root = tempfile.gettempdir()
        for name in os.listdir(root):
            owner = name[len(SPILL_PREFIX):].split("-")[0] if name.startswith(SPILL_PREFIX) else ""
            if owner.isdigit() and not _process_exists(int(owner)):
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    return tempfile.mkdtemp(prefix=f"{SPILL_PREFIX}{os.getpid()}-")


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: nothing is sent, only whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class Engine:
    """Computes EM statistics of ``arrays`` for a mixture, with ``workers`` processes.

    Parameters
    ----------
    arrays : list of numpy.ndarray
        Frames (memory-mapped arrays are read a chunk at a time).
    workers : int
        1 computes in this process; N > 1 forks a pool of N − 1 processes
        that lives until :meth:`close`, and this process computes beside
        them (with one BLAS thread while it does).
    scheduler : str, optional
        Address of a Dask scheduler; then ``paths`` (the ``.npy`` files
        behind ``arrays``, readable by every Dask worker) are required.
    shard_frames : int, optional
        Frames per shard (:func:`shard_size` of the total by default).
    shards : list, optional
        The shards themselves, each a list of pieces whose first element is
        an index into ``arrays`` (:meth:`map_shards` tasks read the rest).
    columns : slice
        The columns of ``arrays`` tasks see (one system of a model of
        several, :attr:`~spkver.features.config.FeatureConfig.views`); all by default.
    """

    def __init__(self, arrays, workers=1, scheduler=None, paths=None, shard_frames=None, shards=None,
                 columns: slice = slice(None)):
        self.columns = columns
        arrays = [a[:, columns] for a in arrays] if columns != slice(None) else arrays
        self.arrays = arrays
        self.shards = shards if shards is not None else make_shards([len(a) for a in arrays], shard_frames)
        self.pool = self.client = None
        if scheduler is not None:
            if paths is None:
                raise ValueError("a Dask scheduler needs features on shared storage (a feature store)")
            from distributed import Client

            self.client = Client(scheduler)
            self.paths = [str(p) for p in paths]
        elif workers > 1 and len(self.shards) > 1:
            context = process_context()
            self.workers = min(workers, len(self.shards))
            self.next_shard = context.Value("q", 0)
            self.spill_folder = spill_folder()
            self.pool = ProcessPoolExecutor(self.workers - 1, mp_context=context, initializer=_init_worker,
                                            initargs=(arrays, self.shards, self.next_shard, self.spill_folder))

    def accumulate(self, gmm, dtype=np.float32, chunk_size=None) -> Statistics:
        """E-step statistics of every frame against ``gmm``, summed in shard order."""
        total = Statistics.zeros(gmm.n_components, gmm.dim)
        for part in self.map_shards(_statistics_task, gmm, dtype, chunk_size):
            total = total + part
        return total

    def map_shards(self, task, *args) -> list:
        """``task(arrays, shard, *args)`` for every shard, here, in the pool or on Dask; results in shard order.

        ``task`` must be a module-level function (it is sent to other
        processes) that reads only the rows its shard names; summing its
        results in the order returned gives the same bits however many
        workers computed them.
        """
        if self.client is not None:
            futures = [self.client.submit(_dask_task, task, shard, self.paths, args, self.columns, pure=False)
                       for shard in self.shards]
            return self.client.gather(futures)
        if self.pool is not None:
            # One task per pool process, which then claims shards from a shared counter: a pool
            # round trip per shard (pickling the model, waking the pool's feeder thread) left
            # workers idle 1–5 ms, and a fixed split waits for the slower core. This process,
            # already awake, claims shards too: a pool process takes 1–8 ms to wake on a VM,
            # which cost 7–12% of an iteration on 100 000 frames.
            self.next_shard.value = 0
            futures = [self.pool.submit(_pool_task, task, args) for _ in range(self.workers - 1)]
            with single_blas_thread():
                done = claim_shards(task, self.arrays, self.shards, self.next_shard, args)
            for future in futures:
                done.update(unspill(*future.result()))
            return [done[i] for i in range(len(self.shards))]
        with single_blas_thread():
            return [task(self.arrays, shard, *args) for shard in self.shards]

    def sum_shards(self, task, *args):
        """The sum of ``task(arrays, shard, *args)`` over the shards, added in shard order as results arrive.

        The same sum as of :meth:`map_shards`' list, in the same order (so the
        same bits whatever the workers), but no process holds every result:
        a pool process hands each shard's result over through a file as soon
        as it is computed and claims the next, and this process adds each
        result once those before it are in. With results of hundreds of MiB
        (the i-vector E-step's accumulators) memory then stays at a few
        results, not one per shard.
        """
        total = None
        if self.client is not None:
            parts = self.map_shards(task, *args)
            for index in range(len(parts)):
                total, parts[index] = _added(total, parts[index]), None
            return total
        if self.pool is None:
            with single_blas_thread():
                for shard in self.shards:  # no name holds a result while the next one is computed
                    total = _added(total, task(self.arrays, shard, *args))
            return total
        self.next_shard.value = 0
        # Pool tasks of one shard each: a process hands each result over at once (and is given the next).
        pending = {self.pool.submit(_pool_task, task, args, 1) for _ in range(self.workers - 1)}
        ready: dict = {}
        next_index = 0

        def collect(timeout):
            nonlocal pending
            finished, pending = wait(pending, timeout=timeout, return_when=FIRST_COMPLETED)
            for future in finished:
                done = unspill(*future.result())  # mapped, not read: memory is taken as each is added
                if done:  # it computed a shard: there may be more to claim
                    ready.update(done)
                    pending.add(self.pool.submit(_pool_task, task, args, 1))

        def add_ready():
            nonlocal total, next_index
            while next_index in ready:
                part = ready.pop(next_index)
                total = _added(total, part)
                next_index += 1

        with single_blas_thread():
            while own := claim_shards(task, self.arrays, self.shards, self.next_shard, args, limit=1):
                ready.update(own)
                own = {}  # not held while the next shard is computed
                collect(timeout=0)
                add_ready()
            while pending:
                collect(timeout=None)
                add_ready()
        if next_index != len(self.shards):  # not reached: every shard is claimed once, by someone
            raise RuntimeError(f"shards {next_index}.. were not computed")
        return total

    def close(self):
        if self.pool is not None:
            self.next_shard.value = len(self.shards)  # after an error here, pool processes stop claiming
            try:
                self.pool.shutdown(cancel_futures=True)
            finally:
                shutil.rmtree(self.spill_folder, ignore_errors=True)
        if self.client is not None:
            self.client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
