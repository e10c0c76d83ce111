"""How work runs: the options of a run, worker processes (that die with their parent), one BLAS thread.

spkver's parallelism is its own worker processes, each summing fixed shards in
a fixed order. Within a process, BLAS runs one thread while models are made:
OpenBLAS's results depend on its thread count, so a model would otherwise
differ between a 1-core and a 16-core machine (or under ``taskset``).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

Progress = Callable[[Iterator, int], Iterable]


@dataclass(frozen=True)
class RunOptions:
    """How a stage runs over many recordings: processes, bad files, progress and warnings.

    Parameters
    ----------
    workers : int, optional
        Processes for feature extraction and EM; None (default) uses every core
        this process may use (:func:`default_workers`).
    skip_bad : bool
        False (default): a bad recording (unreadable, silent) raises
        :class:`~spkver.errors.SpkverError`. True: it is left out and its
        one-line message goes to ``on_skip``.
    on_skip : callable, optional
        Receives the message of each skipped recording.
    progress : callable, optional
        ``progress(iterator, length)`` wraps the per-file results (for a
        progress bar) and returns an iterator over them.
    on_note : callable, optional
        Receives warnings (audio recorded below the feature rate, fewer
        components than asked, ...).
    on_detail : callable, optional
        Receives one line per recording read (its speech frames), for
        ``--verbose``.
    """

    workers: int | None = None
    skip_bad: bool = False
    on_skip: Callable[[str], object] | None = None
    progress: Progress | None = None
    on_note: Callable[[str], object] | None = None
    on_detail: Callable[[str], object] | None = None

    def note(self, message: str) -> None:
        """Pass a warning to ``on_note``, if any."""
        if self.on_note is not None:
            self.on_note(message)


def default_workers() -> int:
    """All the cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def process_context():
    """The multiprocessing context for worker pools: ``fork`` where the OS has it, else ``spawn``."""
    import multiprocessing

    return multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")


@functools.lru_cache(maxsize=1)
def _controller_for(modules_loaded: int):
    """threadpoolctl's view of the BLAS libraries loaded now (inspected in 0.3 ms), or None without it."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return ThreadpoolController()


def _controller():
    # Inspected again whenever modules were imported since: scipy.linalg brings its own OpenBLAS, which a
    # view taken before it loaded would leave running on every core (and summing in another order).
    import sys

    return _controller_for(len(sys.modules))


def single_blas_thread():
    """A ``with`` block in which BLAS uses one thread, the previous limits restored after (~14 µs)."""
    controller = _controller()
    return contextlib.nullcontext() if controller is None else controller.limit(limits=1, user_api="blas")


def init_worker_process():
    """Start of every worker process: one BLAS thread for good, death with the parent, Ctrl-C left to it.

    On Linux the kernel sends SIGKILL to the worker when the process that
    started it dies (``PR_SET_PDEATHSIG``), so a ``kill -9`` of spkver leaves
    no orphan holding memory.
    """
    import signal

    single_blas_thread()
    die_with_parent()
    # Ctrl-C reaches the whole process group: the parent reports it and ends the pool, so a
    # worker ignores it rather than printing a traceback of its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def die_with_parent():
    """Ask the kernel to SIGKILL this process when its parent dies (Linux; elsewhere nothing)."""
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
        if os.getppid() == 1:  # the parent died before prctl: nobody is left to wait for us
            os._exit(1)
