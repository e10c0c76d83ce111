"""`spkver demo` leads somewhere: its folder is kept, and the commands it prints next work as printed."""

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import run_cli


def console_script() -> str:
    """The installed `spkver` entry point (beside this Python, or on PATH)."""
    beside = Path(sys.executable).parent / "spkver"
    found = str(beside) if beside.exists() else shutil.which("spkver")
    if found is None:
        pytest.fail("the spkver console script is not installed (pip install -e .)")
    return found


def test_the_next_commands_the_demo_prints_work_as_printed(tmp_path):
    spkver = console_script()
    workdir = tmp_path / "my demo"  # a space: the printed commands must quote it
    demo = subprocess.run([spkver, "demo", "--workdir", str(workdir)], capture_output=True, text=True)
    assert demo.returncode == 0, demo.stderr
    printed = demo.stdout.split("Try next:", 1)[1].strip().splitlines()
    commands = [shlex.split(line) for line in printed]
    assert len(commands) == 3 and all(c[0] == "spkver" for c in commands)
    for name in ("ubm.npz", "models/spk00.npz", "trials", "demo-scores.tsv"):
        assert (workdir / name).exists(), name
    outputs = []
    for command in commands:
        result = subprocess.run([spkver, *command[1:]], capture_output=True, text=True)
        assert result.returncode == 0, (command, result.stderr)
        outputs.append(result.stdout)
    verify, _, evaluate = outputs
    decisions = [line.split("\t")[-1] for line in verify.strip().splitlines()]
    assert decisions[0] == "accept" and len(decisions) == 2  # the speaker's own test file is accepted
    assert (workdir / "scores.tsv").exists() and "EER" in evaluate
    # The demo's own scores evaluate too, and agree with the EER it printed.
    from spkver.backend.metrics import eer
    from spkver.storage.trials import labelled_scores, read_scores

    targets, nontargets, *_ = labelled_scores(read_scores(workdir / "demo-scores.tsv").scores)
    printed_eer = float(demo.stdout.split("EER ")[1].split("%")[0])
    assert 100 * eer(targets, nontargets) == pytest.approx(printed_eer, abs=0.05)


def test_without_a_workdir_nothing_points_into_the_removed_folder():
    result = run_cli("-q", "demo")
    assert result.exit_code == 0, result.stderr
    assert "spkver-demo-" not in result.stdout and "Try next" not in result.stdout
    assert "spkver demo --workdir" in result.stdout
