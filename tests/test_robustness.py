"""Hostile inputs, crashes and concurrency: clear errors, no lost or partial models."""

import os
import re
import resource
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner
from helpers import make_store, python_output
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spkver.audio.decode import iter_audio_blocks, load_audio
from spkver.audio.resample import resample, resampled_blocks
from spkver.audio.sources import read_list
from spkver.backend.calibration import load_calibration
from spkver.cli.main import cli
from spkver.errors import SpkverError
from spkver.features.config import FeatureConfig
from spkver.features.frontend import extract, extract_blocks
from spkver.storage.models import load_model
from spkver.storage.trials import read_trials
from spkver.synth import Voice, synthesize

SPKVER = [sys.executable, "-m", "spkver", "-q"]


def speech(rate=16000, seed=0, seconds=None):
    rng = np.random.default_rng(seed)
    y = synthesize(Voice.random(rng), ["s", "a", "i", "o"], rate, rng)
    return y if seconds is None else np.resize(y, int(seconds * rate))


@pytest.fixture(scope="module")
def store(synthetic_corpus, tmp_path_factory):
    """A small UBM and enrolled speakers (helpers.make_store)."""
    return make_store(tmp_path_factory.mktemp("store"), synthetic_corpus)


def cli_enroll(store, *audio, speaker="carol", extra=()):
    args = ["enroll", "--ubm", store / "ubm.npz", "--models", store / "models", "--speaker", speaker,
            *extra, *audio]
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def write(path, data, rate=16000, subtype=None):
    sf.write(path, data, rate, subtype=subtype)
    return path


BAD_AUDIO = {
    "missing.wav": (None, "no such file"),
    "zero.wav": (lambda p: p.write_bytes(b""), "empty file"),
    "header.wav": (lambda p: p.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00"), "not a readable"),
    "random.wav": (lambda p: p.write_bytes(np.random.default_rng(0).bytes(5000)), "not a readable"),
    "text.flac": (lambda p: p.write_text("this is not flac\n" * 50), "not a readable"),
    "nosamples.wav": (lambda p: write(p, np.zeros(0, np.float32)), "no samples"),
    "10ms.wav": (lambda p: write(p, speech()[:160]), "too short"),
    "silence.wav": (lambda p: write(p, np.zeros(16000, np.float32)), "no speech"),
    "near_silence.wav": (lambda p: write(p, 1e-5 * np.random.default_rng(1).standard_normal(16000)),
                         "no speech"),
    "nan.wav": (lambda p: write(p, np.where(np.arange(16000) == 5, np.nan, speech(seconds=1)), subtype="FLOAT"),
                "NaN"),
    "inf.wav": (lambda p: write(p, np.where(np.arange(16000) == 5, np.inf, speech(seconds=1)), subtype="FLOAT"),
                "NaN or infinite"),
}


# Every reader of a file, and what it calls that file in its messages (fileio.read_error's words).
READERS = {
    "audio": (lambda path: load_audio(path, 16000), "file"),
    "list": (read_list, "list file"),
    "trials": (read_trials, "trials file"),
    "model": (load_model, "model file"),
    "calibration": (load_calibration, "calibration file"),
}


@pytest.mark.parametrize("reader", sorted(READERS))
def test_every_reader_names_a_missing_file_and_a_folder_alike(tmp_path, reader):
    read, what = READERS[reader]
    with pytest.raises(SpkverError, match=f"^{re.escape(str(tmp_path / 'missing'))}: no such {what}$"):
        read(tmp_path / "missing")
    article = "an" if what[0] in "aeiou" else "a"
    with pytest.raises(SpkverError, match=f"^{re.escape(str(tmp_path))}: is a folder, not {article} {what}$"):
        read(tmp_path)


@pytest.mark.parametrize("name", sorted(BAD_AUDIO))
def test_bad_audio_gets_one_line_naming_the_file(store, tmp_path, name):
    make, message = BAD_AUDIO[name]
    path = tmp_path / name
    if make:
        make(path)
    before = {p.name: p.read_bytes() for p in (store / "models").glob("*.npz")}
    result = cli_enroll(store, path)
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("spkver: error:")]
    assert len(errors) == 1 and str(path) in errors[0] and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert {p.name: p.read_bytes() for p in (store / "models").glob("*.npz")} == before


def test_folder_without_audio(store, tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    result = cli_enroll(store, tmp_path)
    assert result.exit_code == 2 and "holds no audio files" in result.stderr


@pytest.mark.parametrize("name,rate,channels,subtype", [
    ("clipped.wav", 16000, 1, "PCM_16"), ("six channels.wav", 16000, 6, "PCM_16"),
    ("8k.wav", 8000, 1, "PCM_16"), ("11k.wav", 11025, 1, "PCM_16"), ("22k.wav", 22050, 1, "PCM_16"),
    ("44k.wav", 44100, 2, "PCM_16"), ("48k.wav", 48000, 1, "PCM_16"), ("u8.wav", 16000, 1, "PCM_U8"),
    ("24bit.wav", 16000, 1, "PCM_24"), ("float.wav", 16000, 1, "FLOAT"), ("ünïcødé ö.flac", 16000, 1, None),
])
def test_unusual_but_valid_audio_enrolls(store, tmp_path, name, rate, channels, subtype):
    y = speech(rate)
    if name.startswith("clipped"):
        y = np.clip(4 * y, -1, 1)
    data = np.stack([y * (1 - 0.1 * c) for c in range(channels)], axis=1) if channels > 1 else y
    path = write(tmp_path / name, data, rate, subtype)
    speaker = "x" + str(abs(hash(name)) % 10**8)
    result = cli_enroll(store, path, speaker=speaker)
    assert result.exit_code == 0, result.stderr
    load_model(store / "models" / f"{speaker}.npz", "speaker")
    os.unlink(store / "models" / f"{speaker}.npz")


def test_skip_bad_keeps_the_good_files_work(store, synthetic_corpus, tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"junk")
    good = sorted((synthetic_corpus / "enroll" / "alice").glob("*.wav"))
    assert cli_enroll(store, bad, *good, speaker="dave").exit_code == 2
    assert not (store / "models" / "dave.npz").exists()
    result = cli_enroll(store, bad, *good, speaker="dave", extra=["--skip-bad"])
    assert result.exit_code == 0 and "bad.wav" in result.stderr
    assert load_model(store / "models" / "dave.npz").meta["training"]["files"] == len(good)


def test_streamed_resampling_and_features_equal_whole_file_results():
    rng = np.random.default_rng(3)
    y = rng.standard_normal(44100 * 3).astype(np.float32)
    blocks = [y[i : i + 5000] for i in range(0, len(y), 5000)]
    np.testing.assert_allclose(np.concatenate(list(resampled_blocks(blocks, 44100, 16000, 5000))),
                               resample(y, 44100, 16000), atol=1e-5)
    s = speech(seconds=3)
    pieces = [s[i : i + 777] for i in range(0, len(s), 777)]
    cmn = FeatureConfig(norm="cmn")
    np.testing.assert_allclose(extract_blocks(pieces, cmn), extract(s, cmn), atol=2e-3)
    # Feature warping maps ranks: a value within float rounding of another in its window may move one rank.
    streamed, whole = extract_blocks(pieces), extract(s)
    np.testing.assert_allclose(streamed[:, :124], whole[:, :124], atol=2e-3)
    assert np.mean(np.abs(streamed[:, 124:] - whole[:, 124:]) > 2e-3) < 1e-3


@pytest.mark.slow
def test_one_hour_file_uses_bounded_memory(tmp_path):
    path = tmp_path / "hour.wav"
    with sf.SoundFile(path, "w", 16000, 1, "PCM_16") as handle:
        minute = np.resize(speech(seconds=2), 16000 * 60)
        for _ in range(60):
            handle.write(minute)
    code = (
        "import resource, sys; from pathlib import Path; from spkver.features.extraction import features_of;"
        "from spkver.audio.sources import AudioItem; from spkver.features.config import FeatureConfig;"
        "f = features_of(AudioItem('x', Path(sys.argv[1])), FeatureConfig());"
        "print(len(f), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)"
    )
    frames, peak_mb = map(int, python_output(code, path).split())
    assert frames > 100_000
    # The whole signal's STFT alone would take over 1.5 GB; blocks keep features + a few blocks.
    assert peak_mb < 800


def test_list_errors_carry_line_numbers(tmp_path):
    (tmp_path / "a.wav").write_bytes(b"x")
    listing = tmp_path / "list.txt"
    listing.write_text("a.wav\r\n# c\r\n\r\na.wav\r\n")
    with pytest.raises(SpkverError, match="line 4: repeats the .* of line 1"):
        read_list(listing)
    listing.write_text("u1 a.wav\nu1 b.wav\n")
    with pytest.raises(SpkverError, match="line 2: repeats the utterance id of line 1"):
        read_list(listing)


def test_missing_list_entry_names_the_list_line(store, tmp_path):
    listing = tmp_path / "enroll.lst"
    listing.write_text("# speakers\nnot_there.wav\n")
    result = cli_enroll(store, "--list", listing)
    assert result.exit_code == 2 and "not_there.wav" in result.stderr and "enroll.lst line 2" in result.stderr


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=st.characters(codec="utf-8"), max_size=300))
def test_fuzz_list_parser_raises_only_clear_errors(tmp_path, text):
    listing = tmp_path / "fuzz.lst"
    listing.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        read_list(listing)
    except SpkverError as exc:
        assert "\n" not in str(exc).replace(repr(text), "")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=4000), suffix=st.sampled_from([".wav", ".flac", ".ogg", ".mp3", ".aiff"]),
       prefix=st.sampled_from([b"", b"RIFF\xff\x00\x00\x00WAVEfmt ", b"fLaC", b"OggS", b"ID3\x03"]))
def test_fuzz_audio_loader_raises_only_clear_errors(tmp_path, data, suffix, prefix):
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(prefix + data)
    try:
        extract_blocks(iter_audio_blocks(path, 16000), FeatureConfig())
    except SpkverError:
        pass


def snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.rglob("*.npz")}


def kill_at_random(command, runs, seed, check):
    """Run ``command`` ``runs`` times, SIGKILL it at a random moment, then ``check()``."""
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    full = time.perf_counter() - start
    rng = np.random.default_rng(seed)
    for _ in range(runs):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.05, full))
        process.send_signal(signal.SIGKILL)
        process.wait()
        check()


@pytest.mark.slow
def test_sigkill_during_enroll_loses_nothing(store, synthetic_corpus):
    models = store / "models"
    before = snapshot(store)
    command = [*SPKVER, "enroll", "--ubm", str(store / "ubm.npz"), "--models", str(models), "--speaker", "erin",
               "--force", "--workers", "1", str(synthetic_corpus / "enroll" / "bob")]

    def check():
        after = snapshot(store)
        assert {k: v for k, v in after.items() if k != "erin.npz"} == before
        if (models / "erin.npz").exists():
            assert load_model(models / "erin.npz", "speaker").meta["speaker"] == "erin"

    kill_at_random(command, 20, 0, check)


@pytest.mark.slow
def test_sigkill_during_train_ubm_loses_nothing(store, synthetic_corpus, tmp_path):
    before = snapshot(store)
    output = store / "ubm2.npz"
    command = [*SPKVER, "train-ubm", "-o", str(output), "--force", "--components", "8", "--iterations", "4",
               "--workers", "1", str(synthetic_corpus / "background")]

    def check():
        after = snapshot(store)
        checkpoint = "ubm2.npz.checkpoint.npz"  # written atomically after each EM iteration
        assert {k: v for k, v in after.items() if k not in ("ubm2.npz", checkpoint)} == before
        if output.exists():
            load_model(output, "ubm")
        if (store / checkpoint).exists():
            with np.load(store / checkpoint, allow_pickle=False) as archive:
                assert {"weights", "means", "variances", "meta"} <= set(archive.files)

    kill_at_random(command, 20, 1, check)


def test_concurrent_enrolls_of_one_speaker_leave_one_valid_model(store, synthetic_corpus):
    command = [*SPKVER, "enroll", "--ubm", str(store / "ubm.npz"), "--models", str(store / "models"),
               "--speaker", "frank", "--workers", "1"]
    processes = [subprocess.Popen([*command, str(synthetic_corpus / "enroll" / who)], stderr=subprocess.PIPE,
                                  text=True) for who in ("alice", "bob")]
    results = [(p.wait(), p.stderr.read()) for p in processes]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    assert any("already enrolled" in err or "enrolled meanwhile" in err for _, err in results)
    assert load_model(store / "models" / "frank.npz", "speaker").meta["speaker"] == "frank"


def test_same_inputs_and_seed_give_byte_identical_models(synthetic_corpus, tmp_path):
    outputs = []
    for i, workers in enumerate(["1", "2", "2"]):
        out = tmp_path / f"ubm{i}.npz"
        result = CliRunner().invoke(cli, ["-q", "train-ubm", "-o", str(out), "--components", "8",
                                          "--iterations", "3", "--seed", "5", "--workers", workers,
                                          str(synthetic_corpus / "background")])
        assert result.exit_code == 0, result.stderr
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1] == outputs[2]


def test_train_ubm_refuses_to_overwrite_without_force(store, synthetic_corpus):
    before = (store / "ubm.npz").read_bytes()
    result = CliRunner().invoke(cli, ["train-ubm", "-o", str(store / "ubm.npz"), "--components", "4",
                                      str(synthetic_corpus / "background")])
    assert result.exit_code == 2 and "--force" in result.stderr
    assert (store / "ubm.npz").read_bytes() == before


def test_peak_memory_helper_is_sane():
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss > 0


def children_of(pid):
    """Processes whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in os.listdir("/proc"):
        if stat.isdigit():
            try:
                with open(f"/proc/{stat}/stat") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(stat))
    return found


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signals are Linux's")
@pytest.mark.parametrize("phase", ["extraction", "EM"])
def test_workers_die_with_a_killed_train_ubm(tmp_path, phase):
    if phase == "extraction":
        rng = np.random.default_rng(5)
        for i in range(48):
            write(tmp_path / f"f{i}.wav", np.resize(speech(seed=i), 16000 * 4))
        inputs = ["--no-cache", *sorted(map(str, tmp_path.glob("*.wav")))]
    else:
        from spkver.features.store import FeatureStore

        config = FeatureConfig()
        store = FeatureStore(tmp_path / "feats", config)
        rng = np.random.default_rng(5)
        for i in range(8):
            (tmp_path / f"s{i}").write_bytes(bytes([i]))
            store.put(tmp_path / f"s{i}", rng.normal(size=(50_000, config.dim)).astype(np.float32))
        store.save_index()
        inputs = ["--features", str(tmp_path / "feats")]
    command = [*SPKVER, "train-ubm", "-o", str(tmp_path / "u.npz"), "--components", "256", "--workers", "2", *inputs]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    workers = []
    while not workers and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
        workers = children_of(process.pid)
    assert workers, "the pool never started"
    time.sleep(0.3)
    process.send_signal(signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 10
    while any(alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(p) for p in workers), "a worker outlived its parent"
