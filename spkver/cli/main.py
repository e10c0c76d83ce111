"""The ``spkver`` command line: parse, call the library, print.

Results go to stdout; logs and progress to stderr. Exit codes: 0 success,
2 bad usage or bad input (one line naming the file and the problem), 1 any
other failure.
"""

from __future__ import annotations

import os
import sys
import traceback
import warnings

import click

from spkver import __version__
from spkver.cli.report import Reporter, stop_with
from spkver.errors import SpkverError, printable
from spkver.fileio import os_problem

# Every command: the module that defines it, its function, and its line in `spkver --help`. A command's
# module is imported only when that command runs (or shows its own help), so that `spkver --help` and
# `--version` load nothing but click, and each command loads only what it uses.
COMMANDS = {
    "train-ubm": ("train", "train_ubm_command", "Train a universal background model (UBM) on audio."),
    "extract": ("train", "extract_command", "Extract features into a feature store to train from."),
    "train-ivector": ("train", "train_ivector_command", "Train an i-vector back-end (T matrix, PLDA) on a UBM."),
    "enroll": ("speakers", "enroll_command", "Enroll a speaker: MAP-adapt the UBM to their audio."),
    "verify": ("speakers", "verify_command", "Is this audio spoken by the claimed speaker?"),
    "identify": ("speakers", "identify_command", "Which enrolled speaker is it? Ranks the speakers."),
    "score": ("evaluation", "score_command", "Score a trial list (S-norm by default) into a score file."),
    "evaluate": ("evaluation", "evaluate_command", "EER, minDCF, Cllr of score files; DET curves."),
    "calibrate": ("evaluation", "calibrate_command", "Fit a score-to-LLR calibration on a development set."),
    "fuse": ("evaluation", "fuse_command", "Fuse several systems' scores: a learnt, calibrated LLR, or their mean."),
    "info": ("info", "info_command", "Describe a model file."),
    "demo": ("info", "demo_command", "The whole recipe on synthetic voices, in seconds."),
    "cache": ("cache", "cache_group", "Show or empty the caches spkver keeps."),
    "help": ("main", "help_command", "Show the help of a command: spkver help COMMAND."),
}
# Options of the whole program that may also follow the command (`spkver verify -q ...`), as Kaldi's
# and git's users type them.
GLOBAL_FLAGS = {"-q", "--quiet", "-v", "--verbose"}


def hoist_global_flags(args: list[str]) -> list[str]:
    """``args`` with -q/-v (and their long forms) moved before the command, up to a ``--``."""
    end = args.index("--") if "--" in args else len(args)
    flags = [a for a in args[:end] if a in GLOBAL_FLAGS]
    return flags + [a for a in args[:end] if a not in GLOBAL_FLAGS] + args[end:]


class SpkverGroup(click.Group):
    """Turns user errors into one line and exit code 2, and bugs into exit code 1; loads commands lazily."""

    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        import importlib

        module, attribute, _ = COMMANDS[name]
        return getattr(importlib.import_module(f"spkver.cli.{module}"), attribute)

    def format_commands(self, ctx, formatter):
        """The command list from :data:`COMMANDS` alone: listing them imports none of their modules."""
        with formatter.section("Commands"):
            formatter.write_dl([(name, summary) for name, (_, _, summary) in COMMANDS.items()])

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        # Kept so that a command can print the line that continues it (train-ubm after Ctrl-C).
        self.invoked_args = list(sys.argv[1:] if args is None else args)
        args = hoist_global_flags(self.invoked_args)
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as exc:  # usage errors: one line, like every other error
            click.echo(f"spkver: error: {exc.format_message()} (spkver -h for help)", err=True)
            code = exc.exit_code
        except click.exceptions.Abort:
            click.echo("spkver: interrupted", err=True)
            code = 130
        except OSError:  # the error line itself could not be written (stderr on a full disk): still exit 2
            code = 2
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except SpkverError as exc:
            stop_with(ctx, 2, f"spkver: error: {exc}")
        except KeyboardInterrupt:
            stop_with(ctx, 130, "spkver: interrupted")
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except BrokenPipeError:  # `spkver ... | head`: the reader has all it wants; end as a killed writer does
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
            ctx.exit(128 + 13)  # SIGPIPE's status, what the shell reports for a writer whose pipe closed
        except OSError as exc:  # the system's fault (disk full, read-only, permissions) reached us unwrapped
            where = printable(exc.filename) + ": " if exc.filename else ""
            stop_with(ctx, 2, f"spkver: error: {where}{os_problem(exc)}")
        except MemoryError:
            stop_with(ctx, 2, "spkver: error: out of memory (fewer --workers, or smaller inputs)")
        except Exception as exc:  # noqa: BLE001 - last resort, shown without traceback
            if os.environ.get("SPKVER_DEBUG"):
                traceback.print_exc()
            click.echo(f"spkver: internal error: {type(exc).__name__}: {exc} "
                       "(set SPKVER_DEBUG=1 for a traceback)", err=True)
            ctx.exit(1)


@click.group(cls=SpkverGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="spkver")
@click.option("-q", "--quiet", is_flag=True, help="No logs or progress on stderr (also after the command).")
@click.option("-v", "--verbose", is_flag=True,
              help="Details on stderr: one line per file read (speech frames kept); also after the command.")
@click.pass_context
def cli(ctx, quiet, verbose):
    """GMM-UBM speaker verification: train-ubm, enroll, verify.

    \b
    Example:
      spkver train-ubm -o ubm.npz background/
      spkver enroll --ubm ubm.npz --models models/ --speaker alice alice/
      spkver verify --ubm ubm.npz --models models/ --speaker alice test.wav
    """
    ctx.obj = Reporter(quiet, verbose and not quiet)
    # Python's own warnings (NumPy's RuntimeWarnings, say) become one line like ours, and -q silences them.
    warnings.showwarning = lambda message, *args, **kwargs: None if quiet else ctx.obj.warn(str(message))


def main():
    cli(prog_name="spkver")


@click.command("help")
@click.argument("names", nargs=-1, metavar="[COMMAND [SUBCOMMAND]]")
@click.pass_context
def help_command(ctx, names):
    """Show the help of a command (spkver help verify), or of spkver.

    \b
    Example:
      spkver help verify
    """
    group_ctx = ctx.parent
    command, command_ctx = group_ctx.command, group_ctx
    for name in names:
        sub = command.get_command(command_ctx, name) if isinstance(command, click.Group) else None
        if sub is None:
            raise click.UsageError(f"no such command: {' '.join(names)}")
        command, command_ctx = sub, click.Context(sub, info_name=name, parent=command_ctx)
    click.echo(command.get_help(command_ctx))

