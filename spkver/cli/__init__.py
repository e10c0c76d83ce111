"""The ``spkver`` command line: one module per command group on shared options (:mod:`.options`),
assembled in :mod:`.main`. Commands import the library, never each other."""

from spkver.cli.main import cli, main

__all__ = ["cli", "main"]
