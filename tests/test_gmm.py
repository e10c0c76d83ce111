"""The mixture layer (spkver.gmm): EM against scikit-learn and SciPy, kernels and chunks, MAP adaptation, and the
training engine (shards, workers, memory-mapped streaming, resume, Dask, byte-identical models)."""

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from helpers import python_output
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import multivariate_normal
from sklearn.mixture import GaussianMixture

from spkver.audio.sources import find_audio
from spkver.errors import SpkverError
from spkver.features.config import FeatureConfig
from spkver.features.store import FeatureStore
from spkver.gmm.chunks import default_chunk_size, iter_chunks
from spkver.gmm.em import components_for, em_iterations, m_step, train
from spkver.gmm.engine import Engine, make_shards, shard_size
from spkver.gmm.estep import Statistics, accumulate
from spkver.gmm.initialise import kmeans
from spkver.gmm.map import map_adapt
from spkver.gmm.model import GMM, augment, logsumexp_rows
from spkver.run import RunOptions


def three_blobs(rng, n=400, d=4):
    centres = np.array([[-4.0] * d, [0.0] * d, [4.0] * d])
    return np.vstack([rng.normal(c, 1.0 + 0.3 * i, size=(n, d)) for i, c in enumerate(centres)])


def start_from(x, k, rng):
    return GMM(np.full(k, 1.0 / k), x[rng.choice(len(x), k, replace=False)], np.ones((k, x.shape[1])))


def sklearn_after(start, x, iterations):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return GaussianMixture(
            start.n_components, covariance_type="diag", weights_init=start.weights,
            means_init=start.means, precisions_init=1.0 / start.variances, max_iter=iterations,
            tol=0.0, reg_covar=0.0,
        ).fit(x)


@pytest.mark.parametrize("iterations", [1, 3, 8])
@pytest.mark.parametrize("k", [3, 12])  # fewer and more components than [x², x, 1] has columns (9)
def test_em_equals_sklearn_from_the_same_start(iterations, k):
    rng = np.random.default_rng(0)
    x = three_blobs(rng)
    start = start_from(x, k, rng)
    ours = em_iterations(start, [x], iterations, np.full(x.shape[1], 1e-12), rng, tol=-np.inf,
                         dtype=np.float64, chunk_size=97)
    ref = sklearn_after(start, x, iterations)
    np.testing.assert_allclose(ours.gmm.weights, ref.weights_, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ours.gmm.means, ref.means_, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(ours.gmm.variances, ref.covariances_, rtol=1e-9)
    assert ours.history[-1] == pytest.approx(ref.score(x), rel=1e-12)


def test_float32_kernel_is_close_to_float64():
    rng = np.random.default_rng(1)
    x = three_blobs(rng, d=20)
    start = start_from(x, 8, rng)
    s32 = accumulate(start, [x], np.float32)
    s64 = accumulate(start, [x], np.float64)
    np.testing.assert_allclose(s32.zeroth, s64.zeroth, rtol=1e-3, atol=1e-2)
    assert s32.average_log_likelihood == pytest.approx(s64.average_log_likelihood, rel=1e-5)


def test_log_likelihood_matches_scipy_densities():
    rng = np.random.default_rng(2)
    gmm = GMM(np.array([0.3, 0.7]), rng.normal(size=(2, 3)), rng.uniform(0.5, 2, size=(2, 3)))
    x = rng.normal(size=(50, 3))
    expected = np.log(sum(w * multivariate_normal(m, np.diag(v)).pdf(x)
                          for w, m, v in zip(gmm.weights, gmm.means, gmm.variances)))
    np.testing.assert_allclose(gmm.frame_log_likelihood(x), expected, rtol=1e-10)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 6), d=st.integers(1, 5))
def test_average_log_likelihood_never_decreases(seed, k, d):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((300, d)) * rng.uniform(0.5, 3, size=d) + rng.integers(0, 3, size=(300, 1))
    floor = np.full(d, 1e-3) * x.var(0)
    result = em_iterations(start_from(x, k, rng), [x], 15, floor, rng, tol=-np.inf, dtype=np.float64)
    if result.reseeded == 0:
        assert np.all(np.diff(result.history) >= -1e-9 * np.abs(result.history[:-1]))


def test_known_mixture_is_recovered():
    rng = np.random.default_rng(3)
    weights = np.array([0.2, 0.3, 0.5])
    means = np.array([[-5.0, 0.0], [0.0, 5.0], [5.0, -2.0]])
    stds = np.array([[0.5, 1.0], [1.0, 0.7], [0.8, 0.8]])
    labels = rng.choice(3, size=20000, p=weights)
    x = (means[labels] + stds[labels] * rng.standard_normal((20000, 2))).astype(np.float32)
    fit = train([x], 3, iterations=50, seed=0).gmm
    order = np.argsort(fit.means[:, 0])
    np.testing.assert_allclose(fit.weights[order], weights, atol=0.01)
    np.testing.assert_allclose(fit.means[order], means, atol=0.05)
    np.testing.assert_allclose(np.sqrt(fit.variances[order]), stds, atol=0.05)


@pytest.mark.parametrize("init", ["kmeans", "split"])
def test_training_is_deterministic_for_a_seed(init):
    x = three_blobs(np.random.default_rng(4)).astype(np.float32)
    parts = [x[:500], x[500:]]
    a = train(parts, 5, iterations=5, init=init, seed=11).gmm
    b = train(parts, 5, iterations=5, init=init, seed=11).gmm
    assert np.array_equal(a.means, b.means) and np.array_equal(a.variances, b.variances)
    assert a.n_components == 5


def test_split_init_reaches_non_power_of_two_sizes_and_improves_likelihood():
    x = three_blobs(np.random.default_rng(5)).astype(np.float32)
    result = train([x], 6, iterations=10, init="split")
    assert result.gmm.n_components == 6
    assert result.history[-1] > train([x], 1, iterations=1).history[-1]


def test_stops_early_when_converged():
    x = three_blobs(np.random.default_rng(6)).astype(np.float32)
    result = train([x], 3, iterations=200, tol=1e-6)
    assert result.converged and len(result.history) < 201


def test_identical_frames_and_constant_dimension_stay_finite():
    x = np.zeros((500, 3), dtype=np.float32)
    x[:, 0] = np.repeat(np.arange(5), 100)  # five distinct frames, dims 1-2 constant
    result = train([x], 8, iterations=5)
    for array in (result.gmm.weights, result.gmm.means, result.gmm.variances):
        assert np.isfinite(array).all()
    assert (result.gmm.variances > 0).all()


def test_component_without_frames_is_reported_and_reseeded():
    x = np.random.default_rng(7).normal(size=(200, 2))
    far = GMM(np.array([0.5, 0.5]), np.array([[0.0, 0.0], [1e4, 1e4]]), np.ones((2, 2)))
    gmm, dead = m_step(accumulate(far, [x], np.float64), np.full(2, 1e-3))
    assert dead.tolist() == [False, True]
    result = em_iterations(far, [x], 3, np.full(2, 1e-3), np.random.default_rng(0), tol=-np.inf)
    assert result.reseeded >= 1 and np.isfinite(result.gmm.means).all()


def test_chunking_packs_short_arrays_without_losing_frames():
    arrays = [np.full((n, 2), i, dtype=np.float32) for i, n in enumerate([3, 0, 7, 1, 10])]
    blocks = list(iter_chunks(arrays, 4))
    assert [len(b) for b in blocks] == [4, 4, 4, 4, 4, 1]
    np.testing.assert_array_equal(np.concatenate(blocks), np.concatenate(arrays))
    assert max(len(b) for b in blocks) <= 4


def test_kmeans_separates_clear_clusters():
    rng = np.random.default_rng(8)
    centres_true = np.array([[-20.0, 0.0], [0.0, 20.0], [20.0, 0.0]])
    x = np.vstack([rng.normal(c, 1.0, size=(200, 2)) for c in centres_true])
    centres, labels = kmeans(x, 3, rng)
    assert sorted(np.bincount(labels).tolist()) == [200, 200, 200]


def test_too_few_frames_raise():
    with pytest.raises(ValueError, match="frames"):
        train([np.zeros((3, 2), dtype=np.float32)], 4)


def test_augment_squares_in_the_requested_precision():
    frames = np.random.default_rng(11).normal(size=(9, 4)).astype(np.float32) * 1e3 + 0.1
    wide = frames.astype(np.float64)
    z = augment(frames, np.float64)
    assert np.array_equal(z[:, :4], wide**2) and np.array_equal(z[:, 4:8], wide) and np.all(z[:, 8] == 1.0)
    buffer = np.full((20, 9), np.nan, dtype=np.float32)
    assert np.array_equal(augment(frames, np.float32, buffer), augment(frames, np.float32))


def test_default_chunk_keeps_the_working_set_small_for_any_number_of_components():
    """The per-worker memory bound: a block's scores and [x², x, 1] stay a few MiB whatever K is."""
    for k in (1, 2, 63, 64, 100, 128, 256, 512, 1000, 1024, 2048, 8192, 65536):
        frames = default_chunk_size(k)
        assert 256 <= frames <= 4096
        assert frames * k * 4 <= max(2 << 20, 256 * k * 4)  # float32 scores: 2 MiB unless 256 frames exceed it
        assert frames * (2 * 60 + 1) * 4 <= 2 << 20  # [x², x, 1] for D = 60
    assert default_chunk_size(64) > default_chunk_size(512)  # small K: longer blocks for the same work per call


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k", [6, 16])  # fewer or more components than [x², x, 1] has columns (11)
def test_statistics_do_not_depend_on_the_chunk_size(dtype, k):
    """Reused per-chunk buffers: a short last chunk and one-frame chunks give the same sums."""
    rng = np.random.default_rng(10)
    arrays = [rng.normal(size=(n, 5)).astype(np.float32) for n in (50, 3, 120)]
    gmm = GMM(np.full(k, 1 / k), rng.normal(size=(k, 5)), rng.uniform(0.5, 2.0, size=(k, 5)))
    reference = accumulate(gmm, arrays, np.float64, chunk_size=173)
    tolerance = 1e-12 if dtype == np.float64 else 1e-5
    for chunk_size in (1, 7, 64, 4096):
        stats = accumulate(gmm, arrays, dtype, chunk_size=chunk_size)
        assert stats.n_frames == 173
        for got, want in ((stats.zeroth, reference.zeroth), (stats.first, reference.first),
                          (stats.second, reference.second)):
            np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance)
        assert stats.log_likelihood == pytest.approx(reference.log_likelihood, rel=tolerance)


def test_fused_softmax_kernel_matches_numpy_and_scipy():
    from scipy.special import logsumexp, softmax

    from spkver.gmm.kernels import POSTERIOR_FLOOR, _numpy_softmax_rows, softmax_rows

    rng = np.random.default_rng(9)
    scores = (rng.standard_normal((300, 77)) * 30 - 200).astype(np.float32)
    fused, plain = scores.copy(), scores.copy()
    fused_total, plain_total = softmax_rows(fused), _numpy_softmax_rows(plain)
    reference = scores.astype(np.float64)
    assert fused_total == pytest.approx(plain_total, rel=1e-6)
    assert fused_total == pytest.approx(logsumexp(reference, axis=1).sum(), rel=1e-6)
    np.testing.assert_allclose(fused, plain, rtol=2e-5, atol=POSTERIOR_FLOOR)
    np.testing.assert_allclose(fused, softmax(reference, axis=1), rtol=2e-5, atol=POSTERIOR_FLOOR)
    # Posteriors are 0 or at least the floor, on both paths: never subnormal, never a slow product after.
    for posteriors in (fused, plain):
        assert (posteriors == 0).any() and not ((posteriors > 0) & (posteriors < POSTERIOR_FLOOR)).any()
    far_below = np.full((1, 5), -1e30, np.float32)  # a row far below everything still gives finite results
    assert np.isfinite(softmax_rows(far_below))
    np.testing.assert_allclose(far_below, 0.2, rtol=1e-6)


@pytest.mark.parametrize("shape", [(300, 64), (300, 5, 21)])
def test_logsumexp_rows_equals_scipy(shape):
    """The hand-written log-sum-exp kept for speed (scripts/bench_logsumexp.py) does SciPy's job."""
    from scipy.special import logsumexp

    scores = np.random.default_rng(0).normal(-80, 10, size=shape)
    np.testing.assert_allclose(logsumexp_rows(scores), logsumexp(scores, axis=1), rtol=1e-12)


def ubm_and_data():
    rng = np.random.default_rng(0)
    ubm = GMM(np.array([0.5, 0.5]), np.array([[-2.0, 0.0], [2.0, 0.0]]), np.ones((2, 2)))
    x = rng.normal([2.5, 0.5], 0.8, size=(300, 2))
    return ubm, x, accumulate(ubm, [x], np.float64)


def test_hand_checked_mean_update():
    ubm = GMM(np.array([0.5, 0.5]), np.array([[0.0], [10.0]]), np.ones((2, 1)))
    # 16 frames' worth on component 0 with mean 2: alpha = 16 / (16 + 16) = 0.5.
    stats = Statistics(np.array([16.0, 0.0]), np.array([[32.0], [0.0]]), np.array([[80.0], [0.0]]))
    adapted = map_adapt(ubm, stats, relevance=16)
    np.testing.assert_allclose(adapted.means, [[1.0], [10.0]])
    np.testing.assert_allclose(adapted.variances, ubm.variances)
    full = map_adapt(ubm, stats, relevance=16, adapt="mwv")
    # weights: 0.5 * 16/16 + 0.5 * 0.5 = 0.75 and 0 + 1 * 0.5 = 0.5 -> normalised 0.6, 0.4
    np.testing.assert_allclose(full.weights, [0.6, 0.4])
    # variance: 0.5 * E[x^2]=5 + 0.5 * (1 + 0) - 1^2 = 2
    np.testing.assert_allclose(full.variances, [[2.0], [1.0]])


@pytest.mark.parametrize("mode", ["m", "mw", "mv", "mwv"])
def test_infinite_relevance_gives_the_ubm(mode):
    ubm, _, stats = ubm_and_data()
    adapted = map_adapt(ubm, stats, relevance=np.inf, adapt=mode)
    np.testing.assert_allclose(adapted.means, ubm.means)
    np.testing.assert_allclose(adapted.weights, ubm.weights)
    np.testing.assert_allclose(adapted.variances, ubm.variances)
    big = map_adapt(ubm, stats, relevance=1e12, adapt=mode)
    np.testing.assert_allclose(big.means, ubm.means, atol=1e-8)


def test_zero_relevance_gives_the_ml_estimate():
    ubm, _, stats = ubm_and_data()
    ml, _ = m_step(stats, 1e-10, min_count=0)
    adapted = map_adapt(ubm, stats, relevance=0.0, adapt="mwv")
    np.testing.assert_allclose(adapted.means, ml.means, rtol=1e-9)
    np.testing.assert_allclose(adapted.weights, ml.weights, rtol=1e-9)
    np.testing.assert_allclose(adapted.variances, ml.variances, rtol=1e-7)


def test_unseen_components_keep_ubm_parameters():
    ubm, _, stats = ubm_and_data()
    stats.zeroth[0] = 0.0
    adapted = map_adapt(ubm, stats, relevance=4, adapt="mv")
    np.testing.assert_allclose(adapted.means[0], ubm.means[0])
    np.testing.assert_allclose(adapted.variances[0], ubm.variances[0])


def test_log_density_bound_holds_and_map_beyond_it_is_a_user_error():
    from spkver.features.config import MAX_FEATURE_MAGNITUDE
    from spkver.gmm.model import MAX_LOG_DENSITY, log_density_bound

    ubm, _, _ = ubm_and_data()
    edge = np.array([[MAX_FEATURE_MAGNITUDE, -MAX_FEATURE_MAGNITUDE], [0.0, 0.0]])  # the worst frame and a plain one
    worst = np.abs(ubm.log_weighted_densities(edge, np.float64)).max(axis=0)
    assert (worst <= log_density_bound(ubm.weights, ubm.means, ubm.variances)).all()
    # A UBM whose bound is half the limit, adapted to frames at the features' largest value: the means move to
    # the edge, the bound quadruples, and the guard refuses the model as the user's problem (exit 2), not a bug.
    variance = MAX_FEATURE_MAGNITUDE**2 / MAX_LOG_DENSITY
    edge_ubm = GMM(np.ones(1), np.zeros((1, 1)), np.full((1, 1), variance))
    far = Statistics(np.array([100.0]), np.array([[100.0 * MAX_FEATURE_MAGNITUDE]]),
                     np.array([[100.0 * MAX_FEATURE_MAGNITUDE**2]]))
    with pytest.raises(SpkverError, match="adapted model cannot be evaluated"):
        map_adapt(edge_ubm, far, relevance=0.0)


def test_bad_arguments():
    ubm, _, stats = ubm_and_data()
    with pytest.raises(ValueError):
        map_adapt(ubm, stats, adapt="x")
    with pytest.raises(ValueError):
        map_adapt(ubm, stats, relevance=-1)


def blobs(seed=0, n=6000, d=6):
    rng = np.random.default_rng(seed)
    x = np.vstack([rng.normal(c, 1.0, size=(n // 3, d)) for c in (-3.0, 0.0, 3.0)]).astype(np.float32)
    return [x[i : i + 700] for i in range(0, len(x), 700)]


def test_shards_cover_every_frame_once():
    shards = make_shards([5, 0, 12, 3], shard_frames=4)
    covered = [(i, r) for shard in shards for i, a, b in shard for r in range(a, b)]
    assert covered == [(0, r) for r in range(5)] + [(2, r) for r in range(12)] + [(3, r) for r in range(3)]
    assert all(sum(b - a for _, a, b in shard) <= 4 for shard in shards)


@pytest.mark.parametrize("total", [1000, 50_000, 100_000, 300_000, 1_000_000, 10_000_000])
def test_default_shards_are_equal_and_divide_among_workers(total):
    shards = make_shards([total // 3, total - total // 3])
    sizes = [sum(b - a for _, a, b in shard) for shard in shards]
    assert sum(sizes) == total and max(sizes) <= 1 << 17 and shard_size(total) == sizes[0]
    assert len(set(sizes[:-1])) <= 1 and sizes[0] - sizes[-1] < len(sizes)  # equal up to rounding
    if total >= 4 << 14:  # 2 and 4 workers get the same number of frames (8 and 16 too up to 2M frames)
        assert len(shards) % 4 == 0 or len(shards) > 16


def test_one_and_many_workers_give_bit_identical_statistics_and_models():
    from threadpoolctl import threadpool_info

    arrays = blobs()
    gmm = GMM(np.full(4, 0.25), np.random.default_rng(1).normal(size=(4, 6)), np.ones((4, 6)))
    blas_threads = [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]
    with Engine(arrays, workers=1, shard_frames=1000) as one, Engine(arrays, workers=3, shard_frames=1000) as many:
        assert many.pool is not None and many.pool._max_workers == 2  # this process is the third worker
        a, b = one.accumulate(gmm), many.accumulate(gmm)
        assert np.array_equal(a.first, b.first) and np.array_equal(a.second, b.second)
        # this process computed its share with one BLAS thread, then got its threads back
        assert [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"] == blas_threads
        m1 = train(arrays, 4, iterations=5, seed=2, engine=one).gmm
        m2 = train(arrays, 4, iterations=5, seed=2, engine=many).gmm
    assert np.array_equal(m1.means, m2.means) and np.array_equal(m1.variances, m2.variances)
    # and the sharded sum equals the plain float64 computation within float32 round-off
    exact = accumulate(gmm, arrays, np.float64)
    np.testing.assert_allclose(a.zeroth, exact.zeroth, rtol=1e-4, atol=1e-3)
    assert a.average_log_likelihood == pytest.approx(exact.average_log_likelihood, rel=1e-6)


def test_em_streams_a_memory_mapped_store_with_bounded_memory(tmp_path):
    """EM over 600 000 frames (144 MB on disk) allocates a small fraction of that (after the JIT warm-up)."""
    config = FeatureConfig(n_ceps=20, deltas=2, pitch=False, norm="cmn")  # 60 dimensions
    rng = np.random.default_rng(0)
    entries = {}
    for i in range(4):
        frames = rng.standard_normal((150_000, 60)).astype(np.float32)
        np.save(tmp_path / f"{i:024d}.npy", frames)
        entries[f"{i:024d}"] = {"source": f"/x/{i}.wav", "size": 1, "mtime_ns": 1, "frames": 150_000}
    (tmp_path / "index.json").write_text(json.dumps({"format": 1, "feature_config": config.to_dict(),
                                                     "entries": entries}))
    code = (
        "import sys, tracemalloc; from spkver.features.store import FeatureStore; from spkver.gmm.em import train;"
        "import numpy as np; from spkver.gmm.kernels import softmax_rows;"
        "softmax_rows(np.zeros((2, 2), np.float32));"
        "arrays = FeatureStore(sys.argv[1]).arrays(); tracemalloc.start();"
        "train(arrays, 32, iterations=2, kmeans_frames=20000);"
        "print(tracemalloc.get_traced_memory()[1] // 2**20)"
    )
    assert int(python_output(code, tmp_path)) < 40  # MiB allocated at peak, against 144 MB of frames


@pytest.mark.slow
def test_killed_training_resumes_to_the_same_model(synthetic_corpus, tmp_path):
    base = [sys.executable, "-m", "spkver", "-q", "train-ubm", "--components", "16", "--iterations", "200",
            "--tol", "0", "--workers", "1", str(synthetic_corpus / "background")]
    env = {**os.environ}
    subprocess.run([*base, "-o", str(tmp_path / "whole.npz")], check=True, env=env)
    target = tmp_path / "resumed.npz"
    checkpoint = tmp_path / "resumed.npz.checkpoint.npz"
    process = subprocess.Popen([*base, "-o", str(target)], env=env)
    deadline = time.time() + 120
    while not checkpoint.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not target.exists(), "training finished before it could be killed"
    assert checkpoint.exists()
    result = subprocess.run([*base, "-o", str(target), "--resume"], capture_output=False, env=env,
                            stderr=subprocess.PIPE, text=True)
    assert result.returncode == 0
    assert target.read_bytes() == (tmp_path / "whole.npz").read_bytes()
    assert not checkpoint.exists()


@pytest.mark.slow
def test_dask_cluster_trains_the_same_model_as_local(synthetic_corpus, tmp_path):
    distributed = pytest.importorskip("distributed")
    store = FeatureStore(tmp_path / "feats", FeatureConfig())
    store.extract(find_audio([synthetic_corpus / "background"]), run=RunOptions(workers=1))
    arrays, paths = store.arrays(), store.paths()
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) \
            as cluster, Engine(arrays, scheduler=cluster.scheduler_address, paths=paths, shard_frames=500) as remote, \
            Engine(arrays, workers=1, shard_frames=500) as local:
        m_remote = train(arrays, 8, iterations=3, seed=4, engine=remote).gmm
        m_local = train(arrays, 8, iterations=3, seed=4, engine=local).gmm
    assert len(remote.shards) > 2
    assert np.array_equal(m_remote.means, m_local.means) and np.array_equal(m_remote.weights, m_local.weights)


def test_models_are_byte_identical_whatever_the_workers_and_blas_threads(tmp_path):
    """Issue 12: on 101 000 frames (several shards) --workers 1/2/3, OPENBLAS_NUM_THREADS=1 and taskset
    give the same bytes: the model does not depend on the machine's cores."""
    config = FeatureConfig(n_ceps=20, n_mels=40)
    store = FeatureStore(tmp_path / "feats", config)
    rng = np.random.default_rng(11)
    for i in range(101):
        source = tmp_path / f"src{i}.wav"  # a feature store entry names the recording it came from
        source.write_bytes(b"x" * (i + 1))
        centre = rng.normal(scale=3.0, size=config.dim)
        store.put(source, (centre + rng.normal(size=(1000, config.dim))).astype(np.float32))
    store.save_index()
    runs = {
        "workers 1": ([], ["--workers", "1"]),
        "workers 2": ([], ["--workers", "2"]),
        "workers 3": ([], ["--workers", "3"]),
        "1 BLAS thread": (["env", "OPENBLAS_NUM_THREADS=1", "OMP_NUM_THREADS=1"], ["--workers", "1"]),
        "one core": (["taskset", "-c", "0"], ["--workers", "2"]),
    }
    outputs = {}
    for name, (prefix, options) in runs.items():
        out = tmp_path / f"{name.replace(' ', '_')}.npz"
        command = [*prefix, sys.executable, "-m", "spkver", "-q", "train-ubm", "-o", str(out), "--features",
                   str(tmp_path / "feats"), "--components", "32", "--iterations", "4", *options]
        subprocess.run(command, check=True, capture_output=True)
        outputs[name] = out.read_bytes()
    assert len(set(outputs.values())) == 1, {k: hash(v) for k, v in outputs.items()}


def test_enrollment_is_byte_identical_on_one_core(synthetic_corpus, tmp_path):
    ubm = tmp_path / "ubm.npz"
    subprocess.run([sys.executable, "-m", "spkver", "-q", "train-ubm", "-o", str(ubm), "--components", "8",
                    "--iterations", "2", "--no-cache", str(synthetic_corpus / "background")], check=True)
    models = {}
    for name, prefix in {"all": [], "one": ["taskset", "-c", "0"], "blas1": ["env", "OPENBLAS_NUM_THREADS=1"]}.items():
        subprocess.run([*prefix, sys.executable, "-m", "spkver", "-q", "enroll", "--ubm", str(ubm), "--models",
                        str(tmp_path / name), "--speaker", "alice", str(synthetic_corpus / "enroll" / "alice")],
                       check=True)
        models[name] = (tmp_path / name / "alice.npz").read_bytes()
    assert len(set(models.values())) == 1


def _large_result(arrays, shard, size):
    """A task whose results are large enough to travel through the spill file (and one small array)."""
    (_, start, stop), = shard
    time.sleep(0.2)  # long enough for the pool process to claim shards of its own
    return {"big": np.full(size, float(start)), "small": np.arange(start, stop), "start": start}


def _maps_a_file(array) -> bool:
    import mmap

    base = array
    while isinstance(base, np.ndarray):
        base = base.base
    return isinstance(base, memoryview) and isinstance(base.obj, mmap.mmap)


def test_large_pool_results_travel_through_a_file_that_is_removed(tmp_path):
    from spkver.gmm.engine import SPILL_BYTES

    size = SPILL_BYTES // 8 + 1
    arrays = [np.zeros((40, 1))]
    shards = [[(0, a, a + 5)] for a in range(0, 40, 5)]
    with Engine(arrays, workers=2, shards=shards) as engine:
        results = engine.map_shards(_large_result, size)
        folder = Path(engine.spill_folder)
        assert folder.is_dir() and not list(folder.iterdir())  # each file removed once read
    assert not folder.exists()
    assert [r["start"] for r in results] == list(range(0, 40, 5))
    assert any(_maps_a_file(r["big"]) for r in results)  # the pool process's, through its file
    assert not any(_maps_a_file(r["small"]) for r in results)
    for r in results:
        assert np.array_equal(r["big"], np.full(size, float(r["start"])))
        assert np.array_equal(r["small"], np.arange(r["start"], r["start"] + 5))
        r["big"] += 1.0  # results are writable (in-place sums)


def test_spill_round_trips_with_or_without_large_arrays(tmp_path):
    from spkver.gmm.engine import SPILL_BYTES, spill, unspill

    big = np.arange(SPILL_BYTES // 8 * 3, dtype=np.float64).reshape(3, -1)
    for value in ({"a": big, "b": big[:, ::2].copy(), "t": big.T, "n": 3}, [np.arange(5)], "text"):
        payload, path, spans = spill(value, tmp_path)
        assert (path is None) == (not spans)
        back = unspill(payload, path, spans)
        if isinstance(value, dict):
            assert all(np.array_equal(back[key], value[key]) for key in "abt") and back["n"] == 3
            assert back["t"].flags.f_contiguous
        elif isinstance(value, list):
            assert np.array_equal(back[0], value[0])
        else:
            assert back == value
    assert not list(tmp_path.iterdir())
    # A folder that cannot take the file: the result travels in the pickle itself.
    payload, path, spans = spill({"a": big}, tmp_path / "missing")
    assert path is None and not spans and np.array_equal(unspill(payload, path, spans)["a"], big)


def test_single_blas_thread_limits_blas_libraries_loaded_after_its_first_use():
    code = ("from spkver.run import single_blas_thread\n"
            "with single_blas_thread(): pass\n"
            "import scipy.linalg\n"
            "from threadpoolctl import threadpool_info\n"
            "blas = [lib for lib in threadpool_info() if lib['user_api'] == 'blas']\n"
            "assert len({lib['filepath'] for lib in blas}) >= 2, blas  # numpy's OpenBLAS and scipy's own\n"
            "with single_blas_thread():\n"
            "    print(sorted({lib['num_threads'] for lib in threadpool_info() if lib['user_api'] == 'blas'}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "OPENBLAS_NUM_THREADS": "2", "OMP_NUM_THREADS": "2"})
    assert out.stdout.strip() == "[1]"


def _order_sensitive(arrays, shard, size):
    """Large float results whose sum depends on the order of addition: 1e16 + 1 + 1 = 1e16, but 1 + 1 + 1e16 ≠ 1e16."""
    (_, start, _), = shard
    return np.full(size, 1e16 if start == 0 else float(start))


def test_sum_shards_adds_in_shard_order_whatever_the_workers():
    from spkver.gmm.engine import SPILL_BYTES

    size = SPILL_BYTES // 8 + 1  # through the spill file from pool processes
    arrays = [np.zeros((60, 1))]
    shards = [[(0, a, a + 5)] for a in range(0, 60, 5)]
    with Engine(arrays, workers=1, shards=shards) as engine:
        parts = engine.map_shards(_order_sensitive, size)
    expected = parts[0].copy()
    for part in parts[1:]:
        expected += part
    assert not np.array_equal(expected, sum(reversed(parts)))  # the order matters for these values
    for workers in (1, 2, 3):
        with Engine(arrays, workers=workers, shards=shards) as engine:
            total = engine.sum_shards(_order_sensitive, size)
            if engine.pool is not None:
                assert not list(Path(engine.spill_folder).iterdir())  # every handed-over file read and removed
        assert total.tobytes() == expected.tobytes(), workers


@pytest.mark.skipif(os.name != "posix", reason="left-over folders are found by probing process ids")
def test_hand_over_folders_of_killed_processes_are_removed_by_the_next_engine(tmp_path, monkeypatch):
    import tempfile

    from spkver.gmm.engine import SPILL_PREFIX

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()  # its id now names no process (ids are not reused this soon)
    dead = tmp_path / f"{SPILL_PREFIX}{finished.pid}-abc"
    dead.mkdir()
    (dead / "shard-3.npy").write_bytes(b"x" * 1000)  # a result in flight when the process was killed
    alive = tmp_path / f"{SPILL_PREFIX}{os.getpid()}-def"
    unnamed = tmp_path / f"{SPILL_PREFIX}q1w2e3"  # spkver before folders carried the process id
    for folder in (alive, unnamed):
        folder.mkdir()
    with Engine([np.zeros((60, 1))], workers=2, shards=[[(0, a, a + 5)] for a in range(0, 60, 5)]) as engine:
        ours = Path(engine.spill_folder)
        assert ours.parent == tmp_path and ours.name.startswith(f"{SPILL_PREFIX}{os.getpid()}-")
        assert not dead.exists() and alive.exists() and unnamed.exists()
    assert not ours.exists()


def test_a_pool_process_hands_over_each_shard_as_soon_as_it_is_computed(monkeypatch):
    from spkver.gmm import engine as engine_module

    arrays = [np.zeros((20, 1))]
    shards = [[(0, a, a + 5)] for a in range(0, 20, 5)]
    counter = engine_module.process_context().Value("q", 1)  # shard 0 taken by someone else
    monkeypatch.setattr(engine_module, "POOL_WORKER", engine_module.PoolWorker())
    engine_module.POOL_WORKER.set(arrays, shards, counter, None)  # no folder: results travel in the pickle
    handed = [engine_module._pool_task(_order_sensitive, (4,), 1) for _ in range(4)]
    assert all(path is None for _, path, _ in handed)  # what spill() returns, read by unspill()
    handed = [engine_module.unspill(*h) for h in handed]
    assert [list(h) for h in handed] == [[1], [2], [3], []]  # one shard per call, none when all are claimed
    assert np.array_equal(handed[0][1], np.full(4, 5.0))


def test_too_little_speech_advises_only_what_was_not_given():
    with pytest.raises(SpkverError, match="--allow-fewer-components"):
        components_for(100, 64, allow_fewer=False)
    assert components_for(100, 64, allow_fewer=True) == 10
    with pytest.raises(SpkverError, match="even one component") as caught:
        components_for(5, 64, allow_fewer=True)
    assert "--allow-fewer-components" not in str(caught.value)
