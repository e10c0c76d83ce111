"""Evaluation protocols on the recorded speech in ../shared/data (see DEVELOPERS.md).

Each protocol names UBM files, per-speaker enrollment files and test files,
the speaker of a file, and the train-ubm options it is run with.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_DATA_ROOT = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
ASC_DIGITS = "zero one two three four five six seven eight nine".split()


@dataclass
class Protocol:
    name: str
    description: str
    ubm: list
    enroll: dict
    test: list
    speaker_of: object
    train_options: list
    cohort: list


def asc_speaker(path: Path) -> str:
    return path.name[:8]


def fsdd_speaker(path: Path) -> str:
    return path.stem.split("_")[1]


def asc(root: Path = DEFAULT_DATA_ROOT) -> Protocol:
    """UBM on speakers 1-10; enroll 11-30 on digit keywords; test on command keywords."""
    files = sorted((root / "asc" / "dataset").rglob("*.wav"))
    ubm = [p for p in files if int(asc_speaker(p)) <= 10]
    enroll, test = {}, []
    for p in files:
        if int(asc_speaker(p)) > 10:
            if p.parent.name in ASC_DIGITS:
                enroll.setdefault(asc_speaker(p), []).append(p)
            else:
                test.append(p)
    return Protocol("asc", "ASC text-independent, 16 kHz: enroll 10 digits x 5 takes, test 1 s commands",
                    ubm, enroll, test, asc_speaker,
                    ["--components", "256", "--no-vad", "--n-mels", "64", "--n-ceps", "30"], ubm[::5])


def asc_short(root: Path = DEFAULT_DATA_ROOT) -> Protocol:
    """As ``asc``, but each speaker enrolls on only 3 s: zero, one and two, take 01; single-keyword tests."""
    base = asc(root)
    enroll = {s: [p for p in files if p.parent.name in ASC_DIGITS[:3] and p.stem.endswith("_01")]
              for s, files in base.enroll.items()}
    return Protocol("asc-short", "ASC, 3 s enrollment (3 keywords, 1 take), 1 s single-keyword tests",
                    base.ubm, enroll, base.test, asc_speaker, base.train_options, base.cohort)


def fsdd(root: Path = DEFAULT_DATA_ROOT) -> Protocol:
    """Takes 0-19 train the UBM, 20-29 enroll, 30-49 test (all 6 speakers, disjoint takes)."""
    files = sorted((root / "fsdd").glob("*.wav"))

    def take(p):
        return int(p.stem.split("_")[2])

    enroll = {}
    for p in files:
        if 20 <= take(p) < 30:
            enroll.setdefault(fsdd_speaker(p), []).append(p)
    return Protocol("fsdd", "FSDD 8 kHz digits: UBM takes 0-19, enroll 20-29, test 30-49",
                    [p for p in files if take(p) < 20], enroll, [p for p in files if take(p) >= 30],
                    fsdd_speaker,
                    ["--sample-rate", "8000", "--components", "64", "--norm", "cmvn", "--no-vad", "--n-mels", "48",
                     "--n-ceps", "30"],
                    [p for p in files if take(p) < 20][::6])


PROTOCOLS = {"asc": asc, "asc-short": asc_short, "fsdd": fsdd}
