"""Trial lists and score files (Kaldi conventions).

A trial line is ``speaker test [target|nontarget]``, tab- or space-separated;
``test`` is a path, or an utterance id when a ``wav.scp`` is given. A score
line is ``speaker<TAB>test<TAB>score[<TAB>label]``. Lines starting with
``#`` are comments; blank lines are skipped. spkver's score files start with
comments saying whether the scores are calibrated and how they were
normalised, so that a calibration is only ever applied to scores like the
ones it was fitted on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from spkver.audio.sources import path_exists
from spkver.errors import SpkverError, printable
from spkver.fileio import numbered_lines, read_text, reads_as

LABELS = {"target": True, "nontarget": False, "tgt": True, "non": False, "nontgt": False, "imp": False}
CALIBRATED_MARK = "# spkver: calibrated log-likelihood ratios"
NORMALISATION_MARK = "# spkver: normalisation "  # followed by e.g. "s" or "s top-n=200"


@dataclass(frozen=True)
class Trial:
    """One trial: a claimed speaker and a test recording.

    Attributes
    ----------
    speaker : str
        The claimed speaker's id.
    test : str
        The test as written in the trial list (a path, or an utterance id).
    path : Path
        The test's audio file.
    label : bool or None
        True for a target trial, False for a non-target one, None when unknown.
    line : int
        Line number in the trial list (0 when the trial was not read from one).
    """

    speaker: str
    test: str
    path: Path
    label: bool | None = None
    line: int = 0


@dataclass(frozen=True)
class Score:
    """The score of one trial, as written to and read from score files.

    Attributes
    ----------
    speaker, test : str
        As in the :class:`Trial`; ``test`` is the recording's path for ``verify``.
    score : float
        Average log-likelihood ratio (normalised as asked), or a calibrated LLR.
    label : bool or None
        Target (True) or non-target (False) when known.
    accepted : bool or None
        The decision at the threshold (``verify`` only).
    frames : int or None
        Speech frames of the test recording (``verify`` only).
    """

    speaker: str
    test: str
    score: float
    label: bool | None = None
    accepted: bool | None = None
    frames: int | None = None


def _read_lines(path: Path, what: str, text: str | None = None):
    """Numbered non-blank, non-comment lines of ``path`` (or of ``text`` already read from it)."""
    text = read_text(path, f"{what} file") if text is None else text
    for number, raw in numbered_lines(text, path):
        line = raw.strip()
        if line and not line.startswith("#"):
            yield number, line


def _split_trial(line: str):
    fields = line.split("\t") if "\t" in line else line.split()
    fields = [f.strip() for f in fields if f.strip()]
    label = None
    if len(fields) >= 3 and fields[-1].lower() in LABELS:
        label = LABELS[fields.pop().lower()]
    if len(fields) < 2:
        raise ValueError("expected 'speaker test [target|nontarget]'")
    return fields[0], " ".join(fields[1:]), label


def read_trials(path, wav_scp: dict | None = None) -> list[Trial]:
    """Parse a trial list; ``wav_scp`` maps utterance ids to paths (Kaldi ``trials``).

    Raises
    ------
    SpkverError
        Unreadable file, malformed or duplicate lines, unknown utterance ids,
        or no trial at all; messages carry the line number.
    """
    path = Path(path)
    trials: list[Trial] = []
    seen: dict[tuple[str, str], int] = {}
    for number, line in _read_lines(path, "trials"):
        try:
            speaker, test, label = _split_trial(line)
        except ValueError as exc:
            raise SpkverError(f"line {number}: {exc}", path) from None
        if wav_scp is not None and test in wav_scp:
            audio = Path(wav_scp[test])
        elif wav_scp is not None and not path_exists(path.parent / test):
            raise SpkverError(f"line {number}: utterance id {test!r} is not in the wav.scp", path)
        else:
            audio = path.parent / test
        if (speaker, test) in seen:
            raise SpkverError(f"line {number}: repeats the trial of line {seen[speaker, test]}", path)
        seen[speaker, test] = number
        trials.append(Trial(speaker, test, audio, label, number))
    if not trials:
        raise SpkverError("trial list holds no trials", path)
    return trials


class ScoreFile(NamedTuple):
    """A parsed score file: its lines, whether they are calibrated LLRs, how they were normalised."""

    scores: list[Score]
    calibrated: bool
    normalisation: str


def score_file_header(calibrated: bool, normalisation: str) -> list[str]:
    """Comment lines that record how a score file's scores were made."""
    return ([CALIBRATED_MARK] if calibrated else []) + \
        ([NORMALISATION_MARK + normalisation] if normalisation != "none" else [])


def read_scores(path) -> ScoreFile:
    """Parse a score file (lines ``speaker<TAB>test<TAB>score[<TAB>label]`` and the header comments)."""
    path = Path(path)
    text = read_text(path, "scores file")
    calibrated = text.startswith(CALIBRATED_MARK)
    normalisation = next((line[len(NORMALISATION_MARK):].strip() for line in text.split("\n", 2)[:2]
                          if line.startswith(NORMALISATION_MARK)), "none")  # the header's two lines only
    scores = []
    for number, line in _read_lines(path, "scores", text):
        fields = line.split("\t")
        if len(fields) not in (3, 4):
            raise SpkverError(f"line {number}: expected 'speaker<TAB>test<TAB>score[<TAB>label]'", path)
        try:
            value = float(fields[2])
        except ValueError:
            raise SpkverError(f"line {number}: score {fields[2]!r} is not a number", path) from None
        if not math.isfinite(value):
            raise SpkverError(f"line {number}: score is not finite", path)
        label = None
        if len(fields) == 4:
            if fields[3].lower() not in LABELS:
                raise SpkverError(f"line {number}: label {fields[3]!r} is not target or nontarget", path)
            label = LABELS[fields[3].lower()]
        scores.append(Score(fields[0], fields[1], value, label))
    if not scores:
        raise SpkverError("score file holds no scores", path)
    return ScoreFile(scores, calibrated, normalisation)


def is_score_file(path) -> bool:
    """Whether ``path`` holds scores as ``spkver score`` writes them."""
    return reads_as(read_scores, path)


def labelled_scores(scores, trials=None, source=""):
    """Split scores into target and non-target lists, labels from the scores or from ``trials``."""
    labels = {(t.speaker, t.test): t.label for t in trials} if trials is not None else None
    targets: list[float] = []
    nontargets: list[float] = []
    for s in scores:
        label = s.label if labels is None else labels.get((s.speaker, s.test))
        if label is None:
            where = "the trials" if labels is not None else "the score file (give --trials)"
            raise SpkverError(f"no target/nontarget label for {s.speaker} {s.test} in {where}", source or None)
        (targets if label else nontargets).append(s.score)
    if not targets or not nontargets:
        raise SpkverError("need both target and non-target trials to evaluate", source or None)
    return targets, nontargets


def format_score(speaker, test, score, label=None) -> str:
    text = f"{printable(speaker)}\t{printable(test)}\t{score:.6f}"
    if label is not None:
        text += "\ttarget" if label else "\tnontarget"
    return text
