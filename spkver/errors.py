"""Errors a user can cause and fix (exit code 2), kept apart from bugs (exit 1), and safe text for output."""

import re

# Control characters (C0, DEL, C1) become visible escapes, so no name can add a line or a column.
_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F, *range(0x80, 0xA0)]}
_CONTROL.update({ord("\t"): "\\t", ord("\n"): "\\n", ord("\r"): "\\r"})
_SURROGATE = re.compile("[\ud800-\udfff]")


def printable(text) -> str:
    """``text`` safe for one field of one line: control characters escaped (``\\t``, ``\\n``,
    ``\\x1b``), and the bytes of file names that are not UTF-8 shown as ``\\xNN``."""
    out = str(text).translate(_CONTROL)
    if _SURROGATE.search(out):
        out = _SURROGATE.sub(lambda m: f"\\x{ord(m.group()) - 0xDC00:02x}" if 0xDC80 <= ord(m.group()) <= 0xDCFF
                             else f"\\u{ord(m.group()):04x}", out)
    return out


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
        text = printable(message)
        super().__init__(f"{printable(self.path)}: {text}" if self.path else text)
