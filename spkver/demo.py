"""``spkver demo``: the whole pipeline on synthetic voices, no data needed."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from spkver.api import enroll, train_ubm, verify
from spkver.audio.sources import find_audio
from spkver.backend.metrics import eer
from spkver.errors import SpkverError
from spkver.fileio import os_problem
from spkver.run import RunOptions
from spkver.storage.models import load_model, save_model
from spkver.storage.speakers import SpeakerStore
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
    """Run the demo in ``workdir`` (a temporary folder when None); return the EER."""
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="spkver-demo-") as tmp:
            return run_demo(Path(tmp), seed, echo, progress)
    root = Path(workdir)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise SpkverError("is a file; --workdir needs a folder", root) from None
    except OSError as exc:
        raise SpkverError(f"cannot create the demo folder ({os_problem(exc)})", root) from None
    start = time.perf_counter()
    bar = progress or (lambda label: None)
    echo(f"1. Synthesizing {N_BACKGROUND} background and {N_ENROLLED} target voices in {root} ...")
    speakers = write_corpus(root, seed)
    echo(f"2. spkver train-ubm -o {root}/ubm.npz {root}/background")
    ubm = train_ubm(find_audio([root / "background"]), seed=seed, run=RunOptions(progress=bar("features")))
    save_model(root / "ubm.npz", ubm)
    ubm = load_model(root / "ubm.npz", kind="ubm")
    summary = ubm.meta["training"]
    echo(f"   {summary['frames']} speech frames, {summary['components']} components, {summary['iterations']} EM "
         f"iterations, average log-likelihood {summary['average_log_likelihood']:.2f}")
    store = SpeakerStore(root / "models")
    store.root.mkdir(exist_ok=True)
    for name in speakers:
        echo(f"3. spkver enroll --ubm {root}/ubm.npz --models {store.root} --speaker {name} "
             f"{root}/enroll/{name}")
        save_model(store.path(name), enroll(ubm, find_audio([root / "enroll" / name]), name))
    models = [store.load(name, ubm) for name in speakers]
    echo(f"4. spkver verify --ubm {root}/ubm.npz --models {store.root} --speaker spk00 ... {root}/test")
    trials = verify(ubm, models, find_audio([root / "test"]), run=RunOptions(progress=bar("verify")))
    targets = [t.score for t in trials if Path(t.test).parent.name == t.speaker]
    nontargets = [t.score for t in trials if Path(t.test).parent.name != t.speaker]
    for t in trials[: len(speakers)]:
        echo(f"   {t.speaker}\t{Path(t.test).name}\t{t.score:+.3f}\t{'accept' if t.accepted else 'reject'}")
    rate = eer(targets, nontargets)
    accepted_targets = np.mean([s >= 0 for s in targets])
    rejected_impostors = np.mean([s < 0 for s in nontargets])
    echo(f"5. {len(targets)} genuine and {len(nontargets)} impostor trials: EER {100 * rate:.1f}%; at "
         f"threshold 0, {100 * accepted_targets:.0f}% genuine accepted, {100 * rejected_impostors:.0f}% "
         f"impostors rejected ({time.perf_counter() - start:.1f} s)")
    return rate
