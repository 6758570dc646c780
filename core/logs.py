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
from pathlib import Path

from core.config import audit_path

ROOT = "core"  # every module's logger is named for its module (logging.getLogger(__name__)), under this one
FILE_NAME = "kaztoken-helpdesk.log"
MAX_BYTES = 1024 * 1024
BACKUPS = 3  # 4 MiB at most, the oldest dropped first

logging.getLogger(ROOT).addHandler(logging.NullHandler())


def logger(name: str) -> logging.Logger:
    return logging.getLogger(name)


def log_path() -> Path:
    """Beside the audit trail: the user log dir, or the directory a test or a shared setup names for it."""
    return audit_path().parent / FILE_NAME


OURS = ("core", "tui")  # the loggers whose records go to the file: the domain library's and the front ends'


def _file_handler(path: Path) -> logging.Handler:
    """The rotating file itself. logging.handlers is imported here, at the first line logged, not by every
    command (a scan sets the log up and, unless something unexpected happens, never writes to it)."""
    from logging.handlers import RotatingFileHandler

    class Handler(RotatingFileHandler):
        def _open(self) -> TextIOWrapper:
            Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
            return super()._open()

        def handleError(self, record: logging.LogRecord) -> None:
            """A log that cannot be written is not the operator's problem: the audit trail is the record that
            matters, and it says so itself. Nothing is printed over the console."""

    return Handler(path, maxBytes=MAX_BYTES, backupCount=BACKUPS, encoding="utf-8", delay=True)


class _LogFile(logging.Handler):
    """The program's log file, opened at the first line logged: a command that logs nothing leaves no file and
    pays nothing for it."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path.absolute()
        self._file: logging.Handler | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self._file is None:
            self._file = _file_handler(self.path)
            self._file.setFormatter(self.formatter)
        self._file.handle(record)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        super().close()

    def handleError(self, record: logging.LogRecord) -> None:
        """As the file's own: never printed over the console."""


def _ours() -> list[tuple[logging.Logger, _LogFile]]:
    loggers = [logging.getLogger(name) for name in OURS]
    return [(each, handler) for each in loggers for handler in each.handlers if isinstance(handler, _LogFile)]


def setup(level: int = logging.INFO) -> Path:
    """Log to the rotating file from now on (the core and tui loggers); returns its path. A file that cannot be
    opened or written loses the lines, silently: the program runs on (the audit trail is the record that must be
    written, and it says so itself)."""
    path = log_path()
    if any(handler.path == path.absolute() for _, handler in _ours()):
        return path
    stop()
    handler = _LogFile(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    for name in OURS:
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).setLevel(level)
    return path


def stop() -> None:
    """Close the file (a test that set it up ends with this)."""
    for each, handler in _ours():
        each.removeHandler(handler)
        handler.close()


def where(error: BaseException) -> str:
    """An exception's type and traceback without its message: a message may quote an argument (a PIN), the
    frames name only the code's own files, lines and source text."""
    frames = "".join(traceback.format_list(traceback.extract_tb(error.__traceback__)))
    return f"{type(error).__module__}.{type(error).__qualname__}\n{frames}".rstrip()
