"""The public Python API: names, lazy import, keyword-only options, and the examples in the docstrings."""

from __future__ import annotations

import doctest
import inspect
import subprocess
import sys

import pytest

import spkver
import spkver.api


def imported_by(code: str) -> set[str]:
    """Top-level packages a fresh interpreter has imported after running ``code``."""
    out = subprocess.run([sys.executable, "-c", f"{code}\nimport sys; print(' '.join(sys.modules))"],
                         capture_output=True, text=True, check=True).stdout
    return {name.split(".")[0] for name in out.split()}


def test_import_spkver_is_cheap():
    assert not imported_by("import spkver") & {"numpy", "scipy", "librosa", "numba", "soundfile", "click"}


def test_the_command_line_starts_without_librosa_or_numba():
    assert not imported_by("import spkver.cli") & {"librosa", "numba"}


def test_every_public_name_resolves_to_its_home():
    assert sorted(spkver.__all__) == sorted(["__version__", *spkver._HOMES])
    for name in spkver.__all__:
        value = getattr(spkver, name)
        if name != "__version__":
            assert value.__module__ == spkver._HOMES[name], name
    assert set(spkver.__all__) <= set(dir(spkver))
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        spkver.nothing  # noqa: B018


@pytest.mark.parametrize("name, positional", [
    ("train_ubm", ["items"]), ("enroll", ["ubm", "items", "speaker"]), ("verify", ["ubm", "speakers", "items"]),
    ("score_trials", ["ubm", "store", "trials"]), ("identify", ["ubm", "speakers", "items"]),
])
def test_stage_options_are_keyword_only_with_one_run_options(name, positional):
    parameters = inspect.signature(getattr(spkver, name)).parameters.values()
    assert [p.name for p in parameters if p.kind is p.POSITIONAL_OR_KEYWORD] == positional
    keyword = {p.name: p for p in parameters if p.kind is p.KEYWORD_ONLY}
    assert isinstance(keyword["run"].default, spkver.RunOptions)
    assert not {"workers", "skip_bad", "on_skip", "progress", "on_note"} & set(keyword)


def test_run_options_are_frozen():
    run = spkver.RunOptions(workers=2)
    with pytest.raises(AttributeError):
        run.workers = 3


def test_the_api_examples_run():
    """Every example in ``spkver.api`` passes; the stages' examples continue :func:`train_ubm`'s, as they say."""
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    examples = [test for test in doctest.DocTestFinder().find(spkver.api) if test.examples]
    first = next(test for test in examples if test.name == "spkver.api.train_ubm")
    runner.run(first, clear_globs=False)
    for test in examples:
        if test is not first:
            test.globs.update({k: v for k, v in first.globs.items() if k in ("corpus", "run", "ubm", "find_audio")})
            runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.attempted > 20 and result.failed == 0


def test_enrolling_from_under_a_second_of_speech_is_told_to_on_note(synthetic_corpus, tmp_path):
    import numpy as np
    import soundfile as sf

    run = spkver.RunOptions(workers=1)
    ubm = spkver.train_ubm(spkver.find_audio([synthetic_corpus / "background"]), n_components=4, iterations=1, run=run)
    clip = sorted((synthetic_corpus / "enroll" / "alice").glob("*.wav"))[0]
    audio, rate = sf.read(clip)
    sf.write(tmp_path / "short.wav", audio[: rate // 2], rate)
    notes: list[str] = []
    told = spkver.RunOptions(workers=1, on_note=notes.append)
    spkver.enroll(ubm, spkver.find_audio([tmp_path / "short.wav"]), "carol", run=told)
    assert len(notes) == 1 and "speaker 'carol': enrolled from only" in notes[0]
    batch = list(spkver.enroll_many(ubm, {"dave": spkver.find_audio([tmp_path / "short.wav"])}, run=told))
    assert len(batch) == 1 and len(notes) == 2 and "'dave'" in notes[1]
    spkver.enroll(ubm, spkver.find_audio([synthetic_corpus / "enroll" / "alice"]), "erin", run=told)
    assert len(notes) == 2 and np.isfinite(batch[0].gmm.means).all()
