"""train-ubm never loses work: interrupted runs say how to continue, checkpoints are never silently replaced."""

import shlex
import signal
import subprocess
import sys
import time

import pytest
from helpers import run_cli

import spkver.storage.models as models
from spkver.storage.models import load_model, save_checkpoint


def background(corpus, n=10):
    return sorted((corpus / "background").rglob("*.wav"))[:n]


def common(corpus, output):
    return ["train-ubm", "-o", output, "--components", 4, "--workers", 1, "--no-cache", "--tol", 0,
            "--iterations", 6, *background(corpus)]


def interrupt_after(step, exception=KeyboardInterrupt):
    """A save_checkpoint that stops the run right after writing iteration ``step``."""

    def save(path, state, identity, **systems_trained):
        save_checkpoint(path, state, identity, **systems_trained)
        if state.step == step:
            raise exception

    return save


def one_line(result):
    lines = result.stderr.strip().splitlines()
    assert len(lines) >= 1 and "Traceback" not in result.stderr, result.stderr
    return lines[-1]


def test_ctrl_c_prints_the_checkpoint_and_a_resume_command_that_works(synthetic_corpus, tmp_path, monkeypatch):
    reference = tmp_path / "reference.npz"
    assert run_cli(*common(synthetic_corpus, reference)).exit_code == 0
    output = tmp_path / "u.npz"
    monkeypatch.setattr(models, "save_checkpoint", interrupt_after(3))
    result = run_cli(*common(synthetic_corpus, output))
    monkeypatch.undo()
    assert result.exit_code == 130
    line = one_line(result)
    checkpoint = tmp_path / "u.npz.checkpoint.npz"
    assert "interrupted after EM iteration 3" in line and str(checkpoint) in line and checkpoint.exists()
    command = shlex.split(line.split("To continue: ", 1)[1])
    assert command[0] == "spkver" and "--resume" in command
    resumed = run_cli(*command[1:])
    assert resumed.exit_code == 0, resumed.stderr
    assert "resuming after EM iteration 3" in resumed.stderr
    assert output.read_bytes() == reference.read_bytes() and not checkpoint.exists()


def test_an_interrupt_before_the_first_iteration_says_there_is_nothing_to_resume(synthetic_corpus, tmp_path,
                                                                                  monkeypatch):
    import spkver.api as api

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "_training_frames", interrupted)
    result = run_cli(*common(synthetic_corpus, tmp_path / "u.npz"))
    assert result.exit_code == 130
    assert "nothing to resume" in one_line(result) and "same command again" in one_line(result)


def test_a_checkpoint_is_never_silently_replaced(synthetic_corpus, tmp_path, monkeypatch):
    output = tmp_path / "u.npz"
    checkpoint = tmp_path / "u.npz.checkpoint.npz"
    monkeypatch.setattr(models, "save_checkpoint", interrupt_after(2))
    assert run_cli(*common(synthetic_corpus, output)).exit_code == 130
    monkeypatch.undo()
    kept = checkpoint.read_bytes()
    # Without --resume: refused, before any work, saying how to resume or start over.
    result = run_cli(*common(synthetic_corpus, output))
    assert result.exit_code == 2 and checkpoint.read_bytes() == kept
    line = one_line(result)
    assert line.startswith(f"spkver: error: {checkpoint}:") and "--resume" in line and "--force" in line
    # --resume with other options: refused, naming each option that differs.
    changed = [str(a) for a in common(synthetic_corpus, output)]
    changed[changed.index("--components") + 1] = "8"
    result = run_cli(*changed, "--seed", 1, "--resume")
    assert result.exit_code == 2 and checkpoint.read_bytes() == kept
    line = one_line(result)
    assert "components 4 (now 8)" in line and "seed 0 (now 1)" in line and "--force" in line
    # --force starts over, and the finished run removes its checkpoint.
    result = run_cli(*common(synthetic_corpus, output), "--force")
    assert result.exit_code == 0, result.stderr
    assert load_model(output).meta["training"]["iterations"] == 6 and not checkpoint.exists()


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="signals as on Linux")
def test_sigterm_during_em_stops_like_ctrl_c(synthetic_corpus, tmp_path):
    output = tmp_path / "u.npz"
    checkpoint = tmp_path / "u.npz.checkpoint.npz"
    args = [str(a) for a in common(synthetic_corpus, output)]
    args[args.index("--iterations") + 1] = "100000"
    args[args.index("--components") + 1] = "16"
    process = subprocess.Popen([sys.executable, "-m", "spkver", *args], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert checkpoint.exists(), "no checkpoint was written"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143
    last = stderr.strip().splitlines()[-1]
    assert "interrupted after EM iteration" in last and "--resume" in last and "Traceback" not in stderr


def test_a_scheduler_without_a_shared_store_is_refused_before_any_work(synthetic_corpus, tmp_path):
    result = run_cli(*common(synthetic_corpus, tmp_path / "u.npz"), "--scheduler", "tcp://127.0.0.1:9")
    assert result.exit_code == 2 and "--scheduler" in one_line(result) and "--no-cache" in one_line(result)


def test_training_from_a_feature_store_refuses_feature_options_it_does_not_match(synthetic_corpus, tmp_path):
    files = background(synthetic_corpus, 6)
    assert run_cli("-q", "extract", "-o", tmp_path / "feats", "--workers", 1, *files).exit_code == 0
    train = ["train-ubm", "-o", tmp_path / "u.npz", "--components", 4, "--iterations", 2, "--workers", 1,
             "--features", tmp_path / "feats"]
    result = run_cli(*train, "--n-mels", 64, "--pitch", "--cache-dir", tmp_path / "c")
    assert result.exit_code == 0, result.stderr
    assert "--cache-dir has no effect with --features" in result.stderr
    assert "--n-mels" not in result.stderr and "--pitch" not in result.stderr  # they agree with the store
    # A feature option the store's features do not have is refused, as extract refuses it, before training.
    for option, named in [(["--n-mels", 40], "--n-mels 40 where the store has --n-mels 64"),
                          (["--no-pitch"], "--no-pitch where the store has --pitch")]:
        result = run_cli(*train, "--force", *option)
        assert result.exit_code == 2 and named in one_line(result) and "train on it" in one_line(result)
    assert not (tmp_path / "u.npz.checkpoint.npz").exists()
