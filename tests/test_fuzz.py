"""Property-based fuzzing of everything spkver reads: model, checkpoint, calibration, fusion, cache and index files,
and audio sample values through extraction and enrollment. Only two outcomes are allowed: success with
finite numbers, or a SpkverError (exit 2); and a loader never holds more than 4x the file's decoded size."""

import io
import json
import os
import tracemalloc
import zipfile

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from spkver.api import enroll, train_ubm
from spkver.audio.sources import AudioItem, find_audio
from spkver.backend.calibration import load_calibration
from spkver.backend.fusion import load_fusion
from spkver.errors import SpkverError
from spkver.features.config import FeatureConfig
from spkver.features.extraction import features_of
from spkver.features.store import FeatureStore
from spkver.run import RunOptions
from spkver.storage.models import Model, load_checkpoint, load_model, npz_bytes, save_model
from spkver.synth import Voice, synthesize

# SPKVER_FUZZ_EXAMPLES=3000 for a deeper run than the suite's.
FUZZ = settings(max_examples=int(os.environ.get("SPKVER_FUZZ_EXAMPLES", 150)), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
SMALL = FeatureConfig(sample_rate=8000, n_mels=8, n_ceps=4, deltas=0, norm="cmn")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


def valid_meta(kind="ubm"):
    meta = {"format_version": 1, "kind": kind, "feature_config": SMALL.to_dict(), "training": {"frames": 10}}
    if kind == "speaker":
        meta.update(speaker="alice", ubm_fingerprint="0" * 64, relevance=16.0, adapt="mw")
    return meta


arrays = st.sampled_from([
    np.full(2, 0.5), np.full(3, 1 / 3), np.ones((2, 4)), np.zeros((2, 4)), np.full((2, 4), np.nan),
    np.full((2, 4), np.inf), -np.ones((2, 4)), np.ones((3, 4)), np.ones((2, 5)), np.zeros(0), np.array(1.0),
    np.array(["x"]), np.ones((2, 4), dtype=np.float16), np.ones((2, 4), dtype=np.int8), np.array([1e308, 1e308]),
    np.ones((2, 4, 1)), np.full((2, 4), 1e-320),
])


@st.composite
def model_archives(draw):
    """An .npz that may or may not be a valid model: members dropped, replaced or corrupted."""
    members = {"weights": np.full(2, 0.5), "means": np.zeros((2, 4)), "variances": np.ones((2, 4))}
    meta = valid_meta(draw(st.sampled_from(["ubm", "speaker", "checkpoint"])))
    for name in list(members):
        choice = draw(st.integers(0, 3))
        if choice == 1:
            members[name] = draw(arrays)
        elif choice == 2:
            del members[name]
    for key in list(meta):
        if draw(st.integers(0, 5)) == 0:
            meta[key] = draw(json_values)
    if draw(st.booleans()):
        meta["feature_config"] = {**SMALL.to_dict(), draw(st.sampled_from(list(SMALL.to_dict()))): draw(json_values)}
    meta_text = json.dumps(meta) if draw(st.booleans()) else draw(st.text(max_size=40))
    if meta.get("kind") == "checkpoint":
        meta.update(identity="x", history=draw(st.lists(st.floats(), max_size=3)), step=draw(st.integers(-2, 5)),
                    reseeded=0, rng_state=draw(json_values))
        meta_text = json.dumps(meta)
    extra = {}
    if draw(st.booleans()):
        frames = draw(arrays)
        with np.errstate(over="ignore"):
            frames = frames.astype(np.float16) if frames.dtype.kind == "f" else frames
        extra = {"cohort_frames": frames if frames.dtype == np.float16 and draw(st.booleans())
                 else np.zeros((3, 4), np.float16), "cohort_lengths": draw(st.sampled_from(
                     [np.array([1, 2]), np.array([3]), np.array([0, 3]), np.array([4]), np.array([-1, 4])]))}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))) as archive:
        for name, array in {**members, **extra, "meta": np.array(meta_text)}.items():
            with archive.open(f"{name}.npy", "w") as member:
                np.lib.format.write_array(member, np.asarray(array), allow_pickle=False)
    data = buffer.getvalue()
    if draw(st.integers(0, 4)) == 0:  # flip or cut bytes
        cut = draw(st.integers(0, len(data)))
        data = data[:cut] + bytes([draw(st.integers(0, 255))]) + data[cut + 1 :]
    return data


def loaded_within_memory(loader, path, decoded_bytes):
    tracemalloc.start()
    try:
        return loader(path)
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak <= 4 * decoded_bytes + (1 << 20), (peak, decoded_bytes)


@FUZZ
@given(data=model_archives())
def test_fuzz_model_files_load_cleanly_or_are_refused(tmp_path, data):
    path = tmp_path / "m.npz"
    path.write_bytes(data)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            decoded = sum(info.file_size for info in archive.infolist())
    except Exception:  # noqa: BLE001 - not even a zip: the loader must still refuse it cleanly
        decoded = len(data)
    for loader in (load_model, lambda p: load_checkpoint(p, "x")):
        try:
            result = loaded_within_memory(loader, path, decoded)
        except SpkverError:
            continue
        if isinstance(result, Model):
            for gmm in result.gmms:
                assert np.isfinite(gmm.means).all() and np.isfinite(gmm.variances).all()
                assert (gmm.variances > 0).all() and result.feature_config.system_dim == gmm.dim
            assert len(result.gmms) == len(result.feature_config.views)
        elif result is not None:
            state = result.state
            assert np.isfinite(state.gmm.means).all() and np.isfinite(state.history).all()
            assert all(np.isfinite(g.means).all() and g.means.shape == state.gmm.means.shape for g in result.trained)


def test_an_npy_header_numpy_cannot_tokenise_is_refused(tmp_path):
    # Found by the fuzzer: "'fortran_order'{" makes numpy's header reader raise tokenize.TokenError.
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in ("weights", "means", "meta"):
            header = "{'descr': '<f8', 'fortran_order'{ False, 'shape': (2,), }".ljust(117) + "\n"
            archive.writestr(f"{name}.npy", b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little")
                             + header.encode() + bytes(16))
    (tmp_path / "m.npz").write_bytes(buffer.getvalue())
    with pytest.raises(SpkverError):
        load_model(tmp_path / "m.npz")


@FUZZ
@given(data=st.one_of(json_values.map(json.dumps), st.binary(max_size=200),
                      st.fixed_dictionaries({"kind": st.just("spkver-calibration"), "version": st.just(1),
                                             "scale": json_values, "offset": json_values, "p_target": json_values,
                                             "normalisation": json_values}).map(json.dumps)))
@example(data="[" * 100_000)
def test_fuzz_calibration_files(tmp_path, data):
    path = tmp_path / "cal.json"
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    try:
        calibration = load_calibration(path)
    except SpkverError:
        return
    assert np.isfinite([calibration.scale, calibration.offset]).all() and 0 < calibration.p_target < 1


@FUZZ
@given(data=st.one_of(json_values.map(json.dumps), st.binary(max_size=200),
                      st.fixed_dictionaries({"kind": st.just("spkver-fusion"), "version": st.just(1),
                                             "weights": st.one_of(json_values, st.lists(st.floats(), max_size=2)),
                                             "offset": json_values, "p_target": json_values,
                                             "targets": json_values, "nontargets": json_values,
                                             "systems": st.one_of(json_values, st.lists(st.text(max_size=5),
                                                                                        max_size=2)),
                                             "normalisations": st.one_of(json_values, st.lists(st.text(max_size=5),
                                                                                               max_size=2)),
                                             "calibrated": st.one_of(json_values, st.lists(st.booleans(), max_size=2))},
                                            ).map(json.dumps)))
@example(data="[" * 100_000)
@example(data=json.dumps({"kind": "spkver-fusion", "version": 1, "weights": [1.5, -0.5], "offset": 0.25,
                          "p_target": 0.01, "targets": 3, "nontargets": 9, "systems": ["a", "b"],
                          "normalisations": ["s", "none"], "calibrated": [False, True]}))
def test_fuzz_fusion_files(tmp_path, data):
    path = tmp_path / "fusion.json"
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    try:
        fusion = load_fusion(path)
    except SpkverError:
        return
    assert np.isfinite([*fusion.weights, fusion.offset]).all() and 0 < fusion.p_target < 1
    assert len(fusion.weights) == len(fusion.systems) == len(fusion.normalisations) == len(fusion.calibrated) > 0


@FUZZ
@given(index=st.one_of(json_values, st.fixed_dictionaries({
    "format": st.just(1), "feature_config": st.one_of(st.just(SMALL.to_dict()), json_values),
    "entries": st.dictionaries(st.text(max_size=8), json_values, max_size=3)})))
@example(index={"format": 1, "feature_config": SMALL.to_dict(), "entries": {"k": {"source": "x", "frames": 2}}})
def test_fuzz_feature_store_index(tmp_path, index):
    root = tmp_path / "store"
    root.mkdir(exist_ok=True)
    (root / "index.json").write_text(json.dumps(index))
    try:
        store = FeatureStore(root)
        arrays = store.arrays()
    except SpkverError:
        return
    assert all(np.isfinite(a).all() for a in arrays)


@FUZZ
@given(cache=st.one_of(json_values, st.dictionaries(st.text(max_size=8), st.lists(st.floats(), max_size=4))))
def test_fuzz_cohort_cache(tmp_path, cache):
    from spkver.backend.scorenorm import Cohort

    root = tmp_path / "cache"
    root.mkdir(exist_ok=True)
    ubm_model = Model(fuzz_ubm().gmm, "ubm", SMALL)
    cohort = Cohort(ubm_model, cache_dir=root)
    for kind in ("z", "t"):
        (root / f"{cohort.key}-{kind}.json").write_text(json.dumps(cache))
    reloaded = Cohort(ubm_model, cache_dir=root)
    for table in reloaded._cache.values():
        assert all(np.isfinite(v).all() for v in table.values())


_UBM = {}


def fuzz_ubm():
    if not _UBM:
        from spkver.gmm.model import GMM

        rng = np.random.default_rng(0)
        _UBM["ubm"] = Model(GMM(np.full(4, 0.25), rng.normal(size=(4, SMALL.dim)), np.ones((4, SMALL.dim))), "ubm",
                            SMALL)
    return _UBM["ubm"]


sample_values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.sampled_from([0.0, 1e-45, 1e-30, 1.0, -1.0, 3e4, 1e6, 1.1e6, 1e19, 3.4e38, -3.4e38]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(sample_values, min_size=1, max_size=8), where=st.lists(st.integers(0, 3999), min_size=1,
                                                                               max_size=8))
def test_fuzz_sample_values_through_extraction_and_enrollment(tmp_path, values, where):
    rng = np.random.default_rng(1)
    signal = synthesize(Voice.random(rng), ["a", "s", "i"], 8000, rng)[:4000].astype(np.float32)
    for index, value in zip(where, values):
        signal[index] = value
    path = tmp_path / "x.wav"
    sf.write(path, signal, 8000, subtype="FLOAT")
    item = AudioItem("x", path)
    try:
        frames = features_of(item, SMALL)
    except SpkverError:
        return
    assert np.isfinite(frames).all()
    try:
        model = enroll(fuzz_ubm(), [item], "x", run=RunOptions(workers=1))
    except SpkverError:
        return
    ubm = fuzz_ubm().gmm
    assert np.isfinite(model.gmm.means).all() and not np.array_equal(model.gmm.means, ubm.means)


def test_a_trained_ubm_round_trips_through_the_safe_loader(synthetic_corpus, tmp_path):
    ubm = train_ubm(find_audio([synthetic_corpus / "background"]), config=SMALL, n_components=4, iterations=2,
                    run=RunOptions(workers=1))
    save_model(tmp_path / "u.npz", ubm)
    loaded = load_model(tmp_path / "u.npz", "ubm")
    assert np.array_equal(loaded.gmm.means, ubm.gmm.means) and len(loaded.cohort) == len(ubm.cohort)
    assert npz_bytes(loaded.gmm, {}) == npz_bytes(ubm.gmm, {})


@pytest.mark.parametrize("depth", [10, 100_000])
def test_deeply_nested_metadata_is_refused_not_a_crash(tmp_path, depth):
    path = tmp_path / "deep.npz"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, array in {"weights": np.full(2, 0.5), "means": np.zeros((2, 4)), "variances": np.ones((2, 4)),
                            "meta": np.array("[" * depth + "]" * depth)}.items():
            with archive.open(f"{name}.npy", "w") as member:
                np.lib.format.write_array(member, array)
    path.write_bytes(buffer.getvalue())
    with pytest.raises(SpkverError):
        load_model(path)
