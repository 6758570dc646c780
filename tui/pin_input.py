"""Reading PINs for the command line: hidden at the terminal, or one per line from standard input.

Never from the command line or the environment: `ps`, /proc/PID/environ and shell history show both. With
`--pin-stdin` a script pipes the PINs in, one per line, in the order the prompts would ask for them. No value
read here ever goes into a message or an exception.

Both are read as bytes and decoded as UTF-8 strictly: bytes that are not UTF-8 refuse the whole input (a usage
error, nothing tried), with a message that says nothing about them. A text layer would either raise
UnicodeDecodeError, whose text names a byte of the PIN and its position, or put U+FFFD in place of them.
"""

from __future__ import annotations

import contextlib
import os
import sys
import termios
from collections.abc import Sequence
from typing import BinaryIO, TextIO

from core.i18n import _

TTY = "/dev/tty"
# A PIN line longer than this is cut here and the rest of the line skipped: still far over every token's
# maximum, so the policy check or the token rejects it, and a runaway pipe cannot fill the memory.
MAX_LINE = 64 * 1024


class PinInputError(Exception):
    """The PINs could not be read (a usage error). The message never holds anything that was read."""


def has_terminal() -> bool:
    """Whether this process has a controlling terminal to ask on (none under cron, systemd or setsid)."""
    try:
        fd = os.open(TTY, os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return False
    os.close(fd)
    return True


def _strip_newline(line: str) -> str:
    """Only the line ending goes: spaces can be part of a PIN, and the policy check judges them."""
    if line.endswith("\n"):
        line = line[:-1]
    if line.endswith("\r"):
        line = line[:-1]
    return line


def _decoded(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")  # strict: see the module docstring
    except UnicodeDecodeError:
        raise PinInputError(
            _("A PIN read is not valid UTF-8 text (is the terminal set to UTF-8?): nothing was tried.")
        ) from None


def _read_binary_line(stream: BinaryIO) -> str | None:
    raw = stream.readline(MAX_LINE)
    if not raw:
        return None
    if len(raw) == MAX_LINE and not raw.endswith(b"\n"):
        while (rest := stream.readline(MAX_LINE)) and not rest.endswith(b"\n"):
            pass  # skip the rest of an overlong line, so the next line is the next PIN
    return _strip_newline(_decoded(raw))


def _read_hidden(prompt: str) -> str:
    """One line typed at the terminal with the echo off, as getpass does, but read as bytes (see the docstring)."""
    fd = os.open(TTY, os.O_RDWR | os.O_NOCTTY)
    with open(fd, "r+b", buffering=0) as tty:
        old = termios.tcgetattr(fd)
        quiet = [*old]
        quiet[3] &= ~termios.ECHO
        termios.tcsetattr(fd, termios.TCSAFLUSH, quiet)  # before the prompt: what is typed after it is kept
        try:
            tty.write(prompt.encode("utf-8", errors="replace"))
            raw = tty.readline(MAX_LINE)
        finally:  # Ctrl+C included: the terminal is never left without its echo
            termios.tcsetattr(fd, termios.TCSAFLUSH, old)
            tty.write(b"\n")
    if not raw:
        raise PinInputError(_("Cancelled: no PIN was typed."))
    return _strip_newline(_decoded(raw))


def _read_text_line(stream: TextIO) -> str | None:
    line = stream.readline(MAX_LINE)
    if not line:
        return None
    if len(line) == MAX_LINE and not line.endswith("\n"):
        while (rest := stream.readline(MAX_LINE)) and not rest.endswith("\n"):
            pass
    return _strip_newline(line)


class PinReader:
    """Reads the PINs an action needs: `read(prompts)` gives one value per prompt, in order."""

    def __init__(self, *, from_stdin: bool) -> None:
        self.from_stdin = from_stdin
        self.values: list[str] = []  # what was read, so an unexpected error's text can be cleaned of it

    def read(self, prompts: Sequence[str]) -> list[str]:
        values = self._from_stdin(len(prompts)) if self.from_stdin else self._from_terminal(prompts)
        self.values.extend(values)
        return values

    def _from_stdin(self, count: int) -> list[str]:
        stream = sys.stdin
        if stream is None:
            raise PinInputError(_("--pin-stdin: there is no standard input."))
        buffer = getattr(stream, "buffer", None)
        values: list[str] = []
        for _index in range(count):
            line = _read_binary_line(buffer) if buffer is not None else _read_text_line(stream)
            if line is None:
                raise PinInputError(
                    _("Expected {expected} PIN lines on standard input, got {got}.").format(
                        expected=count, got=len(values)
                    )
                )
            values.append(line)
        return values

    def _from_terminal(self, prompts: Sequence[str]) -> list[str]:
        if not has_terminal():
            # Never fall back to standard input with the echo on, as getpass would: refuse instead.
            raise PinInputError(_("No terminal to type the PINs on: pipe them in, one per line, with --pin-stdin."))
        values = []
        for prompt in prompts:
            try:
                values.append(_read_hidden(prompt))
            except (OSError, termios.error):
                raise PinInputError(
                    _("No terminal to type the PINs on: pipe them in, one per line, with --pin-stdin.")
                ) from None
        return values

    def ask_visible(self, prompt: str) -> str:
        """A non-secret answer (the format confirmation), typed with echo on the terminal.

        Read from the terminal itself, not standard input, which may be the PIN lines of --pin-stdin.
        """
        if sys.stdin is not None and not self.from_stdin and sys.stdin.isatty():
            try:
                return input(prompt)
            except EOFError:
                raise PinInputError(_("Cancelled: nothing was typed.")) from None
        try:
            fd = os.open(TTY, os.O_RDWR | os.O_NOCTTY)
        except OSError:
            raise PinInputError(_("No terminal to ask for the confirmation on: give it with --confirm.")) from None
        with contextlib.closing(open(fd, "r+", encoding="utf-8", errors="replace", buffering=1)) as tty:
            tty.write(prompt)
            tty.flush()
            line = tty.readline()
        if not line:
            raise PinInputError(_("Cancelled: nothing was typed."))
        return _strip_newline(line)

    def redact(self, text: str) -> str:
        """`text` with every value read replaced, longest first (a PIN may contain a shorter one)."""
        for value in sorted({v for v in self.values if v}, key=len, reverse=True):
            text = text.replace(value, "***")
        return text
