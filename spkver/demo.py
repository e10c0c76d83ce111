"""``spkver demo``: the whole pipeline on synthetic voices, no data needed."""

from __future__ import annotations

import shlex
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from spkver.api import enroll, train_ubm, verify
from spkver.audio.sources import find_audio
from spkver.backend.metrics import eer
from spkver.errors import SpkverError
from spkver.fileio import os_problem, write_atomic
from spkver.run import RunOptions
from spkver.storage.models import load_model, save_model
from spkver.storage.speakers import SpeakerStore
from spkver.storage.trials import score_file_bytes
from spkver.synth import WORDS, Voice, utterance

N_BACKGROUND, N_ENROLLED = 10, 6
ENROLL_WORDS, TEST_WORDS = WORDS[:5], WORDS[5:]


def write_corpus(root: Path, seed: int, sample_rate=16000):
    """Background, enrollment and test recordings of synthetic speakers.

    Enrollment and test utterances use different words (text-independent).
    """
    rng = np.random.default_rng(seed)
    voices = [Voice.random(rng) for _ in range(N_BACKGROUND + N_ENROLLED)]
    plan = []
    for i, voice in enumerate(voices[:N_BACKGROUND]):
        plan += [("background", f"bg{i:02d}", j, voice, WORDS, 4) for j in range(8)]
    for i, voice in enumerate(voices[N_BACKGROUND:]):
        plan += [("enroll", f"spk{i:02d}", j, voice, ENROLL_WORDS, 4) for j in range(4)]
        plan += [("test", f"spk{i:02d}", j, voice, TEST_WORDS, 2) for j in range(6)]
    for part, who, j, voice, words, n_words in plan:
        folder = root / part / who
        folder.mkdir(parents=True, exist_ok=True)
        sf.write(folder / f"{who}_{j}.wav", utterance(voice, n_words, sample_rate, rng, words), sample_rate)
    return [f"spk{i:02d}" for i in range(N_ENROLLED)]


def run_demo(workdir=None, seed=0, echo=print, progress=None):
    """Run the demo in ``workdir`` (kept), or in a temporary folder when None; return the EER.

    With a ``workdir`` the demo prints each step as the command that does it,
    writes a trial list (``trials``) and its own scores (``demo-scores.tsv``)
    there, and ends with three commands to try next on that folder.
    """
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="spkver-demo-") as tmp:
            rate = _run(Path(tmp), seed, echo, progress, kept=False)
        echo("The demo's files were in a temporary folder, now removed. To keep them and try spkver on them: "
             "spkver demo --workdir spkver-demo")
        return rate
    root = Path(workdir)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise SpkverError("is a file; --workdir needs a folder", root) from None
    except OSError as exc:
        raise SpkverError(f"cannot create the demo folder ({os_problem(exc)})", root) from None
    return _run(root, seed, echo, progress, kept=True)


def _run(root: Path, seed, echo, progress, kept: bool):
    def shown(words: str, *command) -> str:
        """A step as the command that does it (kept folder), or in words (a folder about to vanish)."""
        return shlex.join(["spkver", *map(str, command)]) if kept else words

    start = time.perf_counter()
    bar = progress or (lambda label: None)
    ubm_path, store = root / "ubm.npz", SpeakerStore(root / "models")
    echo(f"1. Synthesizing {N_BACKGROUND} background and {N_ENROLLED} target voices"
         + (f" in {root}" if kept else "") + " ...")
    speakers = write_corpus(root, seed)
    step = shown("train a UBM on the background voices (a folder per speaker)", "train-ubm", "-o", ubm_path,
                 "--per-folder", root / "background")
    echo(f"2. {step}")
    background = find_audio([root / "background"])
    ubm = train_ubm(background, seed=seed, labels=[item.path.parent.name for item in background],
                    run=RunOptions(progress=bar("features")))
    save_model(ubm_path, ubm)
    ubm = load_model(ubm_path, kind="ubm")
    summary = ubm.meta["training"]
    systems = summary.get("systems", [summary])
    trained = "; ".join(f"{s['iterations']} EM iterations, average log-likelihood {s['average_log_likelihood']:.2f}"
                        + (f" ({s['norm']})" if "norm" in s else "") for s in systems)
    per_system = f" per system ({len(systems)} systems)" if len(systems) > 1 else ""
    echo(f"   {summary['frames']} speech frames, {summary['components']} components{per_system}: {trained}")
    if ubm.channels:
        echo(f"   {ubm.channels[0].shape[2]} channel factors learnt from the {summary['channels']['speakers']} "
             "background speakers' recordings: removed from every recording before enrolling and scoring")
    store.root.mkdir(exist_ok=True)
    for name in speakers:
        echo("3. " + shown(f"enroll {name}", "enroll", "--ubm", ubm_path, "--models", store.root, "--speaker", name,
                           root / "enroll" / name))
        save_model(store.path(name), enroll(ubm, find_audio([root / "enroll" / name]), name))
    models = [store.load(name, ubm) for name in speakers]
    claims = [f"--speaker={name}" for name in speakers]
    echo("4. " + shown("verify every test file against every speaker", "verify", "--ubm", ubm_path, "--models",
                       store.root, *claims, root / "test"))
    trials = verify(ubm, models, find_audio([root / "test"]), run=RunOptions(progress=bar("verify")))
    labels = [Path(t.test).parent.name == t.speaker for t in trials]
    targets = [t.score for t, label in zip(trials, labels) if label]
    nontargets = [t.score for t, label in zip(trials, labels) if not label]
    for t in trials[: len(speakers)]:
        echo(f"   {t.speaker}\t{Path(t.test).name}\t{t.score:+.3f}\t{'accept' if t.accepted else 'reject'}")
    rate = eer(targets, nontargets)
    accepted_targets = np.mean([s >= 0 for s in targets])
    rejected_impostors = np.mean([s < 0 for s in nontargets])
    echo(f"5. {len(targets)} genuine and {len(nontargets)} impostor trials: EER {100 * rate:.1f}%; at "
         f"threshold 0, {100 * accepted_targets:.0f}% genuine accepted, {100 * rejected_impostors:.0f}% "
         f"impostors rejected ({time.perf_counter() - start:.1f} s)")
    if kept:
        write_trials_and_scores(root, trials, labels)
        echo(f"\nEverything is in {root}: audio in background/, enroll/ and test/, the UBM, the speaker models in "
             "models/, a trial list (trials) and these scores (demo-scores.tsv). Try next:")
        for command in next_commands(root, speakers):
            echo(f"  {command}")
    return rate


def write_trials_and_scores(root: Path, trials, labels) -> None:
    """``trials`` (every test file against every speaker, labelled) and the demo's raw scores beside it."""
    lines, rows = [], []
    for t, label in zip(trials, labels):
        test = Path(t.test).relative_to(root).as_posix()
        lines.append(f"{t.speaker} {test} {'target' if label else 'nontarget'}")
        rows.append((t.speaker, test, t.score, label))
    write_atomic(root / "trials", ("\n".join(lines) + "\n").encode())
    write_atomic(root / "demo-scores.tsv", score_file_bytes(False, "none", rows))


def next_commands(root: Path, speakers) -> list[str]:
    """Three commands to type next on the demo's folder (each works as printed; tested)."""
    ubm, models = root / "ubm.npz", root / "models"
    first, second = speakers[0], speakers[1]
    claims = [root / "test" / first / f"{first}_0.wav", root / "test" / second / f"{second}_0.wav"]
    return [
        shlex.join(["spkver", "verify", "--ubm", str(ubm), "--models", str(models), "--speaker", first,
                    *map(str, claims)]),
        shlex.join(["spkver", "score", "--ubm", str(ubm), "--models", str(models), "--trials", str(root / "trials"),
                    "-o", str(root / "scores.tsv")]),
        shlex.join(["spkver", "evaluate", str(root / "scores.tsv")]),
    ]
