"""How an unexpected error is said: one line, never a traceback, nothing of what it worked on (a PIN, maybe).

Light (no Textual): the command line uses it as well as the console."""

from __future__ import annotations

import logging
import traceback

from core.untrusted import visible

log = logging.getLogger(__name__)


def unexpected_detail(error: BaseException) -> str:
    """An unexpected error's own text, for its one line; none for a text codec's, which names a character of what
    it worked on (a PIN, maybe) and its position."""
    return "" if isinstance(error, UnicodeError) else str(error)


def error_line(error: BaseException) -> str:
    """`Kind: detail`, the one line an unexpected error is shown as (cleaned of control characters)."""
    detail = unexpected_detail(error)
    return visible(f"{type(error).__name__}: {detail}" if detail else type(error).__name__)


def log_unexpected(error: BaseException, where: str) -> None:
    """Put an unexpected error on record for whoever fixes it: its kind and the stack's frames (file, line,
    function, source line). Not its text, nor any value: either may quote what it worked on, a PIN among them. The
    log's handler (a rotating file under the user log directory) is set up by core."""
    frames = "".join(traceback.format_tb(error.__traceback__)).rstrip()
    log.error("unexpected %s in %s\n%s", type(error).__name__, where, frames)
