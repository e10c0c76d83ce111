"""Trial lists, keys and score files, in the formats speech engineers have.

Trial lists are ``speaker test [label]`` lines (Kaldi ``trials``), or pair
lists ``[label] enrollment test`` (VoxCeleb), tab- or space-separated;
``test`` (and ``enrollment``) is a path, or an utterance id when a
``wav.scp`` is given. Labels are ``target|nontarget|1|0|tgt|imp|true|false``.
Lines starting with ``#`` are comments; blank lines are skipped.

Score files are detected per file from their first data line:

- spkver's own, ``speaker<TAB>test<TAB>score[<TAB>label]``, whose header
  comments say whether the scores are calibrated and how they were
  normalised, so that a calibration is only ever applied to scores like the
  ones it was fitted on;
- Kaldi's, ``speaker test score [label]`` separated by spaces;
- the output of ``spkver verify``, ``speaker<TAB>path<TAB>score<TAB>accept|reject``,
  and its ``--json`` lines (decisions, not labels: give a key).

A key (``evaluate --key``) is a labelled trial list in either layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

from spkver.audio.sources import path_exists
from spkver.errors import SpkverError, printable
from spkver.fileio import content_lines, parse_json, read_text, reads_as

LABELS = {"target": True, "nontarget": False, "tgt": True, "non": False, "nontgt": False, "imp": False,
          "1": True, "0": False, "true": True, "false": False}
LABEL_CHOICES = "target, nontarget, 1, 0, tgt, imp, true, false"
DECISIONS = {"accept": True, "reject": False}
CALIBRATED_MARK = "# spkver: calibrated log-likelihood ratios"
NORMALISATION_MARK = "# spkver: normalisation "  # followed by e.g. "s" or "s top-n=200"
# Trial-list layouts: where the label is, and what the two names are.
TRIALS_LAYOUT = "speaker test [label]"
PAIRS_LAYOUT = "[label] enrollment test"
# Score-file formats, by what they are called in messages.
SPKVER_SCORES = "spkver scores"
KALDI_SCORES = "Kaldi scores"
VERIFY_OUTPUT = "verify output"
VERIFY_JSON = "verify --json output"
MISMATCH_EXAMPLES = 3  # trials named when scores and key disagree


@dataclass(frozen=True)
class Trial:
    """One trial: a claimed speaker and a test recording.

    Attributes
    ----------
    speaker : str
        The claimed speaker's id; for a pair trial, the enrollment as written.
    test : str
        The test as written in the trial list (a path, or an utterance id).
    path : Path
        The test's audio file.
    label : bool or None
        True for a target trial, False for a non-target one, None when unknown.
    line : int
        Line number in the trial list (0 when the trial was not read from one).
    enrollment : Path or None
        Pair trials (``score --pairs``): the one recording the claimed speaker
        is enrolled from; None when the speaker is in a model store.
    """

    speaker: str
    test: str
    path: Path
    label: bool | None = None
    line: int = 0
    enrollment: Path | None = None


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
    line : int
        Line number in the score file it was read from (0 otherwise).
    """

    speaker: str
    test: str
    score: float
    label: bool | None = None
    accepted: bool | None = None
    frames: int | None = None
    line: int = 0


def _fields(line: str) -> list[str]:
    """A line's fields: split at tabs when it has any (names may hold spaces), else at spaces."""
    fields = line.split("\t") if "\t" in line else line.split()
    return [f.strip() for f in fields if f.strip()]


def parse_label(text: str) -> bool:
    """``True`` for a target label, ``False`` for a non-target one; ValueError naming the choices otherwise."""
    try:
        return LABELS[text.lower()]
    except KeyError:
        raise ValueError(f"label {printable(text)!r} is not one of {LABEL_CHOICES}") from None


def _split_trial(line: str, layout: str = TRIALS_LAYOUT):
    """``(speaker or enrollment, test, label or None)`` of one trial-list line in ``layout``."""
    fields = _fields(line)
    if layout == PAIRS_LAYOUT:
        if len(fields) == 3:
            return fields[1], fields[2], parse_label(fields[0])
        if len(fields) == 2:
            return fields[0], fields[1], None
        raise ValueError(f"expected '{PAIRS_LAYOUT}', found {len(fields)} fields")
    label = None
    if len(fields) >= 3 and fields[-1].lower() in LABELS:
        label = LABELS[fields.pop().lower()]
    if len(fields) < 2:
        raise ValueError(f"expected '{TRIALS_LAYOUT}'")
    return fields[0], " ".join(fields[1:]), label


def _audio_path(name: str, number: int, path: Path, wav_scp: dict | None, audio_root: Path | None) -> Path:
    """The audio file a trial list names: an utterance id of ``wav_scp``, or a path from ``audio_root``."""
    base = path.parent if audio_root is None else Path(audio_root)
    if wav_scp is not None and name in wav_scp:
        return Path(wav_scp[name])
    if wav_scp is not None and not path_exists(base / name):
        raise SpkverError(f"line {number}: utterance id {printable(name)!r} is not in the wav.scp", path)
    return base / name


def read_trials(path, wav_scp: dict | None = None, *, pairs: bool = False, audio_root=None) -> list[Trial]:
    """Parse a trial list, or with ``pairs`` a pair list (``[label] enrollment test``).

    Parameters
    ----------
    path : path
        The list.
    wav_scp : dict, optional
        Utterance ids to paths (Kaldi ``trials``): names are ids, not paths.
    pairs : bool
        Pair trials: each trial's speaker is the enrollment recording it names
        (``Trial.enrollment``).
    audio_root : path, optional
        The folder relative paths start from [default: the list's folder].

    Raises
    ------
    SpkverError
        Unreadable file, malformed or duplicate lines, unknown labels or
        utterance ids, or no trial at all; messages carry the line number.
    """
    path = Path(path)
    layout = PAIRS_LAYOUT if pairs else TRIALS_LAYOUT
    trials: list[Trial] = []
    seen: dict[tuple[str, str], int] = {}
    for number, line in content_lines(path, "trials file"):
        try:
            speaker, test, label = _split_trial(line, layout)
        except ValueError as exc:
            raise SpkverError(f"line {number}: {exc}", path) from None
        audio = _audio_path(test, number, path, wav_scp, audio_root)
        enrollment = _audio_path(speaker, number, path, wav_scp, audio_root) if pairs else None
        if (speaker, test) in seen:
            raise SpkverError(f"line {number}: repeats the trial of line {seen[speaker, test]}", path)
        seen[speaker, test] = number
        trials.append(Trial(speaker, test, audio, label, number, enrollment))
    if not trials:
        raise SpkverError("trial list holds no trials", path)
    return trials


def key_layout(fields: list[str]) -> str:
    """The layout of a key from its first line's fields: VoxCeleb pairs when only the first field is a label."""
    if len(fields) == 3 and fields[0].lower() in LABELS and fields[-1].lower() not in LABELS:
        return PAIRS_LAYOUT
    return TRIALS_LAYOUT


def read_key(path) -> tuple[list[Trial], str]:
    """Parse a key: labelled trials, Kaldi ``trials`` (label last) or VoxCeleb pairs (label first).

    Returns
    -------
    trials : list of Trial
        Every trial with its label; ``path`` is the test as written (keys name
        trials, they read no audio).
    layout : str
        :data:`TRIALS_LAYOUT` or :data:`PAIRS_LAYOUT`, as detected from the first line.

    Raises
    ------
    SpkverError
        A line without a label or with an unknown one, a repeated trial, no
        trial at all; messages carry the line number.
    """
    path = Path(path)
    layout = None
    trials: list[Trial] = []
    seen: dict[tuple[str, str], int] = {}
    for number, line in content_lines(path, "key file"):
        layout = layout or key_layout(_fields(line))
        try:
            fields = _fields(line)
            if layout == TRIALS_LAYOUT and len(fields) >= 3:
                parse_label(fields[-1])  # a key's last field must be a label: say so rather than join it to the test
            speaker, test, label = _split_trial(line, layout)
        except ValueError as exc:
            raise SpkverError(f"line {number}: {exc}", path) from None
        if label is None:
            raise SpkverError(f"line {number}: no label; expected '{layout.replace('[label]', 'label')}' "
                              f"with a label among {LABEL_CHOICES}", path)
        if (speaker, test) in seen:
            raise SpkverError(f"line {number}: repeats the trial of line {seen[speaker, test]}", path)
        seen[speaker, test] = number
        trials.append(Trial(speaker, test, Path(test), label, number))
    if not trials:
        raise SpkverError("key holds no trials", path)
    return trials, layout or TRIALS_LAYOUT


class _ScoreFileFields(NamedTuple):
    scores: list[Score]
    calibrated: bool
    normalisation: str


class ScoreFile(_ScoreFileFields):
    """A parsed score file: its lines, whether they are calibrated LLRs, how they were normalised.

    It unpacks as ``(scores, calibrated, normalisation)``, as it always has;
    ``format`` names the format it was read in (:data:`SPKVER_SCORES`,
    :data:`KALDI_SCORES`, :data:`VERIFY_OUTPUT` or :data:`VERIFY_JSON`).
    """

    format: str

    def __new__(cls, scores, calibrated, normalisation, format=SPKVER_SCORES):
        self = super().__new__(cls, scores, calibrated, normalisation)
        self.format = format
        return self


def score_file_header(calibrated: bool, normalisation: str) -> list[str]:
    """Comment lines that record how a score file's scores were made."""
    return ([CALIBRATED_MARK] if calibrated else []) + \
        ([NORMALISATION_MARK + normalisation] if normalisation != "none" else [])


def score_format(line: str) -> str:
    """The format of a score file, from its first data line."""
    if line.startswith("{"):
        return VERIFY_JSON
    fields = _fields(line)
    if len(fields) == 4 and fields[3].lower() in DECISIONS:
        return VERIFY_OUTPUT
    return SPKVER_SCORES if "\t" in line else KALDI_SCORES


def _finite_score(text, number: int, path: Path) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise SpkverError(f"line {number}: score {printable(text)!r} is not a number", path) from None
    if not math.isfinite(value):
        raise SpkverError(f"line {number}: score is not finite", path)
    return value


def _verify_json_score(line: str, number: int, path: Path) -> Score:
    record = parse_json(line, f"line {number}", path)
    if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in ("speaker", "path")) \
            or record.get("decision") not in DECISIONS or isinstance(record.get("score"), bool):
        raise SpkverError(f"line {number}: expected a JSON object with speaker, path, score and decision "
                          "(as `spkver verify --json` prints)", path)
    return Score(record["speaker"], record["path"], _finite_score(record.get("score"), number, path),
                 accepted=DECISIONS[record["decision"]], line=number)


def _delimited_score(line: str, number: int, path: Path, form: str) -> Score:
    fields = line.split("\t") if form != KALDI_SCORES else line.split()
    shape = {SPKVER_SCORES: "speaker<TAB>test<TAB>score[<TAB>label]",
             KALDI_SCORES: "speaker utterance score [label]",
             VERIFY_OUTPUT: "speaker<TAB>path<TAB>score<TAB>accept|reject"}[form]
    if len(fields) not in ((4,) if form == VERIFY_OUTPUT else (3, 4)):
        raise SpkverError(f"line {number}: expected '{shape}' ({form}, as detected from the first line)", path)
    value = _finite_score(fields[2], number, path)
    if form == VERIFY_OUTPUT:
        if fields[3].lower() not in DECISIONS:
            raise SpkverError(f"line {number}: decision {printable(fields[3])!r} is not accept or reject", path)
        return Score(fields[0], fields[1], value, accepted=DECISIONS[fields[3].lower()], line=number)
    try:
        label = parse_label(fields[3]) if len(fields) == 4 else None
    except ValueError as exc:
        raise SpkverError(f"line {number}: {exc}", path) from None
    return Score(fields[0], fields[1], value, label, line=number)


def read_scores(path) -> ScoreFile:
    """Parse a score file in any of the formats above (detected from its first data line).

    Raises
    ------
    SpkverError
        Unreadable file, a line that does not fit the detected format, a score
        that is not a finite number, an unknown label, a repeated trial, no
        score at all; messages carry the line number.
    """
    path = Path(path)
    text = read_text(path, "scores file")
    calibrated = text.startswith(CALIBRATED_MARK)
    normalisation = next((line[len(NORMALISATION_MARK):].strip() for line in text.split("\n", 2)[:2]
                          if line.startswith(NORMALISATION_MARK)), "none")  # the header's two lines only
    form = None
    scores = []
    seen: dict[tuple[str, str], int] = {}
    for number, line in content_lines(path, "scores file", text=text):
        form = form or score_format(line)
        score = _verify_json_score(line, number, path) if form == VERIFY_JSON else \
            _delimited_score(line, number, path, form)
        if (score.speaker, score.test) in seen:
            raise SpkverError(f"line {number}: repeats the trial of line {seen[score.speaker, score.test]}", path)
        seen[score.speaker, score.test] = number
        scores.append(score)
    if not scores:
        raise SpkverError("score file holds no scores", path)
    return ScoreFile(scores, calibrated, normalisation, form or SPKVER_SCORES)


def is_score_file(path) -> bool:
    """Whether ``path`` holds scores in a format :func:`read_scores` reads."""
    return reads_as(read_scores, path)


class LabelledScores(NamedTuple):
    """Scores split by label, and how scores and key matched."""

    targets: list[float]
    nontargets: list[float]
    not_in_key: int  # scored trials the key does not name (left out)
    not_scored: int  # key trials without a score (left out)


def _named(trials, where: str = "") -> str:
    shown = ", ".join(f"{printable(t.speaker)} {printable(t.test)} ({where}{' ' if where else ''}line {t.line})"
                      for t in trials[:MISMATCH_EXAMPLES])
    return shown + (f" and {len(trials) - MISMATCH_EXAMPLES} more" if len(trials) > MISMATCH_EXAMPLES else "")


class LabelledTrials(NamedTuple):
    """The scores a key (or their own labels) labels, their labels, and how scores and key matched."""

    scores: list[Score]  # in the scores' order; with a key, only those it names
    labels: list[bool]  # each score's label, from the key when one is given
    not_in_key: int  # scored trials the key does not name (left out)
    not_scored: int  # key trials without a score (left out)


def label_trials(scores, key=None, source="", on_note=None) -> LabelledTrials:
    """Label each score, from the score itself or from a ``key``.

    With a key, the trials both name are kept: scores the key does not name
    and key trials without a score are left out, counted, and reported to
    ``on_note`` (the first few by line number); nothing in common is an
    error. A score labelled otherwise than by the key is an error.

    Raises
    ------
    SpkverError
        An unlabelled score without a key, labels that disagree, nothing in
        common with the key, or only one class of trials.
    """
    labels = {(t.speaker, t.test): t for t in key} if key is not None else None
    kept: list[Score] = []
    kept_labels: list[bool] = []
    unkeyed = []
    for s in scores:
        if labels is None:
            if s.label is None:
                raise SpkverError(f"line {s.line}: no target/nontarget label for {printable(s.speaker)} "
                                  f"{printable(s.test)} (give --key)", source or None)
            label = s.label
        else:
            trial = labels.get((s.speaker, s.test))
            if trial is None:
                unkeyed.append(s)
                continue
            if s.label is not None and s.label != trial.label:
                raise SpkverError(f"line {s.line}: labelled {'target' if s.label else 'nontarget'} but the key's "
                                  f"line {trial.line} says {'target' if trial.label else 'nontarget'}", source or None)
            label = trial.label
        kept.append(s)
        kept_labels.append(label)
    unscored = []
    if labels is not None:
        scored = {(s.speaker, s.test) for s in scores}
        unscored = [t for t in key if (t.speaker, t.test) not in scored]
        if not kept:
            raise SpkverError(f"no trial is both scored and in the key (scores: {_named(unkeyed, 'scores')}; "
                              f"key: {_named(unscored, 'key')})", source or None)
        if on_note and unkeyed:
            on_note(f"{source}: {len(unkeyed)} scored trials are not in the key and are left out: "
                    f"{_named(unkeyed, 'scores')}")
        if on_note and unscored:
            on_note(f"{source}: {len(unscored)} key trials have no score and are left out: {_named(unscored, 'key')}")
    if all(kept_labels) or not any(kept_labels):
        raise SpkverError("need both target and non-target trials to evaluate", source or None)
    return LabelledTrials(kept, kept_labels, len(unkeyed), len(unscored))


def labelled_scores(scores, key=None, source="", on_note=None) -> LabelledScores:
    """Split scores into target and non-target lists, labels from the scores or from a ``key``.

    Which scores are kept, and the errors and notes, are those of :func:`label_trials`.
    """
    trials = label_trials(scores, key, source, on_note)
    targets = [s.score for s, label in zip(trials.scores, trials.labels) if label]
    nontargets = [s.score for s, label in zip(trials.scores, trials.labels) if not label]
    return LabelledScores(targets, nontargets, trials.not_in_key, trials.not_scored)


class AlignedScores(NamedTuple):
    """Several score lists' scores of the trials they all score."""

    trials: list[Score]  # the first list's record of each common trial, in its order, with the lists' label
    scores: list[list[float]]  # scores[i][k]: list k's score of trials[i]
    left_out: list[int]  # per list, its trials that some other list does not score


def align_scores(score_lists, sources, labels=None, on_note=None) -> AlignedScores:
    """Match the scores several systems gave the same trials, by (speaker, test).

    Trials that not every list scores are left out, counted, and reported to
    ``on_note`` per list (the first few by line number).

    Parameters
    ----------
    score_lists : sequence of sequences of Score
        One list per system, each naming a trial at most once (as :func:`read_scores` ensures).
    sources : sequence of str
        The file each list was read from, for messages.
    labels : sequence of sequences of bool, optional
        Each list's labels, parallel to its scores (:attr:`LabelledTrials.labels`)
        [default: the scores' own labels]. A trial's label is the one its
        lists give, None when none gives one.

    Raises
    ------
    SpkverError
        No trial scored by every list, or two lists labelling a trial differently.
    """
    if labels is None:
        labels = [[s.label for s in scores] for scores in score_lists]
    common = set.intersection(*({(s.speaker, s.test) for s in scores} for scores in score_lists))
    if not common:
        named = "; ".join(f"{printable(source)}: {_named(scores)}" for source, scores in zip(sources, score_lists))
        raise SpkverError(f"no trial is scored in every file ({named})")
    rows = {trial: row for row, trial in enumerate(t for t in ((s.speaker, s.test) for s in score_lists[0])
                                                    if t in common)}
    first: list[Score | None] = [None] * len(rows)
    scores = [[0.0] * len(score_lists) for _ in rows]
    label_of: list[tuple[bool | None, int]] = [(None, 0)] * len(rows)  # the label, and the list that gave it
    left_out = []
    for k, (listed, listed_labels) in enumerate(zip(score_lists, labels)):
        dropped = []
        for s, label in zip(listed, listed_labels):
            row = rows.get((s.speaker, s.test))
            if row is None:
                dropped.append(s)
                continue
            scores[row][k] = s.score
            if k == 0:
                first[row] = s
            known, giver = label_of[row]
            if known is None:
                label_of[row] = (label, k)
            elif label is not None and label != known:
                other = next(t for t in score_lists[giver] if (t.speaker, t.test) == (s.speaker, s.test))
                raise SpkverError(f"line {s.line}: labelled {'target' if label else 'nontarget'} but "
                                  f"{printable(sources[giver])} line {other.line} says "
                                  f"{'target' if known else 'nontarget'}", sources[k])
        left_out.append(len(dropped))
        if on_note and dropped:
            on_note(f"{sources[k]}: {len(dropped)} of its {len(listed)} trials are not scored in every file and are "
                    f"left out: {_named(dropped)}")
    trials = [s if s.label == label else replace(s, label=label) for s, (label, _) in zip(first, label_of)
              if s is not None]
    return AlignedScores(trials, scores, left_out)


def format_score(speaker, test, score, label=None) -> str:
    """One line of spkver's score format."""
    text = f"{printable(speaker)}\t{printable(test)}\t{score:.6f}"
    if label is not None:
        text += "\ttarget" if label else "\tnontarget"
    return text


def score_file_bytes(calibrated: bool, normalisation: str, rows) -> bytes:
    """A whole score file: its header, then one line per ``(speaker, test, score, label)`` of ``rows``."""
    lines = score_file_header(calibrated, normalisation) + [format_score(*row) for row in rows]
    return ("\n".join(lines) + "\n").encode()
