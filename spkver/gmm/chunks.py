"""Frames in blocks: one packer cuts a list of arrays into equal pieces (E-step chunks and engine shards)."""

from __future__ import annotations

import numpy as np


def pack(lengths, size: int) -> list:
    """Cut arrays of ``lengths`` rows, in order, into pieces of ``size`` rows (the last may be shorter).

    Short arrays are packed together and long ones cut, so that every piece
    but the last holds exactly ``size`` rows.

    Returns
    -------
    list of list of (array index, start row, stop row)
    """
    pieces, current, count = [], [], 0
    for index, length in enumerate(lengths):
        start = 0
        while start < length:
            take = min(size - count, length - start)
            current.append((index, start, start + take))
            count += take
            start += take
            if count == size:
                pieces.append(current)
                current, count = [], 0
    if current:
        pieces.append(current)
    return pieces


def iter_chunks(arrays, chunk_size):
    """Yield blocks of at most ``chunk_size`` frames from a list of (n_i, D) arrays (:func:`pack`).

    Short utterances are packed together so that each block is large enough
    to keep the matrix products efficient.
    """
    arrays = list(arrays)
    for piece in pack([len(a) for a in arrays], chunk_size):
        parts = [arrays[i][a:b] for i, a, b in piece]
        yield parts[0] if len(parts) == 1 else np.concatenate(parts)


def default_chunk_size(n_components: int) -> int:
    """Frames per block: 1024 (up to 4096 for K < 128), at most 2 MiB of float32 scores, at least 256.

    Small enough that a block's [x², x, 1] and scores stay in cache (L2 or L3) between
    the two products and the posterior pass, large enough to keep the
    products efficient: for K = 64 a 1024-frame block's fixed costs (BLAS
    calls and packing, the statistics' float64 sum) show, and 2048 frames
    run 5–8% faster on two workers; for K = 256–512, 1024 frames are a few
    percent ahead of 512 and 2048 (``scripts/bench_em.py --kernel-only``).
    Hence about 2^17 frame·components per block, 1024 to 4096 frames (4096
    keeps [x², x, 1] at 2 MiB for D = 60 even for K = 1).
    """
    k = max(n_components, 1)
    frames = int(np.clip((1 << 17) // k, 1024, 4096))
    return max(256, min(frames, (1 << 19) // k))
