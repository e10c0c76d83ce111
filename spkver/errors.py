"""Errors a user can cause and fix (exit code 2), kept apart from bugs (exit 1)."""


class SpkverError(Exception):
    """A user mistake or bad input: reported as one line, exit code 2.

    Parameters
    ----------
    message : str
        What went wrong, in words the user can act on.
    path : str or os.PathLike, optional
        The file the problem is about; shown first when given.
    """

    def __init__(self, message, path=None):
        self.path = None if path is None else str(path)
        self.message = message
        super().__init__(f"{self.path}: {message}" if self.path else message)
