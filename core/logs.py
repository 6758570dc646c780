"""The program's own log: what an operation did and why it failed, for whoever looks after the helpdesk.

One rotating file beside the audit trail (`log_path`), written through the stdlib `logging` by the operation
frame (core.frame: start, end, outcome code, an unexpected error with its traceback) and the session layer
(core.session: each call and the CKR name it answered). Only fixed fields are logged (the action, the token's
id, CKR names, outcome codes), never an argument's value: so never a PIN nor anything derived from one.

Until `setup` is called (the CLI and the console do, at start), nothing is written anywhere: the library code
logs into a NullHandler, so a test or an embedding program sees no output of ours.
"""

from __future__ import annotations

import logging
import traceback
from io import TextIOWrapper
from logging.handlers import RotatingFileHandler
from pathlib import Path

from core import audit

ROOT = "core"  # every module's logger is named for its module (logging.getLogger(__name__)), under this one
FILE_NAME = "kaztoken-helpdesk.log"
MAX_BYTES = 1024 * 1024
BACKUPS = 3  # 4 MiB at most, the oldest dropped first

logging.getLogger(ROOT).addHandler(logging.NullHandler())


def logger(name: str) -> logging.Logger:
    return logging.getLogger(name)


def log_path() -> Path:
    """Beside the audit trail: the user log dir, or the directory a test or a shared setup names for it."""
    return audit.audit_path().parent / FILE_NAME


class _Handler(RotatingFileHandler):
    """Ours, so `setup` can find and replace it (a second call, with another log directory, in one process).
    The file and its directory are made at the first line logged: a command that logs nothing (a scan) leaves
    no trace."""

    def _open(self) -> TextIOWrapper:
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()

    def handleError(self, record: logging.LogRecord) -> None:
        """A log that cannot be written is not the operator's problem: the audit trail is the record that
        matters, and it says so itself. Nothing is printed over the console."""


def setup(level: int = logging.INFO) -> Path | None:
    """Log to the rotating file from now on; returns its path, or None when it cannot be opened (the program
    runs on without a log: the audit trail is the record that must be written, and it says so itself)."""
    root = logging.getLogger(ROOT)
    path = log_path()
    for handler in [handler for handler in root.handlers if isinstance(handler, _Handler)]:
        if Path(handler.baseFilename) == path.absolute():
            return path
        root.removeHandler(handler)
        handler.close()
    try:
        handler = _Handler(path, maxBytes=MAX_BYTES, backupCount=BACKUPS, encoding="utf-8", delay=True)
    except OSError:
        return None
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    return path


def stop() -> None:
    """Close the file (a test that set it up ends with this)."""
    root = logging.getLogger(ROOT)
    for handler in [handler for handler in root.handlers if isinstance(handler, _Handler)]:
        root.removeHandler(handler)
        handler.close()


def where(error: BaseException) -> str:
    """An exception's type and traceback without its message: a message may quote an argument (a PIN), the
    frames name only the code's own files, lines and source text."""
    frames = "".join(traceback.format_list(traceback.extract_tb(error.__traceback__)))
    return f"{type(error).__module__}.{type(error).__qualname__}\n{frames}".rstrip()
