"""The `kaztoken-helpdesk` command as installed ([project.scripts] in pyproject.toml) and as `python -m tui.cli`
runs it: the start and the end of the process, made cheap for `scan`, which monitoring runs every minute on every
terminal (benchmarks/scan_64_tokens.py measures both against a bare python-pkcs11 loop).

- The cyclic garbage collector is off while the command starts: importing the tool makes tens of thousands of
  objects that all live until the end, and the collector walked them again and again (a tenth of a `scan`).
  `tui.cli.main` calls `runs_on` for every command but `scan`: the collector is on again for the console and the
  actions, with those objects frozen out of its way.
- `scan` leaves without the interpreter's teardown of every module it imported (5 % of a `scan`), once it has done
  what that teardown would have done for it: its library hosts are stopped (core.scan.scan), the log is closed,
  the output flushed.
"""

import contextlib
import gc
import os
import sys

_runs_on = False  # set by `runs_on`: the command is not over as soon as it has printed


def run() -> int:
    gc.disable()
    from tui.cli import main  # after: its imports are most of the objects

    status = main()
    if not _runs_on:
        _leave(status)
    return status


def runs_on() -> None:
    """For a command that runs on (the console, an action): the collector on again, what exists now frozen (never
    to be walked again), and the interpreter's usual end."""
    global _runs_on
    _runs_on = True
    if not gc.isenabled():  # a caller of main() other than `run` (a test) never had it off
        gc.freeze()
        gc.enable()


def _leave(status: int) -> None:
    import logging

    logging.shutdown()  # the program's log, if anything was written to it (core.logs)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a reader that left (`scan | head`), a closed stream
            stream.flush()
    os._exit(status)
