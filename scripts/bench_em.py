#!/usr/bin/env python3
"""EM speed: spkver vs scikit-learn GaussianMixture(covariance_type="diag"), same data, same start.

    python scripts/bench_em.py [--components 64 256 512 1024] [--frames 100000 1000000] [--big] [--kernel]

For each (M, N) both run in a fresh process (so peak RSS is each one's own):
seconds per EM iteration, peak RSS, achieved GFLOP/s, and the ratio. spkver's
run is bracketed by measurements of the float32 GEMM throughput of all
cores, just before and just after it (this VM's throughput drifts by ±15%
over minutes), and its "% of GEMM" is against their mean; each cell shows
the median of ``--repeats`` such runs (3). spkver's seconds per iteration are the
median of ``--iterations`` timed iterations after a first E-step (which warms
the worker pool). scikit-learn is skipped where its float64 N × M work arrays
would not fit in memory (said in the table). ``--big`` also trains a
1024-component UBM on 10 million frames from a memory-mapped feature store;
``--kernel`` (``--kernel-only``) times the compiled posterior pass against numpy
and the one-core E-step per chunk size against the products alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

D = 60
MEMORY_BYTES = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def gemm_gflops(threads=None, n=3072, repeats=5):
    """Measured float32 matrix-product throughput (median of ``repeats``)."""
    from threadpoolctl import threadpool_limits

    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    with threadpool_limits(threads):
        a @ a
        seconds = np.median([_timed(lambda: a @ a) for _ in range(repeats)])
    return 2 * n**3 / seconds / 1e9


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def data_and_start(n, m, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=3.0, size=(64, D))
    x = (centres[rng.integers(0, 64, n)] + rng.standard_normal((n, D))).astype(np.float32)
    means = x[rng.choice(n, m, replace=False)].astype(np.float64)
    return x, np.full(m, 1.0 / m), means, np.ones((m, D))


def run_one(tool, n, m, iterations):
    """Runs in a child process: prints seconds per iteration and peak RSS (MB)."""
    import resource

    x, weights, means, variances = data_and_start(n, m)
    result = {}
    if tool == "spkver":
        from spkver.gmm.em import em_iterations
        from spkver.gmm.engine import Engine
        from spkver.gmm.model import GMM

        arrays = [x]
        stamps = []
        with Engine(arrays, workers=int(os.environ.get("BENCH_WORKERS", os.cpu_count()))) as engine:
            em_iterations(GMM(weights, means, variances), arrays, iterations, np.full(D, 1e-3),
                          np.random.default_rng(0), tol=-1, engine=engine,
                          on_iteration=lambda *_: stamps.append(time.perf_counter()))
        per_iteration = float(np.median(np.diff(stamps)))  # one M-step and one E-step each
    else:
        import warnings

        from sklearn.mixture import GaussianMixture

        gm = GaussianMixture(m, covariance_type="diag", weights_init=weights, means_init=means,
                             precisions_init=1 / variances, max_iter=iterations, tol=0, reg_covar=1e-6)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = _timed(lambda: gm.fit(x))
        per_iteration = t / (iterations + 1)  # fit runs one more E-step after the loop
    result["seconds"] = per_iteration
    result["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def median_spkver_run(n, m, iterations, repeats, flops):
    """``repeats`` spkver runs, each bracketed by GEMM measurements; the run with the median % of GEMM."""
    runs = []
    for _ in range(repeats):
        gemm_before = gemm_gflops()
        run = measure("spkver", n, m, iterations)
        run["gemm"] = (gemm_before + gemm_gflops()) / 2
        runs.append(run)
    runs.sort(key=lambda r: flops / r["seconds"] / r["gemm"])
    return runs[len(runs) // 2]


def measure(tool, n, m, iterations):
    out = subprocess.run([sys.executable, __file__, "--child", tool, str(n), str(m), str(iterations)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def sklearn_bytes(n, m):
    """scikit-learn's E-step holds about six float64 N × M arrays at once."""
    return 6.2 * n * m * 8 + n * D * 8


def big_run():
    """1024 components on 10 million frames (2.4 GB of features on disk), two EM iterations."""
    from spkver.api import train_ubm
    from spkver.features.config import FeatureConfig
    from spkver.features.store import FeatureStore

    with tempfile.TemporaryDirectory(prefix="spkver-big-") as tmp:
        rng = np.random.default_rng(0)
        centres = rng.normal(scale=3.0, size=(256, D)).astype(np.float32)
        entries = {}
        for i in range(20):
            frames = centres[rng.integers(0, 256, 500_000)] + rng.standard_normal((500_000, D), dtype=np.float32)
            np.save(os.path.join(tmp, f"{i:024d}.npy"), frames)
            entries[f"{i:024d}"] = {"source": f"/big/{i}", "size": 1, "mtime_ns": 1, "frames": 500_000}
        with open(os.path.join(tmp, "index.json"), "w") as handle:
            config = FeatureConfig(n_ceps=20, pitch=False, norm="cmn")  # D = 60: 20 cepstra + Δ + ΔΔ, one system
            json.dump({"format": 1, "feature_config": config.to_dict(), "entries": entries}, handle)
        times = []
        peak_before = gemm_gflops()
        start = time.perf_counter()
        model = train_ubm(None, n_components=1024, iterations=2, features_dir=FeatureStore(tmp).root,
                          on_iteration=lambda step, avg, gain: times.append(time.perf_counter()))
        import resource

        total = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        per_iteration = np.diff(times).mean()
        gflops, gemm = 4 * 10_000_000 * 1024 * (2 * D + 1) / per_iteration / 1e9, (peak_before + gemm_gflops()) / 2
        print(f"\n1024 components x 10 000 000 frames (D = 60, 2.4 GB memory-mapped): "
              f"{per_iteration:.1f} s per EM iteration ({gflops:.1f} GFLOP/s, {100 * gflops / gemm:.0f}% of "
              f"{gemm:.1f} measured around it), {total:.0f} s for init + 2 iterations, "
              f"peak RSS {peak:.0f} MB (mapped feature pages included), "
              f"average log-likelihood {model.meta['training']['average_log_likelihood']:.3f}")


def scaling_plot(rows, path):
    """Seconds per EM iteration against M, one line per N and tool, on log-log axes with a slope-1 guide."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for colour, n in enumerate(sorted({r[0] for r in rows})):
        mine = [(m, ours, theirs) for frames, m, ours, theirs in rows if frames == n]
        ax.plot([m for m, _, _ in mine], [o for _, o, _ in mine], "o-", color=f"C{colour}", label=f"spkver, N = {n:,}")
        known = [(m, t) for m, _, t in mine if t is not None]
        if known:
            ax.plot(*zip(*known), "s--", color=f"C{colour}", label=f"scikit-learn, N = {n:,}")
    ms = np.array(sorted({r[1] for r in rows}), dtype=float)
    top = max(r[2] for r in rows if r[1] == ms[-1])
    ax.plot(ms, top * ms / ms[-1], ":", color="grey", label="linear in M")
    ax.set(xscale="log", yscale="log", xlabel="components M", ylabel="seconds per EM iteration",
           title="EM iteration time (D = 60)")
    ax.set_xticks(ms, [str(int(m)) for m in ms])
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"\nplot: {path}")


def kernel_run(components, frames=25_000, rounds=15):
    """One core: the posterior pass, compiled vs numpy; then the E-step per chunk size against GEMM."""
    from threadpoolctl import threadpool_limits

    from spkver.gmm.chunks import default_chunk_size
    from spkver.gmm.estep import accumulate
    from spkver.gmm.kernels import _numpy_softmax_rows, softmax_rows
    from spkver.gmm.model import GMM, augment

    scores = (np.random.default_rng(0).standard_normal((2048, 512)) * 30).astype(np.float32)
    print("\nposterior pass (max, exp, sum, normalisation) on 2048 x 512 scores, one core (median of 50):")
    with threadpool_limits(1):
        for name, fn in (("spkver compiled", softmax_rows), ("numpy", _numpy_softmax_rows)):
            work = scores.copy()
            fn(work)
            seconds = np.median([_timed(lambda f=fn, w=work: f(w)) for _ in range(50)])
            print(f"  {name}: {seconds * 1e3:.2f} ms, {seconds / scores.size * 1e9:.2f} ns per element")

    chunks = (256, 512, 1024, 2048)
    print(f"\nE-step on {frames:,} frames, one core, % of one-core GEMM (2048³) measured between runs; "
          f"median of {rounds} interleaved rounds; * = default chunk size. Last column: the two matrix "
          f"products alone at the default chunk size, the ceiling for a BLAS-based E-step of that shape")
    print("| M | " + " | ".join(f"{c} frames" for c in chunks) + " | products alone |")
    print("|---|" + "---|" * (len(chunks) + 1))
    square = np.random.default_rng(0).standard_normal((2048, 2048), dtype=np.float32)
    with threadpool_limits(1):
        for m in components:
            x, weights, means, variances = data_and_start(frames, m)
            gmm, flops = GMM(weights, means, variances), 4 * frames * m * (2 * D + 1)
            ratios = {c: [] for c in (*chunks, "products")}
            z = augment(x[: default_chunk_size(m)])
            projection, posteriors = gmm.projection(), np.empty((len(z), m), np.float32)
            sums = np.empty((m, 2 * D + 1), np.float32)

            def products(z=z, p=projection, g=posteriors, out=sums, repeat=-(-frames // len(z))):
                for _ in range(repeat):
                    np.matmul(z, p, out=g)
                    np.matmul(g.T, z, out=out)

            for _ in range(rounds):
                gemm = 2 * 2048**3 / _timed(lambda: square @ square)
                for c in chunks:
                    seconds = _timed(lambda g=gmm, a=x, c=c: accumulate(g, a, chunk_size=c))
                    ratios[c].append(flops / seconds / gemm)
                ratios["products"].append(flops / _timed(products) / gemm)
            cells = [f"{100 * np.median(ratios[c]):.0f}%{'*' if c == default_chunk_size(m) else ''}"
                     for c in (*chunks, "products")]
            print(f"| {m} | " + " | ".join(cells) + " |", flush=True)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        run_one(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--components", type=int, nargs="+", default=[64, 256, 512, 1024])
    parser.add_argument("--frames", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="spkver runs per cell; the median one is shown")
    parser.add_argument("--big", action="store_true")
    parser.add_argument("--kernel", action="store_true", help="also time the kernel on one core")
    parser.add_argument("--kernel-only", action="store_true", help="time the kernel on one core, nothing else")
    parser.add_argument("--plot", metavar="PNG", help="draw seconds per iteration against M and N (matplotlib)")
    args = parser.parse_args()
    if args.kernel_only:
        kernel_run(args.components)
        return
    cores = os.cpu_count()
    peak_all, peak_one = gemm_gflops(), gemm_gflops(1)
    print(f"machine: {platform.processor() or platform.machine()}, {cores} cores, "
          f"{MEMORY_BYTES / 2**30:.0f} GiB; numpy {np.__version__}")
    print(f"measured float32 GEMM at the start: {peak_all:.1f} GFLOP/s on {cores} cores, {peak_one:.1f} on one\n")
    print("| M | N | spkver s/iter | sklearn s/iter | speed-up | spkver GFLOP/s | GEMM GFLOP/s | % of GEMM "
          "| ns per frame·component | spkver peak MB | sklearn peak MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for n in args.frames:
        for m in args.components:
            flops = 4 * n * m * (2 * D + 1)
            ours = median_spkver_run(n, m, args.iterations, args.repeats, flops)
            if sklearn_bytes(n, m) > 0.8 * MEMORY_BYTES:
                theirs, note = None, f"cannot run: needs ~{sklearn_bytes(n, m) / 2**30:.0f} GiB"
            else:
                theirs = measure("sklearn", n, m, args.iterations)
                note = "failed" if theirs is None else f"{theirs['seconds']:.2f}"
            ratio = f"{theirs['seconds'] / ours['seconds']:.1f}x" if theirs else "-"
            gflops = flops / ours["seconds"] / 1e9
            rows.append((n, m, ours["seconds"], theirs["seconds"] if theirs else None))
            print(f"| {m} | {n:,} | {ours['seconds']:.3f} | {note} | {ratio} | {gflops:.1f} | {ours['gemm']:.1f} | "
                  f"{100 * gflops / ours['gemm']:.0f}% | {ours['seconds'] / (n * m) * 1e9:.1f} | "
                  f"{ours['peak_mb']:.0f} | {theirs['peak_mb'] if theirs else float('nan'):.0f} |", flush=True)
    print(f"\nFLOPs counted: the two matrix products, 4 N M (2D + 1) per iteration; spkver float32 with float64 "
          f"sums, scikit-learn float64. GEMM: {cores}-core float32 3072³ product, median of 5, measured just "
          f"before and after each spkver run; the median of {args.repeats} spkver runs is shown. "
          f"Data: N x {D} float32 = {4 * D} bytes per frame.")
    if args.plot:
        scaling_plot(rows, args.plot)
    if args.kernel:
        kernel_run(args.components)
    if args.big:
        big_run()


if __name__ == "__main__":
    main()
