"""Threads and processes: BLAS runs one thread, worker processes die with their parent.

spkver's parallelism is its own worker processes, each summing fixed shards in
a fixed order. Within a process, BLAS runs one thread while models are made:
OpenBLAS's results depend on its thread count, so a model would otherwise
differ between a 1-core and a 16-core machine (or under ``taskset``).
"""

from __future__ import annotations

import contextlib
import functools


@functools.cache
def _controller():
    """threadpoolctl's view of the loaded BLAS libraries (inspected once: 0.3 ms), or None without it."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return ThreadpoolController()


def single_blas_thread():
    """A ``with`` block in which BLAS uses one thread, the previous limits restored after (~14 µs)."""
    controller = _controller()
    return contextlib.nullcontext() if controller is None else controller.limit(limits=1, user_api="blas")


def init_worker_process():
    """Start of every worker process: one BLAS thread for good, and death with the parent.

    On Linux the kernel sends SIGKILL to the worker when the process that
    started it dies (``PR_SET_PDEATHSIG``), so a ``kill -9`` of spkver leaves
    no orphan holding memory.
    """
    single_blas_thread()
    die_with_parent()


def die_with_parent():
    """Ask the kernel to SIGKILL this process when its parent dies (Linux; elsewhere nothing)."""
    import os
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
