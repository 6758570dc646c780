"""Reading a file the user named that must be small: the settings, a CA's certificate.

Such a path can name anything: /dev/zero never ends, a FIFO blocks the reader until a writer comes, a directory
cannot be read, a 50 MB file costs seconds. Only a regular file of at most `limit` bytes is read, opened without
blocking (a FIFO then returns at once and is refused).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from core.i18n import _


class UnfitFile(ValueError):
    """Not a regular file, or larger than allowed. The message says which, in the language of the moment."""


def read_small_file(path: Path, limit: int) -> bytes:
    """The file's bytes; UnfitFile if it is not a regular file or holds more than `limit` bytes; OSError (as
    FileNotFoundError) if it cannot be opened."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnfitFile(_("not a regular file"))
        if info.st_size > limit:
            raise UnfitFile(_too_large(limit))
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(limit + 1)  # + 1: a file that grew since fstat is caught too
    finally:
        os.close(fd)
    if len(data) > limit:
        raise UnfitFile(_too_large(limit))
    return data


def _too_large(limit: int) -> str:
    return _("larger than {size} KiB").format(size=limit // 1024)
