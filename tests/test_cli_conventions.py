"""The CLI behaves like the tools speech engineers know: flags anywhere, quiet pipes, help for every command."""

import subprocess
import sys

import pytest
from helpers import make_store, run_cli

from spkver.cli.main import hoist_global_flags


@pytest.fixture(scope="module")
def store(synthetic_corpus, tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("conventions"), synthetic_corpus)


def recordings_of(corpus):
    return sorted((corpus / "test").rglob("*.wav"))


def test_global_flags_are_hoisted_before_the_command_up_to_a_double_dash():
    assert hoist_global_flags(["verify", "-q", "--speaker", "a", "x.wav"]) == ["-q", "verify", "--speaker", "a",
                                                                               "x.wav"]
    assert hoist_global_flags(["enroll", "--verbose", "a", "--", "-q"]) == ["--verbose", "enroll", "a", "--", "-q"]


def test_quiet_after_the_command_silences_logs(store, synthetic_corpus, tmp_path):
    alice = sorted((synthetic_corpus / "enroll" / "alice").glob("*.wav"))
    for where in ("before", "after"):
        args = ["enroll", "--ubm", store / "ubm.npz", "--models", tmp_path / where, "--speaker", "carol", *alice]
        result = run_cli("-q", *args) if where == "before" else run_cli(*args, "-q")
        assert result.exit_code == 0 and result.stderr == "", result.stderr


def test_verbose_prints_a_line_per_file(store, synthetic_corpus):
    tests = recordings_of(synthetic_corpus)[:3]
    result = run_cli("verify", "--ubm", store / "ubm.npz", "--models", store / "models", "--speaker", "alice",
                     *tests, "-v")
    assert result.exit_code == 0, result.stderr
    details = [line for line in result.stderr.splitlines() if "speech frames" in line]
    assert len(details) == 3 and all(str(t) in line for t, line in zip(tests, details))


def test_a_closed_pipe_ends_quietly(store, synthetic_corpus):
    """`spkver identify ... | head -1`: no error, no traceback, the status of a writer whose reader left."""
    command = [sys.executable, "-m", "spkver", "-q", "identify", "--ubm", str(store / "ubm.npz"), "--models",
               str(store / "models"), *map(str, recordings_of(synthetic_corpus) * 40)]
    shell = f"{subprocess.list2cmdline(command)} | head -1; echo \"status ${{PIPESTATUS[0]}}\" >&2"
    result = subprocess.run(["bash", "-c", shell], capture_output=True, text=True)
    assert len(result.stdout.splitlines()) == 1
    assert "error" not in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1] in ("status 141", "status 0")  # 0: all fitted in the pipe


@pytest.mark.parametrize("names", [[], ["verify"], ["cache", "clear"]])
def test_help_command_shows_each_commands_help(names):
    result = run_cli("help", *names)
    assert result.exit_code == 0
    expected = run_cli(*names, "--help").stdout
    assert result.stdout.strip() == expected.strip()


def test_help_of_an_unknown_command_is_a_usage_error():
    result = run_cli("help", "nope")
    assert result.exit_code == 2 and "no such command" in result.stderr


def test_repeated_lists_add_up(store, synthetic_corpus, tmp_path):
    files = recordings_of(synthetic_corpus)[:4]
    (tmp_path / "a.lst").write_text("\n".join(map(str, files[:2])) + "\n")
    (tmp_path / "b.lst").write_text("\n".join(map(str, files[2:])) + "\n")
    result = run_cli("-q", "verify", "--ubm", store / "ubm.npz", "--models", store / "models", "--speaker", "alice",
                     "--list", tmp_path / "a.lst", "--list", tmp_path / "b.lst")
    assert result.exit_code == 0, result.stderr
    assert [line.split("\t")[1] for line in result.stdout.splitlines()] == list(map(str, files))


def test_dash_output_is_standard_output(store, synthetic_corpus, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    alice, bob = (sorted((synthetic_corpus / "test" / name).glob("*.wav"))[0] for name in ("alice", "bob"))
    trials = tmp_path / "trials"
    trials.write_text(f"alice {alice} target\nalice {bob} nontarget\nbob {bob} target\nbob {alice} nontarget\n")
    scored = run_cli("-q", "score", "--ubm", store / "ubm.npz", "--models", store / "models", "--trials", trials,
                     "--score-norm", "none", "-o", "-")
    assert scored.exit_code == 0, scored.stderr
    lines = [line for line in scored.stdout.splitlines() if not line.startswith("#")]
    assert len(lines) == 4 and not (tmp_path / "-").exists()
    (tmp_path / "scores.tsv").write_text(scored.stdout)
    calibrated = run_cli("-q", "calibrate", tmp_path / "scores.tsv", "-o", "-")
    assert calibrated.exit_code == 0, calibrated.stderr
    assert '"scale"' in calibrated.stdout and not (tmp_path / "-").exists()


def test_an_option_without_effect_is_never_silent(store, synthetic_corpus, tmp_path):
    test = recordings_of(synthetic_corpus)[0]
    verify = run_cli("verify", "--ubm", store / "ubm.npz", "--models", store / "models", "--speaker", "alice",
                     "--p-target", "0.1", test)
    assert verify.exit_code == 0 and "--p-target has no effect without --calibration" in verify.stderr
    trials = tmp_path / "trials"
    trials.write_text(f"alice {test}\n")
    score = run_cli("score", "--ubm", store / "ubm.npz", "--models", store / "models", "--trials", trials,
                    "--score-norm", "none", "--top-n", 5, "-o", tmp_path / "s.tsv")
    assert score.exit_code == 0 and "--top-n has no effect with --score-norm none" in score.stderr


def every_command():
    import click

    from spkver.cli.main import COMMANDS, cli

    def walk(command, name):
        yield name, command
        if isinstance(command, click.Group):
            for sub in command.list_commands(None):
                yield from walk(command.get_command(None, sub), f"{name} {sub}")

    for name in COMMANDS:
        yield from walk(cli.get_command(None, name), name)


def test_every_option_has_a_help_line_and_every_command_an_example():
    import click

    for name, command in every_command():
        bare = [p.opts[0] for p in command.params if isinstance(p, click.Option) and not p.hidden and not p.help]
        assert not bare, f"{name}: options without help: {bare}"
        assert "Example:" in (command.help or ""), f"{name} has no example in its help"
        assert "None" not in run_cli(*name.split(), "--help").stdout, f"{name}: a placeholder leaks into its help"


def test_a_det_plot_in_an_unknown_format_is_a_clean_error(tmp_path):
    pytest.importorskip("matplotlib")
    scores = tmp_path / "s.tsv"
    scores.write_text("a x 1.0 target\na y -1.0 nontarget\nb y 0.5 target\nb x -0.2 nontarget\n")
    result = run_cli("evaluate", scores, "--det", tmp_path / "det.nope")
    assert result.exit_code == 2 and "format" in result.stderr and not (tmp_path / "det.nope").exists()
    drawn = run_cli("evaluate", scores, "--det", tmp_path / "det.png")
    assert drawn.exit_code == 0 and (tmp_path / "det.png").read_bytes()[:4] == b"\x89PNG"
