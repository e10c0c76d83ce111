"""How a command talks to its user: logs, warnings and progress on stderr, interruptions, the exit line.

Kept apart from the option definitions so that ``spkver --help`` and
``--version`` load nothing but click.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time

import click

from spkver.errors import printable
from spkver.run import RunOptions

# Off a terminal, progress is a log line at most this often (and one at the end).
PROGRESS_LOG_SECONDS = 60.0


def _say(line: str) -> None:
    """One line on stderr; a stderr that cannot take it (closed, a full disk) never fails the command."""
    try:
        click.echo(line, err=True)
    except OSError:
        pass


class Reporter:
    """Where logs and progress go: stderr, unless ``--quiet``."""

    def __init__(self, quiet=False, verbose=False):
        self.quiet = quiet
        self.verbose = verbose and not quiet

    def detail(self, message):
        """A per-file line, shown with --verbose only."""
        if self.verbose:
            _say(printable(message))

    def log(self, message):
        if not self.quiet:
            _say(printable(message))

    def warn(self, message):
        _say(f"spkver: warning: {printable(message)}")

    def run_options(self, workers=None, skip_bad=False, label="features") -> RunOptions:
        """The :class:`RunOptions` of a command: bad files and warnings reported here, a progress bar."""
        return RunOptions(workers, skip_bad, on_skip=self.warn, progress=self.progress(label), on_note=self.warn,
                          on_detail=self.detail if self.verbose else None)

    def progress(self, label):
        """A ``progress(iterator, length)`` wrapper drawing a bar over files.

        On a terminal, a bar. Otherwise (a log file, a pipe, a batch job),
        where click would print only the bare label, a line such as
        ``features: 120 of 300 done (61.0 s)`` at most once a minute and one
        when the work is done; nothing when there was nothing to do.
        """

        def wrap(results, length):
            if self.quiet or self.verbose:  # --verbose prints a line per file instead of a bar
                yield from results
                return
            if sys.stderr is None or not sys.stderr.isatty():  # None: stderr closed (2>&-)
                start = last = time.perf_counter()
                done = 0
                for result in results:
                    done += 1
                    yield result
                    if time.perf_counter() - last >= PROGRESS_LOG_SECONDS and done < length:
                        last = time.perf_counter()
                        self.log(f"{label}: {done} of {length} done ({last - start:.1f} s)")
                if length:
                    self.log(f"{label}: {done} of {length} done ({time.perf_counter() - start:.1f} s)")
                return
            with click.progressbar(results, length=length, label=label, file=sys.stderr,
                                   show_pos=True) as bar:
                yield from bar

        return wrap

    def iteration(self, what: str = "EM iteration", measure: str = "average log-likelihood"):
        """A training callback logging each iteration's ``measure``, its gain and its time."""
        start = time.perf_counter()
        last = [start]

        def report(step, average, gain):
            now = time.perf_counter()
            gain_text = "" if gain is None else f"  gain {gain:+.2e}"
            self.log(f"{what} {step:3d}: {measure} {average:.4f}{gain_text}  "
                     f"({now - last[0]:.2f} s)")
            last[0] = now

        return report


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C's KeyboardInterrupt would be, so both end a run the same way."""

    exit_code = 143


@contextlib.contextmanager
def terminate_as_interrupt():
    """A ``with`` block in which SIGTERM raises :class:`Terminated` (the main thread only)."""
    def raise_terminated(signum, frame):
        raise Terminated

    try:
        previous = signal.signal(signal.SIGTERM, raise_terminated)
    except ValueError:  # not the main thread: leave SIGTERM alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def command_line(ctx, *extra: str) -> str:
    """The command line that ran this command, plus ``extra`` options it lacks, quoted for a shell."""
    import shlex

    args = list(getattr(ctx.find_root().command, "invoked_args", None) or sys.argv[1:])
    args += [option for option in extra if option not in args]
    return shlex.join(["spkver", *args])


def stop_with(ctx, code: int, line: str):
    """End the command with one line on stderr and exit ``code``."""
    click.echo(printable(line), err=True)
    ctx.exit(code)

