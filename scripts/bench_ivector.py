#!/usr/bin/env python3
"""i-vector speed: spkver vs SIDEKIT 1.4, T-matrix training per iteration and extraction per hour of audio.

    python scripts/bench_ivector.py [--components 512] [--dim 60] [--rank 400] [--utterances 200]
                                    [--frames-per-utterance 300] [--iterations 3] [--workers N]

Both tools get the same statistics and the same starting T in the same run.
A random diagonal UBM (K components, D dimensions) generates each
utterance's frames (its means shifted along a few random directions, so the
utterances differ as speakers and sessions do); spkver's
``raw_statistics`` gives their Baum-Welch statistics. SIDEKIT receives the
raw sums (it centres and whitens them itself); spkver receives the rows of
``normalise_statistics`` made from those same sums, as a float64 ``.npy``
file read memory-mapped, as ``spkver train-ivector`` reads its statistics
file. The start is spkver's ``initial_matrix`` (seeded), handed to spkver as
a ``TrainingState`` and to SIDEKIT as ``tv_init``: their own random starts
differ (SIDEKIT's is unscaled).

Each part runs in a child process of its own, so each peak memory figure is
that part's alone: the statistics; spkver's training
(``spkver.ivector.training.train_extractor`` with ``--workers`` processes,
each one BLAS thread); SIDEKIT's training in one process with ``--workers``
BLAS threads and, if ``--workers`` > 1, its multi-process variant with that
many E-step processes of one BLAS thread each; then extraction of the same
utterances by spkver (``extract_ivectors``: one process, one BLAS thread)
and by SIDEKIT (one process with one BLAS thread, and with ``--workers``
threads or processes). Seconds per iteration count one E-step, M-step and
minimum divergence (both tools' default); spkver's last E-step (the final
likelihood, which SIDEKIT does not compute) is printed apart. Extraction
time per utterance does not depend on its length once its statistics exist;
per hour of audio assumes utterances of ``--frames-per-utterance`` frames
at a 10 ms hop (300 frames: 3 s, so 1200 utterances an hour).

spkver's training runs twice more, on the statistics repeated to 1024 and
2048 utterances (``MAX_SHARDS × SHARD_ROWS``, where its EM work reaches its
most shards, and twice that): the target asks for memory bounded as in UBM
training, i.e. the same whatever the number of utterances, and the two
times split spkver's iteration into a part per iteration and a part per
utterance (SIDEKIT's is almost all per utterance, so the ratio grows with U).

Printed: the machine, one table (times, the ratio SIDEKIT / spkver, peak
memory of each part) and the checks: the two tools' i-vectors from the same T
agree, and so do their T after one iteration from the same start without
minimum divergence (SIDEKIT's minimum divergence multiplies by the upper
Cholesky factor where spkver, like Kaldi, uses the lower one, so T differ
after it while spanning the same space).

SIDEKIT lives in its own virtual environment with this checkout installed
editable beside it (SIDEKIT needs torch; ``torch==2.13.0`` is the CPU wheel
used here)::

    python -m venv venv-bench
    venv-bench/bin/pip install sidekit torch==2.13.0
    venv-bench/bin/pip install -e .
    venv-bench/bin/python scripts/bench_ivector.py

The editable install times whatever that checkout's tree holds when the
run starts (the header prints where spkver was imported from); to time
another checkout with the same environment, put it first on the path:
``PYTHONPATH=/path/to/checkout venv-bench/bin/python scripts/bench_ivector.py``.

The torchaudio wheel pip installs with it does not load with that torch;
SIDEKIT only needs it for its neural networks, so an empty
``sys.modules['torchaudio']`` stands in for it (``sidekit_peer.py``, the
SIDEKIT half of this benchmark, beside this script). Without SIDEKIT the
script says so and exits with status 2.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HOP_SECONDS = 0.01
# Spread of the random UBM's means (the variances are 0.5–2): about 4 components per frame take a
# posterior above 0.01 and the largest is 0.8 on average, about what a speech UBM gives.
MEAN_SPREAD = 0.5
# The utterances' means move along this many random directions (the "speakers and sessions").
TRUE_RANK = 20
# Tolerance of the checks, relative to the largest entry compared.
TOLERANCE = 1e-8
INSTALL = """SIDEKIT is not installed in this Python ({python}).
The benchmark runs SIDEKIT and spkver in one environment, e.g.:

    python -m venv venv-bench
    venv-bench/bin/pip install sidekit torch==2.13.0
    venv-bench/bin/pip install -e .
    venv-bench/bin/python scripts/bench_ivector.py
"""


# ---------------------------------------------------------------- memory of a part


def _rss_mib() -> float:
    """This process's resident set now (MiB)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _descendants(root: int) -> list[int]:
    """Process ids of ``root``'s children, grandchildren and so on (read from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:  # it ended meanwhile
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _proc_mib(pid: int, name: str, field: str) -> float:
    """A ``field: N kB`` line of ``/proc/<pid>/<name>`` in MiB (0 if the process has ended)."""
    try:
        with open(f"/proc/{pid}/{name}") as handle:
            for line in handle:
                if line.startswith(field):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class TreeMemory:
    """Peak total PSS of this process and all its descendants, sampled every ``interval`` seconds.

    SIDEKIT's multi-process variants and spkver's workers spread memory over
    forked processes that share pages; the proportional set size counts a
    shared page once in the sum, where summing resident sets would count it
    in every process. Sampling (every 0.5 s, about 1% of a core) may miss
    short peaks; each process's own peak RSS is exact and printed too.
    ``child_peak`` is the largest peak RSS (VmHWM) seen in a descendant.
    """

    def __init__(self, interval: float = 0.5):
        self.interval, self.peak, self.child_peak = interval, 0.0, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self):
        me = os.getpid()
        others = _descendants(me)
        self.peak = max(self.peak, sum(_proc_mib(pid, "smaps_rollup", "Pss:") for pid in [me, *others]))
        self.child_peak = max([self.child_peak, *(_proc_mib(pid, "status", "VmHWM:") for pid in others)])

    def _run(self):
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self):
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.sample()


class PartMemory:
    """Memory of a timed part: RSS before it, peak RSS of this process and of its largest child process, tree PSS."""

    def __enter__(self):
        self.before = _rss_mib()
        # Children ended before the part (torch's import starts some) are already in RUSAGE_CHILDREN.
        self.children_before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        self.tree = TreeMemory().__enter__()
        return self

    def __exit__(self, *exc):
        self.tree.__exit__(*exc)
        import multiprocessing

        # Reap finished pool processes (SIDEKIT closes its pools without joining them), so that
        # RUSAGE_CHILDREN includes them.
        gc.collect()
        multiprocessing.active_children()
        children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        # A larger maximum than before is exact (a child of this part reached it); otherwise the sampled one.
        child_peak = children / 1024 if children > self.children_before else self.tree.child_peak
        self.result = {
            "rss_before_mib": self.before,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_child_rss_mib": child_peak,
            "peak_tree_pss_mib": self.tree.peak,
        }


# ---------------------------------------------------------------- the parts (each in a child process)


def synthetic_ubm(k: int, d: int, seed: int):
    """Weights, means and variances of a random diagonal UBM."""
    rng = np.random.default_rng(seed)
    return rng.dirichlet(np.full(k, 5.0)), rng.normal(0.0, MEAN_SPREAD, (k, d)), rng.uniform(0.5, 2.0, (k, d))


def part_statistics(args, workdir: Path) -> dict:
    """Frames from the UBM, their raw and normalised statistics, and the common start, written to ``workdir``."""
    from spkver.gmm.kernels import softmax_rows
    from spkver.gmm.model import GMM, augment
    from spkver.ivector.extractor import initial_matrix
    from spkver.ivector.statistics import normalise_statistics, raw_statistics

    k, d, u, n = args.components, args.dim, args.utterances, args.frames_per_utterance
    weights, means, variances = synthetic_ubm(k, d, args.seed)
    gmm = GMM(weights, means, variances)
    rng = np.random.default_rng(args.seed + 1)
    directions = rng.normal(0.0, 0.5 / np.sqrt(TRUE_RANK), (TRUE_RANK, k, d))
    zeroth, first = np.zeros((u, k)), np.zeros((u, k, d))
    seconds = 0.0
    with PartMemory() as memory:
        for i in range(u):
            shifted = means + np.sqrt(variances) * np.tensordot(rng.standard_normal(TRUE_RANK), directions, 1)
            z = rng.choice(k, n, p=weights)
            frames = (shifted[z] + np.sqrt(variances[z]) * rng.standard_normal((n, d))).astype(np.float32)
            start = time.perf_counter()
            zeroth[i], first[i] = raw_statistics(gmm, frames)
            seconds += time.perf_counter() - start
    posteriors = augment(frames) @ gmm.projection()  # the last utterance: how soft the posteriors are
    softmax_rows(posteriors)
    rows = normalise_statistics(gmm, zeroth, first)
    np.savez(workdir / "ubm.npz", weights=weights, means=means, variances=variances)
    np.save(workdir / "stat0.npy", zeroth)
    np.save(workdir / "stat1.npy", first.reshape(u, k * d))
    np.save(workdir / "rows.npy", rows)
    np.save(workdir / "start.npy", initial_matrix(k, d, args.rank, rows, args.seed).matrix)
    return {"seconds": seconds, "per_frame_above_1pc": float((posteriors > 0.01).sum(axis=1).mean()),
            "top_posterior": float(posteriors.max(axis=1).mean()), **memory.result}


def _load(workdir: Path):
    ubm = np.load(workdir / "ubm.npz")
    return ((ubm["weights"], ubm["means"], ubm["variances"]), np.load(workdir / "start.npy"))


def scaling_sizes() -> tuple[int, int]:
    """Utterances of the two scaling runs: where spkver's EM work reaches its most shards, and twice that.

    Below ``MAX_SHARDS × SHARD_ROWS`` utterances more utterances also mean more
    shards (and accumulators); from there on only the batches read grow, so
    memory must stay the same from the first size to the second.
    """
    from spkver.ivector.extractor import MAX_SHARDS, SHARD_ROWS

    return MAX_SHARDS * SHARD_ROWS, 2 * MAX_SHARDS * SHARD_ROWS


def part_spkver_train(args, workdir: Path, tiled_rows: int | None = None) -> dict:
    """spkver's training over ``--workers`` processes; then one iteration without minimum divergence (check).

    ``tiled_rows`` trains instead on that many rows, the U statistics
    repeated, without the check: whether memory stays the same with more
    utterances, and how the time splits into a part per iteration and a
    part per utterance.
    """
    from spkver.ivector.extractor import TotalVariability, TrainingState, train_total_variability
    from spkver.ivector.training import train_extractor

    k, d = args.components, args.dim
    _, start_matrix = _load(workdir)
    path = workdir / "rows.npy"
    if tiled_rows:
        source = np.load(path, mmap_mode="r")
        path = workdir / f"rows_{tiled_rows}.npy"
        out = np.lib.format.open_memmap(path, mode="w+", dtype=source.dtype, shape=(tiled_rows, source.shape[1]))
        for start in range(0, tiled_rows, len(source)):
            out[start:start + len(source)] = source[: tiled_rows - start]
        out.flush()
        del out, source  # unmapped: the copy's pages are not this process's memory during the part
    rows = np.load(path, mmap_mode="r")  # as train-ivector reads its statistics file
    stamps = []
    with PartMemory() as memory:
        stamps.append(time.perf_counter())
        result = train_extractor(rows, path, k, d, rank=args.rank, iterations=args.iterations, seed=args.seed,
                                 workers=args.workers,
                                 state=TrainingState(TotalVariability(start_matrix, k, d), [], 0),
                                 on_iteration=lambda *_: stamps.append(time.perf_counter()),
                                 on_checkpoint=lambda _: stamps.append(time.perf_counter()))
        stamps.append(time.perf_counter())
    # stamps: start, then E-step ends and M-step ends alternating, the final E-step, the return.
    ends = stamps[2:-2:2]  # end of each iteration's M-step
    seconds = np.diff([stamps[0], *ends]).tolist()
    timing = {"seconds": seconds, "final_e_step": stamps[-2] - ends[-1], "rows_mib": path.stat().st_size / 2**20}
    if tiled_rows:
        return {**timing, **memory.result}
    check = train_total_variability(rows, k, d, rank=args.rank, iterations=1, minimum_divergence=False,
                                    state=TrainingState(TotalVariability(start_matrix, k, d), [], 0))
    np.save(workdir / "spkver_t1.npy", check.tv.matrix)
    np.save(workdir / "spkver_trained.npy", result.tv.matrix)
    return {**timing, **memory.result}


def part_sidekit_train(args, workdir: Path, processes: int, blas_threads: int, check: bool) -> dict:
    """SIDEKIT's training; with ``check``, then one iteration without minimum divergence."""
    from sidekit_peer import import_sidekit, sidekit_train_tv

    import_sidekit()  # before measuring: importing SIDEKIT (and torch) is not training
    ubm, start_matrix = _load(workdir)
    stat0, stat1 = np.load(workdir / "stat0.npy"), np.load(workdir / "stat1.npy")
    with PartMemory() as memory:
        trained, seconds = sidekit_train_tv(*ubm, stat0, stat1, args.rank, args.iterations, processes=processes,
                                            tv_init=start_matrix, blas_threads=blas_threads, workdir=workdir)
    np.save(workdir / f"sidekit_trained_{processes}.npy", trained)
    if check:
        t1, _ = sidekit_train_tv(*ubm, stat0, stat1, args.rank, 1, tv_init=start_matrix, min_div=False,
                                 blas_threads=blas_threads, workdir=workdir)
        np.save(workdir / "sidekit_t1.npy", t1)
    return {"seconds": seconds, **memory.result}


def part_spkver_extract(args, workdir: Path) -> dict:
    from spkver.ivector.extractor import TotalVariability, extract_ivectors

    _, start_matrix = _load(workdir)
    rows = np.load(workdir / "rows.npy", mmap_mode="r")
    with PartMemory() as memory:
        start = time.perf_counter()
        # A new TotalVariability: its packed T_kᵀT_k products are part of the work timed.
        ivectors = extract_ivectors(TotalVariability(start_matrix, args.components, args.dim), rows)
        seconds = time.perf_counter() - start
    np.save(workdir / "spkver_ivectors.npy", ivectors)
    return {"seconds": seconds, **memory.result}


def part_sidekit_extract(args, workdir: Path, processes: int, blas_threads: int) -> dict:
    from sidekit_peer import import_sidekit, sidekit_extract

    import_sidekit()
    ubm, start_matrix = _load(workdir)
    stat0, stat1 = np.load(workdir / "stat0.npy"), np.load(workdir / "stat1.npy")
    with PartMemory() as memory:
        ivectors, seconds = sidekit_extract(*ubm, start_matrix, stat0, stat1, processes=processes,
                                            blas_threads=blas_threads, workdir=workdir)
    np.save(workdir / f"sidekit_ivectors_{processes}_{blas_threads}.npy", ivectors)
    return {"seconds": seconds, **memory.result}


def run_child(args):
    workdir = Path(args.workdir)
    part, processes, threads = args.child, args.child_processes, args.child_threads
    if part == "statistics":
        result = part_statistics(args, workdir)
    elif part == "spkver-train":
        result = part_spkver_train(args, workdir)
    elif part.startswith("spkver-train-rows-"):
        result = part_spkver_train(args, workdir, tiled_rows=int(part.rsplit("-", 1)[1]))
    elif part == "sidekit-train":
        result = part_sidekit_train(args, workdir, processes, threads, check=processes == 1)
    elif part == "spkver-extract":
        result = part_spkver_extract(args, workdir)
    elif part == "sidekit-extract":
        result = part_sidekit_extract(args, workdir, processes, threads)
    else:
        raise SystemExit(f"unknown part {part}")
    print(json.dumps(result))


# ---------------------------------------------------------------- the parent: runs the parts, prints


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            model = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{model}, {os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable), {memory:.0f} GiB"


def versions() -> str:
    from importlib.metadata import version

    from threadpoolctl import threadpool_info

    import spkver

    blas = next((f"{i['internal_api']} {i['version']} ({i['num_threads']} threads by default)"
                 for i in threadpool_info() if i["user_api"] == "blas"), "unknown BLAS")
    return (f"Python {platform.python_version()}, numpy {np.__version__} with {blas}; "
            f"SIDEKIT {version('sidekit')}, torch {version('torch')}; spkver {spkver.__version__} "
            f"from {Path(spkver.__file__).parent}")


def measure(args, workdir, part, processes=1, threads=1):
    """Run one part in a fresh Python; its JSON result, or None (with its error shown) if it failed."""
    command = [sys.executable, __file__, "--child", part, "--workdir", str(workdir),
               "--child-processes", str(processes), "--child-threads", str(threads),
               "--components", str(args.components), "--dim", str(args.dim), "--rank", str(args.rank),
               "--utterances", str(args.utterances), "--frames-per-utterance", str(args.frames_per_utterance),
               "--iterations", str(args.iterations), "--workers", str(args.workers), "--seed", str(args.seed)]
    out = subprocess.run(command, capture_output=True, text=True)
    if out.returncode != 0:
        print(f"\n{part} ({processes} processes, {threads} threads) failed:\n{out.stderr[-3000:]}", file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def _memory_cell(result) -> str:
    child = result["peak_child_rss_mib"]
    children = f"; largest child {child:.0f}" if child > 0 else ""
    return (f"{result['peak_rss_mib']:.0f} ({result['rss_before_mib']:.0f} before){children} | "
            f"{result['peak_tree_pss_mib']:.0f}")


def _relative(a, b) -> float:
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--components", type=int, default=512, help="K, UBM components (512)")
    parser.add_argument("--dim", type=int, default=60, help="D, feature dimensions (60)")
    parser.add_argument("--rank", type=int, default=400, help="R, the i-vectors' dimension (400)")
    parser.add_argument("--utterances", type=int, default=200, help="U (200)")
    parser.add_argument("--frames-per-utterance", type=int, default=300, help="frames of each utterance (300 = 3 s)")
    parser.add_argument("--iterations", type=int, default=3, help="timed EM iterations (3)")
    parser.add_argument("--workers", type=int, default=os.cpu_count(),
                        help="spkver's worker processes; SIDEKIT's BLAS threads or processes (all cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--child-processes", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--child-threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(args)
        return
    if importlib.util.find_spec("sidekit") is None:
        print(INSTALL.format(python=sys.executable), file=sys.stderr)
        sys.exit(2)
    from spkver.ivector.extractor import batch_size

    k, d, r, u, w = args.components, args.dim, args.rank, args.utterances, args.workers
    utterance_seconds = args.frames_per_utterance * HOP_SECONDS
    per_hour = 3600 / utterance_seconds / u  # seconds for U utterances → seconds per hour of audio
    print(f"machine: {machine()}; load average before: {os.getloadavg()[0]:.2f}")
    print(versions())
    print(f"K = {k} components, D = {d}, rank R = {r}, U = {u} utterances of {args.frames_per_utterance} frames "
          f"({utterance_seconds:g} s at {HOP_SECONDS * 1000:g} ms hop: {3600 / utterance_seconds:g} utterances an "
          f"hour), timed iterations: {args.iterations}, --workers {w}\n")

    with tempfile.TemporaryDirectory(prefix="bench_ivector_") as tmp:
        workdir = Path(tmp)
        stats = measure(args, workdir, "statistics")
        if stats is None:
            sys.exit(1)
        configurations = [("spkver", "spkver-train", 1, 1, f"{w} worker processes × 1 BLAS thread"),
                          ("SIDEKIT", "sidekit-train", 1, w, f"1 process × {w} BLAS threads")]
        if w > 1:
            configurations.append(("SIDEKIT", "sidekit-train", w, 1,
                                   f"{w} E-step processes × 1 BLAS thread (+ gatherer, Manager, parent)"))
        training = [(tool, setting, measure(args, workdir, part, p, t))
                    for tool, part, p, t, setting in configurations]
        scaled = [measure(args, workdir, f"spkver-train-rows-{n}") for n in scaling_sizes()]
        extraction_configurations = [("spkver", "spkver-extract", 1, 1, "1 process × 1 BLAS thread"),
                                     ("SIDEKIT", "sidekit-extract", 1, 1, "1 process × 1 BLAS thread")]
        if w > 1:
            extraction_configurations += [("SIDEKIT", "sidekit-extract", 1, w, f"1 process × {w} BLAS threads"),
                                          ("SIDEKIT", "sidekit-extract", w, 1,
                                           f"{w} processes × 1 BLAS thread (+ collector, Manager, parent)")]
        extraction = [(tool, setting, measure(args, workdir, part, p, t))
                      for tool, part, p, t, setting in extraction_configurations]

        print("| task | tool | configuration | time | SIDEKIT / spkver | peak RSS MiB (RSS before the part) "
              "| peak PSS MiB, all processes |")
        print("|---|---|---|---|---|---|---|")
        print(f"| statistics | spkver `raw_statistics` | 1 process × default BLAS threads | "
              f"{stats['seconds'] * per_hour:.1f} s per hour of audio | not compared | {_memory_cell(stats)} |")
        ours = training[0][2]
        for tool, setting, result in training:
            ratio = (f"{np.mean(result['seconds']) / np.mean(ours['seconds']):.1f}×" if result and ours
                     and tool != "spkver" else "1")
            _training_row("T training", tool, setting, result, ratio)
        for n, result in zip(scaling_sizes(), scaled):
            _training_row(f"T training, {n} utterances (the U statistics repeated)", "spkver", configurations[0][4],
                          result, "")
        ours = extraction[0][2]
        for tool, setting, result in extraction:
            if result is None:
                print(f"| extraction | {tool} | {setting} | failed | | | |")
                continue
            ratio = f"{result['seconds'] / ours['seconds']:.1f}×" if ours and tool != "spkver" else "1"
            print(f"| extraction | {tool} | {setting} | {result['seconds'] * per_hour:.1f} s per hour of audio "
                  f"({result['seconds'] / u * 1000:.1f} ms per utterance) | {ratio} | {_memory_cell(result)} |")

        print(f"\nTimes: per iteration the mean of {args.iterations} (each in brackets): E-step, M-step and "
              f"minimum divergence; SIDEKIT's include reading its statistics file (it does so every iteration) "
              f"and, multi-process, starting its pool; spkver's first includes starting its pool.")
        if training[0][2] is not None:
            print(f"spkver's final E-step (the trained model's likelihood, which SIDEKIT does not compute): "
                  f"{training[0][2]['final_e_step']:.2f} s, not counted.")
        print(f"Statistics: {stats['per_frame_above_1pc']:.1f} components per frame have a posterior above 0.01, "
              f"the largest is {stats['top_posterior']:.2f} on average; not part of either extraction time.")
        print("Memory: peak RSS of the part's main process (the part's own child process: the statistics and "
              "SIDEKIT's import of torch are before it) and of its largest worker process; the PSS column sums "
              "the part's processes, shared pages counted once, sampled every 0.5 s.")
        packed = k * r * (r + 1) / 2 * 8 / 2**20
        print(f"spkver's arrays of fixed size, in each worker: T {k * d * r * 8 / 2**20:.0f} MiB, its packed "
              f"T_kᵀT_k {packed:.0f} MiB, accumulators {packed + (k * d + r) * r * 8 / 2**20:.0f} MiB, batches of "
              f"{batch_size(r)} utterances (≤ {batch_size(r) * r * r * 8 / 2**20:.0f} MiB per array); none grows with "
              f"the number of utterances.")
        if None not in scaled:
            _scaling(*scaled, *scaling_sizes())
        best = [np.mean(res["seconds"]) for _, _, res in training[1:] if res is not None]
        if training[0][2] is not None and best:
            speedup = min(best) / np.mean(training[0][2]["seconds"])
            verdict = "met" if speedup >= 5 else "NOT met"
            scope = "" if (k, r) == (512, 400) else f" (it is set at K = 512, R = 400; this run is K = {k}, R = {r})"
            print(f"Target ≥ 5× faster per iteration than SIDEKIT's fastest configuration here: "
                  f"{speedup:.1f}×, {verdict}{scope}.")

        print("\nchecks (largest difference relative to the largest entry; tolerance "
              f"{TOLERANCE:g}):")
        _check("i-vectors from the same T, spkver vs SIDEKIT (1 process)", workdir / "spkver_ivectors.npy",
               workdir / "sidekit_ivectors_1_1.npy")
        for _, _, p, t, _ in extraction_configurations[2:]:
            _check(f"i-vectors, SIDEKIT {p} process(es) × {t} BLAS thread(s) vs 1 × 1",
                   workdir / f"sidekit_ivectors_{p}_{t}.npy", workdir / "sidekit_ivectors_1_1.npy")
        _check("T after 1 iteration from the same start without minimum divergence, spkver vs SIDEKIT",
               workdir / "spkver_t1.npy", workdir / "sidekit_t1.npy")
        if w > 1:
            _check(f"T after the timed iterations, SIDEKIT {w} processes vs 1",
                   workdir / f"sidekit_trained_{w}.npy", workdir / "sidekit_trained_1.npy")
        if (workdir / "spkver_trained.npy").exists() and (workdir / "sidekit_trained_1.npy").exists():
            cosines = _principal_cosines(np.load(workdir / "spkver_trained.npy"),
                                         np.load(workdir / "sidekit_trained_1.npy"))
            print(f"- T after the timed iterations (with minimum divergence), spkver vs SIDEKIT: "
                  f"principal cosines of their column spaces min {cosines.min():.4f}, mean {cosines.mean():.4f} "
                  f"(1 = the same space; the two minimum-divergence steps make the paths part)")


def _training_row(task, tool, setting, result, ratio):
    """One training line of the table: the mean time per iteration (each in brackets), the ratio, memory."""
    if result is None:
        print(f"| {task} | {tool} | {setting} | failed | | | |")
        return
    each = ", ".join(f"{s:.2f}" for s in result["seconds"])
    print(f"| {task} | {tool} | {setting} | {np.mean(result['seconds']):.2f} s per iteration ({each}) | {ratio} | "
          f"{_memory_cell(result)} |")


def _scaling(single, double, u, u2):
    """What more utterances (u2 against u, with the same shards) do to spkver's training: time and memory."""
    t1, t2 = np.mean(single["seconds"]), np.mean(double["seconds"])
    per_utterance = (t2 - t1) / (u2 - u)
    print(f"spkver's time per iteration ≈ {t1 - per_utterance * u:.2f} s + {per_utterance * 1000:.1f} ms per "
          f"utterance (from {u} and {u2} utterances, both in the most shards; the first part is T_kᵀT_k, the "
          f"M-step, sending T to the workers and summing the shards' accumulators).")
    # The larger of the two growths: the main process's peak is exact, the sum over processes sampled.
    growth = max(double["peak_rss_mib"] - single["peak_rss_mib"],
                 double["peak_tree_pss_mib"] - single["peak_tree_pss_mib"])
    mapped = double["rows_mib"] - single["rows_mib"]
    verdict = ("bounded" if growth <= mapped + 64 else
               f"NOT bounded: {growth / (u2 - u) * 1000:.0f} MiB more per 1000 utterances")
    print(f"spkver's memory with {u2} utterances: peak RSS {double['peak_rss_mib']:.0f} MiB vs "
          f"{single['peak_rss_mib']:.0f}, PSS of all processes {double['peak_tree_pss_mib']:.0f} vs "
          f"{single['peak_tree_pss_mib']:.0f} MiB (+{growth:.0f} MiB at most, of which the statistics file, "
          f"mapped, +{mapped:.0f} MiB): {verdict}.")


def _check(label, ours_path, theirs_path):
    if not (ours_path.exists() and theirs_path.exists()):
        print(f"- {label}: not available (a part failed)")
        return
    difference = _relative(np.load(ours_path), np.load(theirs_path))
    print(f"- {label}: {difference:.1e} {'ok' if difference <= TOLERANCE else 'FAILED'}")


def _principal_cosines(a, b):
    qa, _ = np.linalg.qr(a)
    qb, _ = np.linalg.qr(b)
    return np.linalg.svd(qa.T @ qb, compute_uv=False)


if __name__ == "__main__":
    main()
