"""Batch enrollment: many speakers in one `spkver enroll`, one extraction pool, models kept as they are made."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import make_store, run_cli, write_voice_files

from spkver.synth import WORDS, Voice

SPEAKERS = ["sp1", "sp2", "sp3", "sp4"]


@pytest.fixture(scope="module")
def ubm(synthetic_corpus, tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("batch-ubm"), synthetic_corpus, speakers=()) / "ubm.npz"


@pytest.fixture(scope="module")
def per_folder(tmp_path_factory):
    """Four speakers of seven short files each: 28 files, enough for the extraction pool to start."""
    root = tmp_path_factory.mktemp("per-folder")
    rng = np.random.default_rng(11)
    for name in SPEAKERS:
        write_voice_files(root / name, Voice.random(rng), 7, rng, WORDS[:4], n_words=2)
    return root


def enroll(ubm, models, *args):
    return run_cli("enroll", "--ubm", ubm, "--models", models, *args)


def one_by_one(ubm, per_folder, models):
    for name in SPEAKERS:
        result = enroll(ubm, models, "--speaker", name, "--workers", 1, per_folder / name)
        assert result.exit_code == 0, result.stderr
    return {name: (models / f"{name}.npz").read_bytes() for name in SPEAKERS}


@pytest.fixture(scope="module")
def reference(ubm, per_folder, tmp_path_factory):
    return one_by_one(ubm, per_folder, tmp_path_factory.mktemp("reference"))


def test_per_folder_in_parallel_equals_one_by_one(ubm, per_folder, reference, tmp_path):
    result = enroll(ubm, tmp_path / "models", "--per-folder", per_folder, "--workers", 2)
    assert result.exit_code == 0, result.stderr
    assert "enrolled 4 of 4 speakers" in result.stderr
    assert {name: (tmp_path / "models" / f"{name}.npz").read_bytes() for name in SPEAKERS} == reference


def test_speaker_list_equals_one_by_one(ubm, per_folder, reference, tmp_path):
    listing = per_folder / "speakers.txt"
    listing.write_text("".join(f"{p.parent.name} {p.parent.name}/{p.name}\n"
                               for p in sorted(per_folder.rglob("*.wav"))))
    result = enroll(ubm, tmp_path / "models", "--speaker-list", listing, "--workers", 2)
    assert result.exit_code == 0, result.stderr
    assert {name: (tmp_path / "models" / f"{name}.npz").read_bytes() for name in SPEAKERS} == reference


def test_data_dir_spk2utt_equals_one_by_one(ubm, per_folder, reference, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    files = sorted(per_folder.rglob("*.wav"))
    (data / "wav.scp").write_text("".join(f"{p.stem} cat {p} |\n" for p in files))
    (data / "utt2spk").write_text("".join(f"{p.stem} {p.parent.name}\n" for p in files))
    result = enroll(ubm, tmp_path / "models", "--data-dir", data, "--workers", 2)
    assert result.exit_code == 0, result.stderr
    assert {name: (tmp_path / "models" / f"{name}.npz").read_bytes() for name in SPEAKERS} == reference
    single = enroll(ubm, tmp_path / "one", "--speaker", "sp2", "--data-dir", data, "--workers", 1)
    assert single.exit_code == 0, single.stderr
    assert (tmp_path / "one" / "sp2.npz").read_bytes() == reference["sp2"]  # only sp2's utterances
    unknown = enroll(ubm, tmp_path / "one", "--speaker", "nobody", "--data-dir", data)
    assert unknown.exit_code == 2 and "no utterances in spk2utt/utt2spk" in unknown.stderr


def test_already_enrolled_speakers_are_refused_up_front(ubm, per_folder, tmp_path):
    models = tmp_path / "models"
    assert enroll(ubm, models, "--speaker", "sp1", per_folder / "sp1").exit_code == 0
    assert enroll(ubm, models, "--speaker", "sp3", per_folder / "sp3").exit_code == 0
    before = (models / "sp1.npz").read_bytes()
    result = enroll(ubm, models, "--per-folder", per_folder)
    assert result.exit_code == 2 and "2 speakers are already enrolled (sp1, sp3)" in result.stderr
    assert sorted(p.name for p in models.glob("*.npz")) == ["sp1.npz", "sp3.npz"]
    assert (models / "sp1.npz").read_bytes() == before
    forced = enroll(ubm, models, "--per-folder", per_folder, "--force", "--workers", 1)
    assert forced.exit_code == 0, forced.stderr
    assert len(list(models.glob("*.npz"))) == 4


def test_skip_bad_skips_files_and_speakers_left_without_audio(ubm, per_folder, tmp_path):
    root = tmp_path / "speakers"
    for name in ("sp1", "sp2"):
        (root / name).mkdir(parents=True)
        for wav in sorted((per_folder / name).glob("*.wav"))[:2]:
            (root / name / wav.name).write_bytes(wav.read_bytes())
    (root / "sp1" / "broken.wav").write_bytes(b"RIFF not really")
    (root / "empty").mkdir()
    (root / "empty" / "broken.wav").write_bytes(b"garbage")
    result = enroll(ubm, tmp_path / "models", "--per-folder", root, "--skip-bad", "--workers", 1)
    assert result.exit_code == 0, result.stderr
    assert "broken.wav" in result.stderr and "speaker 'empty': no usable audio left; not enrolled" in result.stderr
    assert sorted(p.stem for p in (tmp_path / "models").glob("*.npz")) == ["sp1", "sp2"]
    assert run_cli("info", tmp_path / "models" / "sp1.npz").exit_code == 0


def test_a_failure_mid_batch_keeps_the_speakers_already_written(ubm, per_folder, tmp_path):
    listing = tmp_path / "speakers.txt"
    good = sorted((per_folder / "sp1").glob("*.wav"))
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    listing.write_text(f"sp1 {good[0]}\nsp1 {good[1]}\nsp2 {bad}\nsp3 {good[2]}\n")
    result = enroll(ubm, tmp_path / "models", "--speaker-list", listing, "--workers", 1)
    assert result.exit_code == 2
    last = result.stderr.strip().splitlines()[-1]
    assert "bad.wav" in last and "the 1 speaker model(s) written before it are kept" in last
    assert [p.stem for p in (tmp_path / "models").glob("*.npz")] == ["sp1"]
    assert run_cli("info", tmp_path / "models" / "sp1.npz").exit_code == 0


@pytest.mark.parametrize("args, message", [
    (["--per-folder", "{root}", "{root}/sp1"], "AUDIO and --list are a single speaker's audio"),
    (["--per-folder", "{root}", "--speaker-list", "{root}/x"], "give --speaker with AUDIO, or one of"),
    (["--speaker", "a", "--per-folder", "{root}"], "give them without --speaker"),
    ([], "give --speaker with AUDIO, or one of"),
])
def test_batch_usage_errors(ubm, per_folder, tmp_path, args, message):
    result = enroll(ubm, tmp_path / "models", *[a.format(root=per_folder) for a in args])
    assert result.exit_code == 2 and message in result.stderr


def test_speaker_list_errors_name_the_line(ubm, per_folder, tmp_path):
    listing = tmp_path / "speakers.txt"
    listing.write_text(f"sp1 {per_folder}/sp1/sp1_0.wav\nonly-one-field\n")
    result = enroll(ubm, tmp_path / "models", "--speaker-list", listing)
    assert result.exit_code == 2 and "line 2: expected 'speaker path-or-utterance-id'" in result.stderr
    listing.write_text(f"sp1 {per_folder}/sp1/missing.wav\n")
    result = enroll(ubm, tmp_path / "models", "--speaker-list", listing)
    assert result.exit_code == 2 and "line 1:" in result.stderr and "missing.wav" in result.stderr
    listing.write_text(f"bad/id {per_folder}/sp1/sp1_0.wav\n")
    result = enroll(ubm, tmp_path / "models", "--speaker-list", listing)
    assert result.exit_code == 2 and "line 1: speaker id 'bad/id' is not valid" in result.stderr


def test_enroll_many_yields_models_as_speakers_complete(ubm, per_folder):
    from spkver.api import enroll_many
    from spkver.audio.sources import find_audio
    from spkver.run import RunOptions
    from spkver.storage.models import load_model

    seen = []
    speakers = {name: find_audio([per_folder / name]) for name in SPEAKERS}
    run = RunOptions(workers=1, progress=lambda results, length: (seen.append(length), results)[1])
    models = enroll_many(load_model(ubm), speakers, run=run)
    first = next(models)
    assert first.meta["speaker"] == "sp1" and first.meta["training"]["files"] == 7
    assert [m.meta["speaker"] for m in models] == SPEAKERS[1:] and seen == [4]


def test_a_speaker_whose_audio_cannot_move_the_ubm_is_named(ubm, per_folder):
    # A relevance beyond what the commands take rounds every α to 0: the model would equal its UBM, which is
    # refused, and in a batch the error says whose model it was.
    from spkver.api import enroll_many
    from spkver.audio.sources import find_audio
    from spkver.errors import SpkverError
    from spkver.run import RunOptions
    from spkver.storage.models import load_model

    speakers = {name: find_audio([per_folder / name]) for name in SPEAKERS[:2]}
    models = enroll_many(load_model(ubm), speakers, relevance=1e300, run=RunOptions(workers=1))
    with pytest.raises(SpkverError, match="^speaker 'sp1': the enrollment audio did not move the UBM"):
        next(models)
