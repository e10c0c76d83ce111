"""The training engine: sharded parallel EM, feature store, streaming, resume, Dask."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner
from conftest import python_output

from spkver.audio.sources import find_audio
from spkver.cli.main import cli
from spkver.errors import SpkverError
from spkver.features.config import FeatureConfig
from spkver.features.frontend import extract
from spkver.features.store import FeatureStore
from spkver.gmm.em import train
from spkver.gmm.engine import Engine, make_shards, shard_size
from spkver.gmm.estep import accumulate
from spkver.gmm.model import GMM
from spkver.run import RunOptions


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


def test_feature_store_skips_unchanged_files_and_redoes_changed_ones(synthetic_corpus, tmp_path):
    items = find_audio([synthetic_corpus / "enroll" / "alice"])
    store = FeatureStore(tmp_path / "feats", FeatureConfig())
    first = store.extract(items, run=RunOptions(workers=1))
    npy = sorted((tmp_path / "feats").glob("*.npy"))
    stamps = [p.stat().st_mtime_ns for p in npy]
    time.sleep(0.01)
    again = FeatureStore(tmp_path / "feats").extract(items, run=RunOptions(workers=1))
    assert [p.stat().st_mtime_ns for p in npy] == stamps
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(first, again))
    index = [p.stem for p in npy].index(store.key(items[0].path))
    os.utime(items[0].path)  # touched, same bytes: the hash vouches for the entry, nothing is extracted
    FeatureStore(tmp_path / "feats").extract(items, run=RunOptions(workers=1))
    assert npy[index].stat().st_mtime_ns == stamps[index]
    # Other content of the same size, old modification time restored (as cp -p, rsync -t and tar x do).
    before = items[0].path.stat()
    audio, rate = sf.read(items[0].path, dtype="float32")
    sf.write(items[0].path, np.roll(audio, 4000), rate, subtype=sf.info(str(items[0].path)).subtype)
    os.utime(items[0].path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert items[0].path.stat().st_size == before.st_size
    assert items[0].path.stat().st_mtime_ns == before.st_mtime_ns
    redone = FeatureStore(tmp_path / "feats").extract(items, run=RunOptions(workers=1))
    redone = {str(i.path): a for i, a in redone}
    assert npy[index].stat().st_mtime_ns != stamps[index]
    np.testing.assert_array_equal(redone[str(items[0].path)], extract(np.roll(audio, 4000)))
    with pytest.raises(SpkverError, match="other settings"):
        FeatureStore(tmp_path / "feats", FeatureConfig(n_ceps=13))


def test_train_on_feature_store_equals_train_on_audio(synthetic_corpus, tmp_path):
    runner = CliRunner()
    background = str(synthetic_corpus / "background")
    assert runner.invoke(cli, ["-q", "extract", "-o", str(tmp_path / "feats"), background]).exit_code == 0
    common = ["--components", "8", "--iterations", "4", "--seed", "3"]
    r1 = runner.invoke(cli, ["-q", "train-ubm", "-o", str(tmp_path / "a.npz"), *common, "--features",
                             str(tmp_path / "feats")])
    r2 = runner.invoke(cli, ["-q", "train-ubm", "-o", str(tmp_path / "b.npz"), *common, "--no-cache", background])
    r3 = runner.invoke(cli, ["-q", "train-ubm", "-o", str(tmp_path / "c.npz"), *common, "--cache-dir",
                             str(tmp_path / "cache"), background])
    assert r1.exit_code == r2.exit_code == r3.exit_code == 0, r1.stderr + r2.stderr + r3.stderr
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes() == (tmp_path / "c.npz").read_bytes()
    assert any((tmp_path / "cache").rglob("index.json"))


def test_em_streams_a_memory_mapped_store_with_bounded_memory(tmp_path):
    """EM over 600 000 frames (144 MB on disk) allocates a small fraction of that (after the JIT warm-up)."""
    config = FeatureConfig(n_ceps=20, deltas=2)
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
