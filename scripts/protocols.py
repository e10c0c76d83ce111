"""Evaluation protocols on the recorded speech in ../shared/data (see DEVELOPERS.md).

Each protocol names UBM files, per-speaker enrollment files and test files,
the speaker of a file, and the train-ubm options it is run with (none: every
protocol runs spkver's defaults).

The shared corpora are trimmed short clips. ``asc-long`` and ``fsdd-long``
build long recordings from them (written once to ``build_dir``, never into
the project): a speaker's clips concatenated with random 0.2-1.5 s gaps of
digital silence, low-level room noise or a breath-like noise burst, so that
the voice-activity detector and the defaults are also measured on
recordings with pauses.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DEFAULT_DATA_ROOT = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
DEFAULT_BUILD_DIR = Path(tempfile.gettempdir()) / "spkver-protocols"
ASC_DIGITS = "zero one two three four five six seven eight nine".split()
# Bump when the construction of the long recordings changes, so old builds are not reused.
LONG_BUILD_VERSION = 1


@dataclass
class Protocol:
    name: str
    description: str
    ubm: list
    enroll: dict
    test: list
    speaker_of: object
    cohort: list
    train_options: list = field(default_factory=list)


def asc_speaker(path: Path) -> str:
    return path.name[:8]


def fsdd_speaker(path: Path) -> str:
    return path.stem.split("_")[1]


def fsdd_take(path: Path) -> int:
    return int(path.stem.split("_")[2])


def asc(root: Path = DEFAULT_DATA_ROOT, build_dir=None) -> Protocol:
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
                    ubm, enroll, test, asc_speaker, ubm[::5])


def asc_short(root: Path = DEFAULT_DATA_ROOT, build_dir=None) -> Protocol:
    """As ``asc``, but each speaker enrolls on only 3 s: zero, one and two, take 01; single-keyword tests."""
    base = asc(root)
    enroll = {s: [p for p in files if p.parent.name in ASC_DIGITS[:3] and p.stem.endswith("_01")]
              for s, files in base.enroll.items()}
    return Protocol("asc-short", "ASC, 3 s enrollment (3 keywords, 1 take), 1 s single-keyword tests",
                    base.ubm, enroll, base.test, asc_speaker, base.cohort)


def fsdd(root: Path = DEFAULT_DATA_ROOT, build_dir=None) -> Protocol:
    """Takes 0-19 train the UBM, 20-29 enroll, 30-49 test (all 6 speakers, disjoint takes)."""
    files = sorted((root / "fsdd").glob("*.wav"))
    enroll = {}
    for p in files:
        if 20 <= fsdd_take(p) < 30:
            enroll.setdefault(fsdd_speaker(p), []).append(p)
    ubm = [p for p in files if fsdd_take(p) < 20]
    return Protocol("fsdd", "FSDD 8 kHz digits: UBM takes 0-19, enroll 20-29, test 30-49",
                    ubm, enroll, [p for p in files if fsdd_take(p) >= 30], fsdd_speaker, ubm[::6])


# ---------------------------------------------------------------------------------------------
# Long recordings built from the clips


def _gap(rng, rate, seconds):
    """``seconds`` of digital silence, low-level room noise, or a breath-like burst."""
    n = int(seconds * rate)
    kind = rng.integers(3)
    if kind == 0:
        return np.zeros(n)
    if kind == 1:
        # Room noise 35-50 dB below typical speech peaks: white noise tilted towards low frequencies.
        noise = np.convolve(rng.standard_normal(n + 64), np.exp(-np.arange(64) / 8.0), mode="valid")[:n]
        return noise / np.sqrt(np.mean(noise**2)) * 10 ** (rng.uniform(-70, -55) / 20)
    # A breath: band-limited noise (about 300-2500 Hz) under a smooth 0.2-0.6 s envelope.
    from scipy.signal import butter, sosfilt

    sos = butter(4, [300, min(2500, 0.45 * rate)], btype="bandpass", fs=rate, output="sos")
    burst_n = min(n, int(rng.uniform(0.2, 0.6) * rate))
    burst = sosfilt(sos, rng.standard_normal(burst_n)) * np.hanning(burst_n)
    burst = burst / np.sqrt(np.mean(burst**2) + 1e-20) * 10 ** (rng.uniform(-55, -40) / 20)
    out = np.zeros(n)
    start = rng.integers(0, n - burst_n + 1)
    out[start : start + burst_n] = burst
    return out


def _concatenate(clips, rng, seconds=None):
    """The clips (read from disk) joined by random 0.2-1.5 s gaps; returns (signal, rate).

    Without ``seconds`` the recording also starts and ends with a gap (a long
    recording); with ``seconds=(low, high)`` gaps come only between clips and
    are scaled so that the whole lasts ``low`` to ``high`` seconds where the
    clips allow it (a short test recording).
    """
    import soundfile as sf

    audio = []
    for clip in clips:
        samples, rate = sf.read(str(clip), dtype="float64", always_2d=True)
        audio.append(samples.mean(axis=1))
    n_gaps = len(clips) + 1 if seconds is None else len(clips) - 1
    gaps = rng.uniform(0.2, 1.5, size=n_gaps)
    if seconds is not None and n_gaps:
        speech = sum(len(a) for a in audio) / rate
        target = rng.uniform(*seconds)
        gaps = np.clip(gaps * max(target - speech, 0.0) / gaps.sum(), 0.2, 1.5)
    gaps = [_gap(rng, rate, g) for g in gaps]
    if seconds is not None:
        gaps = [np.zeros(0)] + gaps + [np.zeros(0)]
    pieces = [gaps[0]]
    for samples, gap in zip(audio, gaps[1:]):
        pieces += [samples, gap]
    return np.concatenate(pieces), rate


def _recordings(clips, sizes, rng):
    """Cut a shuffled list of clips into consecutive groups of the given sizes."""
    order = [clips[i] for i in rng.permutation(len(clips))]
    groups, start = [], 0
    for size in sizes:
        if start + size > len(order):
            break
        groups.append(order[start : start + size])
        start += size
    return groups


def _build(name, plan, build_dir, seed):
    """Write each planned recording (path -> clips) once; reuse a finished build."""
    import soundfile as sf

    folder = Path(build_dir or DEFAULT_BUILD_DIR) / f"{name}-v{LONG_BUILD_VERSION}"
    manifest = folder / "manifest.json"
    wanted = {str(rel): [str(c) for c in clips] for rel, clips in plan.items()}
    if manifest.is_file() and json.loads(manifest.read_text()) == wanted:
        return folder
    rng = np.random.default_rng(seed)
    for rel, clips in plan.items():
        signal, rate = _concatenate(clips, rng, (3.0, 5.0) if rel.parts[0] == "test" else None)
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), np.clip(signal, -1, 1), rate, subtype="PCM_16")
    manifest.write_text(json.dumps(wanted))
    return folder


def _long_protocol(name, description, speaker_of, ubm_clips, enroll_clips, test_clips, sizes, build_dir, seed):
    """Long UBM and enrollment recordings (20-60 s) and short test recordings (3-5 s) of each speaker.

    ``sizes`` gives clips per recording: (ubm range, enrollment count, test count).
    """
    rng = np.random.default_rng(seed)
    (ubm_low, ubm_high), n_enroll, n_test = sizes
    plan, ubm, enroll, test = {}, [], {}, []
    for speaker in sorted(ubm_clips):
        clips = ubm_clips[speaker]
        counts = rng.integers(ubm_low, ubm_high + 1, size=len(clips))
        for i, group in enumerate(_recordings(clips, counts, rng)):
            rel = Path("ubm") / f"{speaker}_{i:02d}.wav"
            plan[rel] = group
            ubm.append(rel)
    for speaker in sorted(enroll_clips):
        rel = Path("enroll") / f"{speaker}.wav"
        plan[rel] = _recordings(enroll_clips[speaker], [n_enroll], rng)[0]
        enroll[speaker] = [rel]
        for i, group in enumerate(_recordings(test_clips[speaker], [n_test] * len(test_clips[speaker]), rng)):
            rel = Path("test") / speaker / f"{speaker}_{i:02d}.wav"
            plan[rel] = group
            test.append(rel)
    folder = _build(name, plan, build_dir, seed)
    speaker_by_file = {str(folder / rel): speaker_of(clips[0]) for rel, clips in plan.items()}
    ubm = [folder / p for p in ubm]
    return Protocol(name, description, ubm, {s: [folder / p for p in ps] for s, ps in enroll.items()},
                    [folder / p for p in test], lambda path: speaker_by_file[str(path)], ubm[::2])


def asc_long(root: Path = DEFAULT_DATA_ROOT, build_dir=None) -> Protocol:
    """ASC as long recordings: UBM speakers 1-10 in 20-60 s recordings; each of speakers 11-30
    enrolls on one recording of 25 digit keywords (about 45 s) and is tested on 3-5 s recordings of
    three command keywords (16 per speaker)."""
    base = asc(root)
    by_speaker = {}
    for p in base.ubm:
        by_speaker.setdefault(asc_speaker(p), []).append(p)
    tests = {}
    for p in base.test:
        tests.setdefault(asc_speaker(p), []).append(p)
    return _long_protocol("asc-long", "ASC long recordings with pauses: enroll one 45 s recording, test 3-5 s",
                          asc_speaker, by_speaker, base.enroll, tests, ((12, 32), 25, 3), build_dir, seed=11)


def fsdd_long(root: Path = DEFAULT_DATA_ROOT, build_dir=None) -> Protocol:
    """FSDD as long recordings: takes 0-19 in 20-60 s UBM recordings; each speaker enrolls on one
    recording of 40 digits from takes 20-29 (about 50 s) and is tested on 3-5 s recordings of four
    digits from takes 30-49 (50 per speaker)."""
    files = sorted((root / "fsdd").glob("*.wav"))
    groups = {"ubm": {}, "enroll": {}, "test": {}}
    for p in files:
        part = "ubm" if fsdd_take(p) < 20 else "enroll" if fsdd_take(p) < 30 else "test"
        groups[part].setdefault(fsdd_speaker(p), []).append(p)
    return _long_protocol("fsdd-long", "FSDD long recordings with pauses: enroll one 50 s recording, test 3-5 s",
                          fsdd_speaker, groups["ubm"], groups["enroll"], groups["test"], ((28, 40), 40, 4),
                          build_dir, seed=12)


PROTOCOLS = {"asc": asc, "asc-short": asc_short, "asc-long": asc_long, "fsdd": fsdd, "fsdd-long": fsdd_long}
