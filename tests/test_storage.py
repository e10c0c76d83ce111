"""Storage (spkver.storage): model files and their safe reader, the speaker store, trial and score files."""

import io
import json
import zipfile
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spkver.errors import SpkverError
from spkver.features.config import FeatureConfig
from spkver.gmm.model import GMM
from spkver.storage.models import Model, fingerprint, load_model, save_model
from spkver.storage.speakers import SpeakerStore, validate_speaker_id
from spkver.storage.trials import read_scores, read_trials

ONE_SYSTEM = FeatureConfig(norm="cmn")


def small_model(kind="ubm", dim=ONE_SYSTEM.dim, **meta):
    rng = np.random.default_rng(0)
    gmm = GMM(np.full(4, 0.25), rng.normal(size=(4, dim)), rng.uniform(0.5, 2, (4, dim)))
    return Model(gmm, kind, ONE_SYSTEM, dict(meta))


def test_round_trip_keeps_arrays_and_metadata(tmp_path):
    model = small_model(training={"frames": 10})
    save_model(tmp_path / "ubm.npz", model)
    loaded = load_model(tmp_path / "ubm.npz", kind="ubm")
    assert np.array_equal(loaded.gmm.means, model.gmm.means)
    assert loaded.meta["training"] == {"frames": 10} and loaded.meta["format_version"] == 1
    assert loaded.feature_config == ONE_SYSTEM
    assert loaded.fingerprint == fingerprint(model.gmm)
    assert [p.name for p in tmp_path.iterdir()] == ["ubm.npz"]  # no temporary file left


def write_npz(path, **arrays):
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path.write_bytes(buffer.getvalue())


def test_pickled_content_is_refused_not_unpickled(tmp_path):
    good = small_model()
    meta = json.dumps({"format_version": 1, "kind": "ubm", "feature_config": ONE_SYSTEM.to_dict()})
    write_npz(tmp_path / "evil.npz", weights=np.array([object()], dtype=object), means=good.gmm.means,
              variances=good.gmm.variances, meta=np.array(meta))
    with pytest.raises(SpkverError, match="pickled"):
        load_model(tmp_path / "evil.npz")


@pytest.mark.parametrize("mutate,message", [
    (lambda m: m.update(format_version=99), "newer"),
    (lambda m: m.update(kind="other"), "kind"),
    (lambda m: m.update(feature_config={"n_ceps": 13}), "dimension"),
])
def test_bad_metadata_is_refused(tmp_path, mutate, message):
    model = small_model()
    meta = {"format_version": 1, "kind": "ubm", "feature_config": ONE_SYSTEM.to_dict()}
    mutate(meta)
    write_npz(tmp_path / "m.npz", weights=model.gmm.weights, means=model.gmm.means,
              variances=model.gmm.variances, meta=np.array(json.dumps(meta)))
    with pytest.raises(SpkverError, match=message):
        load_model(tmp_path / "m.npz")


def test_truncated_corrupted_and_wrong_kind(tmp_path):
    save_model(tmp_path / "ubm.npz", small_model())
    data = (tmp_path / "ubm.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(SpkverError, match="not a spkver model"):
        load_model(tmp_path / "cut.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk" * 100)
    with pytest.raises(SpkverError):
        load_model(tmp_path / "junk.npz")
    with pytest.raises(SpkverError, match="expected a speaker model"):
        load_model(tmp_path / "ubm.npz", kind="speaker")
    with zipfile.ZipFile(tmp_path / "empty.npz", "w"):
        pass
    with pytest.raises(SpkverError, match="no meta array"):
        load_model(tmp_path / "empty.npz")


@pytest.mark.parametrize("bad", ["", "../x", "a/b", "a\x00b", "a\nb", "x" * 200, ".hidden", "-x"])
def test_unsafe_speaker_ids_are_rejected(bad):
    with pytest.raises(SpkverError, match="not valid"):
        validate_speaker_id(bad)


def test_speaker_store_refuses_a_model_of_another_ubm(tmp_path):
    ubm = small_model()
    other = small_model()
    other.gmm.means += 1
    store = SpeakerStore(tmp_path)
    save_model(store.path("alice"), small_model("speaker", speaker="alice", ubm_fingerprint=other.fingerprint))
    assert store.speakers() == ["alice"]
    with pytest.raises(SpkverError, match="different UBM"):
        store.load("alice", ubm)
    with pytest.raises(SpkverError, match="not enrolled"):
        store.load("bob", ubm)
    assert validate_speaker_id("A.b_c-1") == "A.b_c-1"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=300))
def test_fuzz_trials_and_scores_parsers(tmp_path, text):
    path = tmp_path / "t"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    for parse in (read_trials, read_scores):
        try:
            parse(path)
        except SpkverError:
            pass


def test_trials_errors_have_line_numbers(tmp_path):
    path = tmp_path / "trials"
    path.write_text("a x.wav target\r\nonlyone\r\n")
    with pytest.raises(SpkverError, match="line 2"):
        read_trials(path)
    path.write_text("a x.wav\na x.wav\n")
    with pytest.raises(SpkverError, match="line 2: repeats"):
        read_trials(path)
    path.write_text("# empty\n")
    with pytest.raises(SpkverError, match="no trials"):
        read_trials(path)


def test_enrollment_ivectors_that_are_not_finite_are_not_written(tmp_path):
    # An absurd but finite i-vector back-end can give NaN i-vectors: the model would be written, then refused by
    # every verify. The check is load's; the file already there stays as it was.
    model = replace(small_model("speaker", speaker="alice", ubm_fingerprint="0", ivector_extractor="x"),
                    ivectors=np.ones((2, 3)))
    save_model(tmp_path / "alice.npz", model)
    before = (tmp_path / "alice.npz").read_bytes()
    np.testing.assert_array_equal(load_model(tmp_path / "alice.npz").ivectors, np.ones((2, 3)))
    for bad in (np.full((2, 3), np.nan), np.array([[1.0, np.inf, 0.0]])):
        with pytest.raises(SpkverError, match="refusing to write a model that has enrollment i-vectors"):
            save_model(tmp_path / "alice.npz", replace(model, ivectors=bad))
    assert (tmp_path / "alice.npz").read_bytes() == before
