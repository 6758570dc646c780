"""The console and its terminal: what a PKCS#11 library writes to standard error goes to a log file instead of
over the screen."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

import platformdirs


@contextlib.contextmanager
def libraries_output_to_log() -> Iterator[None]:
    """While the console owns the terminal, file descriptor 2 goes to a log file: a PKCS#11 library loaded for an
    action (tpm2-pkcs11's TCTI errors, a vendor's debug output) would otherwise paint over the screen. Textual
    draws on `sys.__stderr__`, so that becomes a new descriptor on the terminal, made before the App is."""
    path = platformdirs.user_log_path("kaztoken-helpdesk") / "libraries.log"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        log = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError:
        log = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    saved = os.dup(2)
    original = sys.__stderr__
    terminal = os.fdopen(os.dup(2), "w", encoding="utf-8", errors="replace")
    try:
        os.dup2(log, 2)
        sys.__stderr__ = terminal  # type: ignore[misc]
        yield
    finally:
        sys.__stderr__ = original  # type: ignore[misc]
        os.dup2(saved, 2)
        os.close(saved)
        os.close(log)
        with contextlib.suppress(OSError):
            terminal.close()
