#!/usr/bin/env python3
"""Start-up: how long `spkver --version`, `spkver --help` and a one-file `spkver verify` take, end to end.

    python scripts/bench_startup.py [--repeats 7] [--workdir DIR]

Each command runs in a fresh process, as a user types it (the installed
console script); the table shows the median and the fastest of ``--repeats``
runs and the target of issue 14 (0.25 s for --version and --help; 0.6 s to
verify one 3 s recording against a 256-component UBM and one speaker model).
The UBM and the model are trained once on synthetic voices (not timed).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

TARGETS = {"--version": 0.25, "--help": 0.25, "verify": 0.6}


def console_script() -> str:
    beside = Path(sys.executable).parent / "spkver"
    return str(beside) if beside.exists() else (shutil.which("spkver") or sys.exit("spkver is not installed"))


def prepare(workdir: Path, spkver: str) -> list[str]:
    """A 256-component UBM, one enrolled speaker and a 3 s test file; the verify command line."""
    from spkver.synth import WORDS, Voice, utterance

    rng = np.random.default_rng(0)
    voices = [Voice.random(rng) for _ in range(21)]
    for i, voice in enumerate(voices[:20]):  # about 120 s of speech per voice: enough for 256 components
        folder = workdir / "background" / f"bg{i:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(12):
            sf.write(folder / f"{j}.wav", utterance(voice, 12, 16000, rng, WORDS), 16000)
    enroll = workdir / "enroll"
    enroll.mkdir(exist_ok=True)
    for j in range(4):
        sf.write(enroll / f"{j}.wav", utterance(voices[20], 8, 16000, rng, WORDS), 16000)
    test = workdir / "test.wav"
    y = utterance(voices[20], 6, 16000, rng, WORDS)
    sf.write(test, np.resize(y, 3 * 16000), 16000)
    ubm, models = workdir / "ubm.npz", workdir / "models"
    subprocess.run([spkver, "-q", "train-ubm", "-o", str(ubm), "--components", "256", "--iterations", "5",
                    "--no-cache", "--allow-fewer-components", str(workdir / "background")], check=True)
    subprocess.run([spkver, "-q", "enroll", "--ubm", str(ubm), "--models", str(models), "--speaker", "alice",
                    str(enroll)], check=True)
    return ["verify", "--ubm", str(ubm), "--models", str(models), "--speaker", "alice", str(test)]


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    spkver = console_script()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="spkver-startup-"))
    workdir.mkdir(parents=True, exist_ok=True)
    verify = prepare(workdir, spkver)
    from spkver.storage.models import load_model

    components = load_model(workdir / "ubm.npz").gmm.n_components
    commands = {"--version": ["--version"], "--help": ["--help"], "verify": verify}
    print(f"spkver start-up, {args.repeats} fresh processes each (UBM: {components} components; test: 3 s)")
    print("| command | median s | fastest s | target s |")
    print("|---|---|---|---|")
    for name, extra in commands.items():
        timed([spkver, *extra])  # warm the file cache
        times = [timed([spkver, *extra]) for _ in range(args.repeats)]
        print(f"| spkver {name} | {np.median(times):.3f} | {min(times):.3f} | {TARGETS[name]} |", flush=True)


if __name__ == "__main__":
    main()
