"""How an unexpected error is said: one line, never a traceback, nothing of what it worked on (a PIN, maybe).

Light (no Textual): the command line uses it as well as the console."""

from __future__ import annotations

from core.untrusted import visible


def unexpected_detail(error: BaseException) -> str:
    """An unexpected error's own text, for its one line; none for a text codec's, which names a character of what
    it worked on (a PIN, maybe) and its position."""
    return "" if isinstance(error, UnicodeError) else str(error)


def error_line(error: BaseException) -> str:
    """`Kind: detail`, the one line an unexpected error is shown as (cleaned of control characters)."""
    detail = unexpected_detail(error)
    return visible(f"{type(error).__name__}: {detail}" if detail else type(error).__name__)
