"""Reading a PKCS#11 library where it cannot take the tool down: one child process per library and scan.

A library is foreign C code in our address space. One that hangs in C_Initialize, crashes in C_GetTokenInfo or
prints over the console would take the scan, or the console, with it. So every read of a library happens in
a child process with a deadline: the child loads the library through the ctypes layer, reads every slot and
sends the snapshots back; it tells the parent the name of each entry point before calling it, so a hang or a
crash is reported with the call it happened in. The child's stdout and stderr go to a file the parent keeps for
the details screen, never to the terminal. A fresh process per scan also means a fresh C_Initialize: tokens
created or pulled out since are seen without re-initialising anything in the console's own process.

Start method: `fork` is cheapest (nothing to import again) but only safe from a process that has one thread
and no PKCS#11 library loaded (a forked copy of an initialised library shares its sockets and locks with the
parent). Elsewhere (the console, which has threads and loads libraries for its actions) the forkserver is
used: a clean single-threaded process started once, which forks the children.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import multiprocessing.connection
import multiprocessing.forkserver
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from core import ckr
from core.cryptoki import Cryptoki, CryptokiError, LibraryInfo
from core.snapshot import TokenGone, TokenSnapshot, read_slot

DEFAULT_TIMEOUT = 30.0  # seconds a library may take for a whole scan before it is called hanging
STDERR_LIMIT = 16_384  # bytes of a library's own output kept for the details screen

# Set by core.modules when a library is loaded into this process: `fork` is no longer safe after that.
libraries_loaded_here = False


@dataclass(frozen=True, slots=True)
class LibraryFailure:
    """The library hung or died while being read."""

    kind: str  # "hang" or "crash"
    call: str  # the entry point it was in, e.g. "C_GetTokenInfo"
    detail: str  # the signal for a crash ("SIGSEGV"), the limit for a hang ("30 s")


@dataclass(frozen=True, slots=True)
class LibraryRead:
    """What one isolated read of a library gave."""

    path: str
    info: LibraryInfo | None = None
    vendor_extension: bool = False
    slots: tuple[TokenSnapshot, ...] = ()
    load_error: str | None = None  # not a PKCS#11 library (dlopen or C_GetFunctionList failed)
    init_error: int | None = None  # C_Initialize's CK_RV
    slot_list_error: str | None = None
    failure: LibraryFailure | None = None
    output: str = ""  # what the library printed (stdout and stderr), bounded
    elapsed: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def _child(
    connection: multiprocessing.connection.Connection,
    path: str,
    environ: Mapping[str, str],
    output_path: str,
    reserved: bytes | None,
    now: datetime,
) -> None:
    # The library's output goes to the file, never to the terminal of the console.
    sink = os.open(output_path, os.O_WRONLY | os.O_APPEND)
    os.dup2(sink, 1)
    os.dup2(sink, 2)
    os.close(sink)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is the parent's to handle: it ends us
    _die_with_parent()
    os.environ.clear()
    os.environ.update(environ)

    def on_call(name: str) -> None:
        connection.send(("call", name))

    try:
        raw = Cryptoki(path, on_call=on_call)
    except CryptokiError as error:
        connection.send(("done", LibraryRead(path, load_error=str(error))))
        return
    except (OSError, AttributeError) as error:
        connection.send(("done", LibraryRead(path, load_error=str(error) or type(error).__name__)))
        return
    try:
        raw.initialize(reserved)
    except CryptokiError as error:
        connection.send(("done", LibraryRead(path, init_error=error.rv)))
        return
    try:
        result = _read_library(raw, path, now)
    finally:
        with contextlib.suppress(CryptokiError):
            raw.finalize()
    connection.send(("done", result))


def _die_with_parent() -> None:
    """A child stuck in a library must not outlive the tool (which may leave without waiting for it): Linux
    kills it when the process that forked it ends (PR_SET_PDEATHSIG)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def _read_library(raw: Cryptoki, path: str, now: datetime) -> LibraryRead:
    try:
        info = raw.info()
    except CryptokiError:
        info = LibraryInfo("", "", (0, 0), (0, 0))
    try:
        slot_ids = raw.slot_list()
    except CryptokiError as error:
        return LibraryRead(path, info, raw.has_extended_info, slot_list_error=ckr.name(error.rv))
    slots = []
    for slot_id in slot_ids:
        try:
            slots.append(read_slot(raw, path, slot_id, now))
        except TokenGone:
            continue  # pulled out mid-scan: it is simply not there
        except CryptokiError as error:
            # C_GetSlotInfo itself failed: the slot cannot even be described. Keep it visible as a reader.
            slots.append(
                TokenSnapshot(
                    path, slot_id, "", "", (), token_present=False, taken_at=now, token_error=ckr.name(error.rv)
                )
            )
    return LibraryRead(path, info, raw.has_extended_info, tuple(slots))


def _context() -> multiprocessing.context.BaseContext:
    pkcs11 = sys.modules.get("pkcs11")
    loaded_by_pkcs11 = bool(getattr(pkcs11, "_loaded", None))  # python-pkcs11's own cache of loaded libraries
    if threading.active_count() == 1 and not libraries_loaded_here and not loaded_by_pkcs11:
        return multiprocessing.get_context("fork")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["core.isolation"])
    _start_forkserver()
    return context


_forkserver_lock = threading.Lock()


def _start_forkserver() -> None:
    """Start the forkserver with the process's real stderr: inside the console, Textual has replaced sys.stderr
    by an object without a file descriptor, which multiprocessing cannot hand to its helper processes."""
    with _forkserver_lock:
        saved = sys.stderr
        try:
            if sys.__stderr__ is not None:
                sys.stderr = sys.__stderr__
            multiprocessing.forkserver.ensure_running()
        finally:
            sys.stderr = saved


@dataclass
class _Running:
    path: str
    process: multiprocessing.process.BaseProcess
    connection: multiprocessing.connection.Connection
    output_path: str
    started: float
    last_call: str = "C_GetFunctionList"
    result: LibraryRead | None = None
    ended: bool = False  # its end of the pipe closed: it finished, or died


def read_libraries(
    paths: Sequence[str],
    *,
    now: datetime,
    timeout: float = DEFAULT_TIMEOUT,
    environ: Mapping[str, str] | None = None,
    reserved: Mapping[str, bytes] | None = None,
) -> list[LibraryRead]:
    """Read every library at once, each in its own child; the whole takes at most about `timeout` seconds.

    KeyboardInterrupt (Ctrl+C) ends every child before it propagates."""
    environ = dict(os.environ if environ is None else environ)
    context = _context()
    running: list[_Running] = []
    try:
        for path in paths:
            handle, output_path = tempfile.mkstemp(prefix="kaztoken-library-", suffix=".out")
            os.close(handle)
            receiver, sender = context.Pipe(duplex=False)
            process = context.Process(
                target=_child,
                args=(sender, path, environ, output_path, (reserved or {}).get(path), now),
                daemon=True,
            )
            process.start()
            sender.close()
            running.append(_Running(path, process, receiver, output_path, time.monotonic()))
        deadline = time.monotonic() + timeout
        waiting = {entry.connection: entry for entry in running}
        while waiting:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            for connection in multiprocessing.connection.wait(list(waiting), timeout=remaining):
                entry = waiting[connection]  # type: ignore[index]
                try:
                    kind, value = entry.connection.recv()
                except (EOFError, OSError):
                    entry.ended = True
                    del waiting[connection]  # type: ignore[arg-type]
                    continue  # died: its exit status tells how
                except Exception:  # a reply that does not unpickle: as good as a crash
                    entry.ended = True
                    del waiting[connection]  # type: ignore[arg-type]
                    continue
                if kind == "call":
                    entry.last_call = value
                else:
                    entry.result = value
                    del waiting[connection]  # type: ignore[arg-type]
        return [_finish(entry, timeout) for entry in running]
    finally:
        for entry in running:
            if entry.process.is_alive():
                entry.process.kill()
            entry.process.join(timeout=5)
            entry.connection.close()
            with contextlib.suppress(OSError):
                os.unlink(entry.output_path)


def _finish(entry: _Running, timeout: float) -> LibraryRead:
    elapsed = time.monotonic() - entry.started
    failure = None
    if entry.result is None:
        if not entry.ended:
            entry.process.kill()
            entry.process.join(timeout=5)
            failure = LibraryFailure("hang", entry.last_call, f"{timeout:g} s")
        else:
            entry.process.join(timeout=5)
            failure = LibraryFailure("crash", entry.last_call, _exit_text(entry.process.exitcode))
    output = _tail(entry.output_path)
    base = entry.result or LibraryRead(entry.path)
    return LibraryRead(
        path=base.path,
        info=base.info,
        vendor_extension=base.vendor_extension,
        slots=base.slots,
        load_error=base.load_error,
        init_error=base.init_error,
        slot_list_error=base.slot_list_error,
        failure=failure,
        output=output,
        elapsed=elapsed,
    )


def _exit_text(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"exit status {code}"


def _tail(path: str) -> str:
    try:
        with open(path, "rb") as file:
            file.seek(0, os.SEEK_END)
            size = file.tell()
            file.seek(max(0, size - STDERR_LIMIT))
            return file.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
