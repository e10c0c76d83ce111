"""Training the i-vector extractor over workers: statistics once into a file, then EM on that file.

The statistics of every training utterance (:mod:`spkver.ivector.statistics`)
are written once, shard by shard, into a memory-mapped ``.npy`` file of
float32 rows, so memory stays bounded whatever the number of utterances;
each EM iteration then reads the file a batch at a time. Both passes run
through :class:`spkver.gmm.engine.Engine` (processes or Dask) in fixed
shards, so the model is bit-identical whatever the workers.
"""

from __future__ import annotations

import numpy as np

from spkver.gmm.engine import Engine
from spkver.ivector.extractor import TrainingState, shards_of, train_total_variability
from spkver.ivector.statistics import utterance_statistics

# Utterances whose statistics one shard computes (a fixed number: the file is the same whatever the workers).
STATISTICS_SHARD = 16


def segments_of(lengths, segment_frames: int | None) -> list[tuple[int, int, int]]:
    """``(recording, start, stop)`` pieces: recordings longer than two segments are cut into segments.

    A recording of ``n ≥ 2·segment_frames`` frames becomes ``n // segment_frames``
    equal pieces (the remainder spread over them); shorter ones stay whole.
    None keeps every recording whole.
    """
    pieces = []
    for index, n in enumerate(lengths):
        count = 1 if not segment_frames or n < 2 * segment_frames else n // segment_frames
        bounds = np.linspace(0, n, count + 1).round().astype(int)
        pieces.extend((index, int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]))
    return pieces


def _statistics_task(arrays, shard, gmm, path):
    """Statistics of one shard's pieces ``(recording, start, stop, row)``, written to their rows of ``path``."""
    out = np.load(path, mmap_mode="r+")
    for i, a, b, row in shard:
        out[row] = utterance_statistics(gmm, arrays[i][a:b])
    out.flush()


def write_statistics(gmm, arrays, pieces, path, *, workers=1, scheduler=None, paths=None,
                     columns: slice = slice(None)) -> np.ndarray:
    """Statistics rows of ``pieces`` of ``arrays`` (their ``columns``, which ``gmm`` models) into a new float32
    ``.npy`` at ``path``, memory-mapped.

    ``paths`` (the ``.npy`` files behind ``arrays``) are needed with a Dask
    ``scheduler``; then ``path`` must be on storage every worker can write.
    """
    width = gmm.n_components * (1 + gmm.dim)
    np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(len(pieces), width)).flush()
    numbered = [(i, a, b, row) for row, (i, a, b) in enumerate(pieces)]
    shards = [numbered[start:start + STATISTICS_SHARD] for start in range(0, len(numbered), STATISTICS_SHARD)]
    with Engine(arrays, workers, scheduler, paths, shards=shards, columns=columns) as engine:
        engine.map_shards(_statistics_task, gmm, str(path))
    return np.load(path, mmap_mode="r")


def train_extractor(rows, path, n_components: int, dim: int, *, rank: int, iterations: int, seed: int = 0,
                    workers: int = 1, scheduler=None, state: TrainingState | None = None, on_iteration=None,
                    on_checkpoint=None) -> TrainingState:
    """:func:`~spkver.ivector.extractor.train_total_variability` on statistics ``rows`` stored at ``path``."""
    with Engine([rows], workers, scheduler, [path], shards=shards_of(len(rows))) as engine:
        return train_total_variability(rows, n_components, dim, rank=rank, iterations=iterations, seed=seed,
                                       engine=engine, state=state, on_iteration=on_iteration,
                                       on_checkpoint=on_checkpoint)

