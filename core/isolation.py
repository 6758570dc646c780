"""Reading a PKCS#11 library where it cannot take the tool down: each library in a host process of its own.

A library is foreign C code in our address space. One that hangs in C_Initialize, crashes in C_GetTokenInfo or
prints over the console would take the scan, or the console, with it. So every read of a library happens in
a child process with a deadline (`LibraryHost`): the child loads the library through the ctypes layer, reads
every slot and sends the snapshots back, certificates as their bytes (the parent parses them: it imports the
parser while the children read); it notes the name of each entry point before calling it (in a small
file), so a hang or a crash is reported with the call it happened in. The child's stdout and stderr go to a file
the parent keeps, never to the terminal. The console keeps its hosts between polls and they re-read a token's
objects only when something says it changed; the `scan` command uses a host once.

Start method (core.host_process): `fork` is cheapest (nothing to import again) but only safe from a process that
has one thread and no PKCS#11 library loaded (a forked copy of an initialised library shares its sockets and
locks with the parent). Elsewhere (the console, which has threads and loads libraries for its actions)
multiprocessing's forkserver is used: a clean single-threaded process started once, which forks the children.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from core import ckr
from core.certificates import load_parser
from core.cryptoki import Cryptoki, CryptokiError, LibraryInfo
from core.flags import SlotFlag, flag_names
from core.host_process import Channel, HostProcess, start_forked, start_from_forkserver, wait
from core.snapshot import TokenGone, TokenSnapshot, read_slot, with_parsed_certificates, without_objects

DEFAULT_TIMEOUT = 30.0  # seconds a library may take for a whole scan before it is called hanging
IDLE_SECONDS = 60.0  # a host nobody asked anything for this long ends by itself
PROGRESS_BYTES = 64
STDERR_LIMIT = 16_384  # bytes of a library's own output kept for the details screen

# Set by core.modules when a library is loaded into this process: `fork` is no longer safe after that.
libraries_loaded_here = False


@dataclass(frozen=True, slots=True)
class LibraryFailure:
    """The library hung or died while being read."""

    kind: str  # "hang" or "crash"
    call: str  # the entry point it was in, e.g. "C_GetTokenInfo"
    detail: str  # the signal for a crash ("SIGSEGV"), the limit for a hang ("30 s")


class Depth(StrEnum):
    """How much a read asks the library again."""

    # Only what says a token changed: the slot list, each slot's and token's info, SoftHSM2's token directories.
    # A token in a reader (a smart card) is judged by its slot info and the library's slot events alone: its token
    # info costs commands to the card (OpenSC asks the PIN's tries left), and an idle console sends it none.
    POLL = "poll"
    STALE = "stale"  # a poll that also reads again the objects of every token not in a reader (certificates' days)
    FULL = "full"  # everything: a first read, the helpdesk's rescan, after an action


# What a host's answers and the parent's requests may hold besides plain data (core.host_process.loads): a
# library's bytes in the pipe cannot make the parent build or call anything else.
ANSWERS = frozenset(
    {
        ("core.isolation", "LibraryRead"),
        ("core.isolation", "LibraryFailure"),
        ("core.isolation", "Unchanged"),
        ("core.cryptoki", "LibraryInfo"),
        ("core.snapshot", "TokenSnapshot"),
        ("core.snapshot", "PinState"),
        ("core.snapshot", "PinStatus"),
        ("core.snapshot", "KeyInfo"),
        ("core.certificates", "RawCertificate"),
        ("datetime", "datetime"),
        ("datetime", "timezone"),
        ("datetime", "timedelta"),
    }
)
REQUESTS = frozenset({("datetime", "datetime"), ("datetime", "timezone"), ("datetime", "timedelta")})

MAX_SLOT_EVENTS = 256  # events taken per read: a library that keeps answering one must not hold the read forever


@dataclass(frozen=True, slots=True)
class Unchanged:
    """In a host's answer: this slot is as in its previous answer (not sent again: pickling 64 snapshots every
    second was most of an idle console's cost)."""

    slot_id: int


@dataclass(frozen=True, slots=True)
class LibraryRead:
    """What one isolated read of a library gave."""

    path: str
    info: LibraryInfo | None = None
    vendor_extension: bool = False
    slots: tuple[TokenSnapshot | Unchanged, ...] = ()  # after LibraryHost.finish: snapshots only, parsed
    load_error: str | None = None  # not a PKCS#11 library (dlopen or C_GetFunctionList failed)
    init_error: int | None = None  # C_Initialize's CK_RV
    slot_list_error: str | None = None
    failure: LibraryFailure | None = None
    output: str = ""  # what the library printed (stdout and stderr), bounded
    elapsed: float = 0.0


def _host(
    connection: Channel,
    path: str,
    environ: Mapping[str, str],
    output_path: str,
    progress_path: str,
    reserved: bytes | None,
) -> None:
    """The child: load the library once, then answer read requests until told to quit (or left idle)."""
    # The library's output goes to the file, never to the terminal of the console.
    sink = os.open(output_path, os.O_WRONLY | os.O_APPEND)
    os.dup2(sink, 1)
    os.dup2(sink, 2)
    os.close(sink)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is the parent's to handle: it ends us
    gc.freeze()  # the parent's objects, copied at the fork: the collector would walk (and so copy) every page
    _die_with_parent()
    os.environ.clear()
    os.environ.update(environ)
    # The entry point about to be called, written in place into a file the parent reads only when the host hung
    # or died: one pwrite per call, and no wake-up of the parent (a pipe message per call cost the console more
    # than the library's own work when idle).
    progress = os.open(progress_path, os.O_WRONLY)

    def on_call(name: str) -> None:
        os.pwrite(progress, name.encode("ascii", "replace")[:PROGRESS_BYTES].ljust(PROGRESS_BYTES), 0)

    library = _OpenLibrary(path, reserved, on_call=on_call)
    try:
        while connection.poll(IDLE_SECONDS):
            request = connection.recv()
            if request[0] != "read":
                break
            _, now, depth, last = request
            try:
                answer = library.read(now, Depth(depth))
            except Exception as error:  # our own bug while reading, not the library's crash: said as such
                answer = LibraryRead(library.path, slot_list_error=f"{type(error).__name__}")
                library.failed = answer
            connection.send(("done", answer))
            if library.broken or last:
                # Broken: it would not load or start, the next read starts afresh (it may work by then). Last:
                # no read follows (the `scan` command), the library is let go while the parent judges the answer.
                break
    except (EOFError, OSError):
        pass  # the parent is gone
    finally:
        library.close()


class _OpenLibrary:
    """The library as the host keeps it between reads: initialised once, each slot's last snapshot kept.

    A poll re-reads a token's objects only when something says it changed: its slot or token info (flags,
    counters, label…), or, for SoftHSM2 and the simulator, their token directories (which is also when they
    must be initialised again to see tokens made by other processes)."""

    def __init__(self, path: str, reserved: bytes | None, on_call: Callable[[str], None]) -> None:
        self.path, self.reserved = path, reserved
        self.raw: Cryptoki | None = None
        self.failed: LibraryRead | None = None
        self.known: dict[int, tuple[TokenSnapshot, TokenSnapshot]] = {}  # slot → (without objects, whole)
        self.watched: tuple[tuple[str, int], ...] | None = None
        self.slot_events = True  # until the library answers C_WaitForSlotEvent with an error (SoftHSM2 has none)
        try:
            self.raw = Cryptoki(path, on_call=on_call)
        except CryptokiError as error:
            self.failed = LibraryRead(path, load_error=str(error))
            return
        except (OSError, AttributeError) as error:
            self.failed = LibraryRead(path, load_error=str(error) or type(error).__name__)
            return
        try:
            self.raw.initialize(reserved)
        except CryptokiError as error:
            self.failed = LibraryRead(path, init_error=error.rv)
            self.raw = None

    @property
    def broken(self) -> bool:
        return self.failed is not None

    def close(self) -> None:
        if self.raw is not None:
            with contextlib.suppress(CryptokiError):
                self.raw.finalize()

    def read(self, now: datetime, depth: Depth) -> LibraryRead:
        if self.failed is not None or self.raw is None:
            return self.failed or LibraryRead(self.path, load_error="?")
        raw = self.raw
        try:
            info = raw.info()
        except CryptokiError:
            info = LibraryInfo("", "", (0, 0), (0, 0))
        watched = _watched_directories(info.manufacturer)
        if self.watched is not None and watched != self.watched:
            with contextlib.suppress(CryptokiError):
                raw.finalize()
            try:
                raw.initialize(self.reserved)
            except CryptokiError as error:  # answered like a first start that failed; the host then ends
                self.failed, self.raw = LibraryRead(self.path, init_error=error.rv), None
                return self.failed
            depth = Depth.FULL
        self.watched = watched
        events = self._slot_events(raw)
        if depth is Depth.FULL:
            self.known.clear()
        elif depth is Depth.STALE:
            self.known = {slot_id: known for slot_id, known in self.known.items() if known[0].in_reader}
        try:
            slot_ids = raw.slot_list()
        except CryptokiError as error:
            self.known.clear()
            return LibraryRead(self.path, info, raw.has_extended_info, slot_list_error=ckr.name(error.rv))
        slots = []
        for slot_id in slot_ids:
            try:
                slots.append(self._slot(raw, slot_id, now, changed=slot_id in events))
            except TokenGone:
                self.known.pop(slot_id, None)  # pulled out mid-scan: it is simply not there
            except CryptokiError as error:
                # C_GetSlotInfo itself failed: the slot cannot even be described. Keep it visible as a reader.
                self.known.pop(slot_id, None)
                code = ckr.name(error.rv)
                slots.append(TokenSnapshot(self.path, slot_id, "", "", (), False, now, token_error=code))
        for gone in set(self.known) - set(slot_ids):
            del self.known[gone]
        return LibraryRead(self.path, info, raw.has_extended_info, tuple(slots))

    def _slot_events(self, raw: Cryptoki) -> set[int]:
        """The slots the library says had an event (a card put in or taken out) since the last read: non-blocking
        C_WaitForSlotEvent, asked until it has none. A card swapped within a poll leaves the slot's info as it
        was; its event does not."""
        events: set[int] = set()
        if not self.slot_events:
            return events
        try:
            for _ in range(MAX_SLOT_EVENTS):
                slot_id = raw.poll_slot_event()
                if slot_id is None:
                    break
                events.add(slot_id)
        except CryptokiError:
            self.slot_events = False  # CKR_FUNCTION_NOT_SUPPORTED, mostly: slot infos alone tell then
        return events

    def _slot(self, raw: Cryptoki, slot_id: int, now: datetime, *, changed: bool) -> TokenSnapshot | Unchanged:
        known = self.known.get(slot_id)
        if known is None:  # a first or full read: everything at once, without asking the infos twice
            whole = read_slot(raw, self.path, slot_id, now, parse=False)
            self.known[slot_id] = (without_objects(whole), whole)
            return whole
        if known[0].in_reader and not changed and self._same_slot(raw, slot_id, known[0]):
            return Unchanged(slot_id)  # a smart card: not one command to it while nothing says it changed
        # Read as of the known head's time, so the two compare as they are (no copy with the time changed).
        head = read_slot(raw, self.path, slot_id, known[0].taken_at, with_objects=False)
        if known[0] == head:
            return Unchanged(slot_id)  # nothing says it changed: the parent keeps what it was last sent
        head = replace(head, taken_at=now)
        whole = read_slot(raw, self.path, slot_id, now, parse=False) if head.initialised else head
        self.known[slot_id] = (head, whole)
        return whole

    @staticmethod
    def _same_slot(raw: Cryptoki, slot_id: int, known: TokenSnapshot) -> bool:
        """C_GetSlotInfo answers as it did for `known` (a failure is a change: read_slot then says what it is)."""
        try:
            info = raw.slot_info(slot_id)
        except CryptokiError:
            return False
        slot = (info.description, info.manufacturer, flag_names(info.flags, SlotFlag))
        return slot == (known.slot_description, known.slot_manufacturer, known.slot_flags)


def _watched_directories(manufacturer: str) -> tuple[tuple[str, int], ...]:
    """Modification times of the token directories of SoftHSM2 (SOFTHSM2_CONF's tokendir) and of the simulated
    KAZTOKEN (KAZTOKEN_SIM_DIR/tokens) and of each token in them: a token made, removed or written to by another
    process. Other libraries are watched through what they answer."""
    if not any(mark in manufacturer for mark in ("SoftHSM", "KAZTOKEN")):
        return ()
    roots = []
    conf = os.environ.get("SOFTHSM2_CONF")
    if conf:
        with contextlib.suppress(OSError, UnicodeError), open(conf, encoding="utf-8") as file:
            for line in file.read(65536).splitlines():
                key, _, value = line.partition("=")
                if key.strip() == "directories.tokendir":
                    roots.append(value.strip())
    simulator = os.environ.get("KAZTOKEN_SIM_DIR")
    if simulator:
        roots.append(os.path.join(simulator, "tokens"))
    seen: list[tuple[str, int]] = []
    for root in roots:
        with contextlib.suppress(OSError):
            seen.append((root, os.stat(root).st_mtime_ns))
            with os.scandir(root) as entries:
                seen += sorted((entry.path, entry.stat().st_mtime_ns) for entry in entries if entry.is_dir())
    return tuple(seen)


def _die_with_parent() -> None:
    """A child stuck in a library must not outlive the tool (which may leave without waiting for it): Linux
    kills it when the process that forked it ends (PR_SET_PDEATHSIG)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def _can_fork() -> bool:
    """Whether a host may be forked straight from this process (core.host_process): one thread, and no PKCS#11
    library loaded here, by us or by python-pkcs11 (its own cache of loaded libraries)."""
    pkcs11 = sys.modules.get("pkcs11")
    loaded_by_pkcs11 = bool(getattr(pkcs11, "_loaded", None))
    return threading.active_count() == 1 and not libraries_loaded_here and not loaded_by_pkcs11


class LibraryHost:
    """One library in a child process of its own, kept between reads: the console polls it every second
    without loading the library again; a host that hung or died is replaced at the next read."""

    def __init__(self, path: str, *, environ: Mapping[str, str] | None = None, reserved: bytes | None = None) -> None:
        self.path = path
        self.environ = dict(os.environ if environ is None else environ)
        self.reserved = reserved
        self.process: HostProcess | None = None
        self.connection: Channel | None = None
        self.output_path: str | None = None
        self.progress_path: str | None = None
        self.previous: dict[int, TokenSnapshot] = {}  # the slots of the last answer, for Unchanged
        # the read in progress
        self.result: LibraryRead | None = None
        self.ended = False
        self.started = 0.0

    def _start(self) -> None:
        handle, self.output_path = tempfile.mkstemp(prefix="kaztoken-library-", suffix=".out")
        os.close(handle)
        handle, self.progress_path = tempfile.mkstemp(prefix="kaztoken-library-", suffix=".call")
        os.write(handle, b"C_GetFunctionList".ljust(PROGRESS_BYTES))
        os.close(handle)
        start = start_forked if _can_fork() else start_from_forkserver
        self.process, self.connection = start(
            _host,
            self.path,
            self.environ,
            self.output_path,
            self.progress_path,
            self.reserved,
            answers=ANSWERS,
            requests=REQUESTS,
        )
        self.previous = {}  # a new host knows nothing yet: it sends every slot

    def ask(self, now: datetime, depth: Depth, *, last: bool = False) -> None:
        """Send a read request (starting the host first if there is none). `last`: no read follows, the host
        finalises its library and ends as soon as it has answered (`stop` then finds it gone, or nearly)."""
        if self.process is None or not self.process.is_alive():
            self.stop()
            self._start()
        self.result, self.ended, self.started = None, False, time.monotonic()
        assert self.connection is not None
        try:
            self.connection.send(("read", now, str(depth), last))
        except OSError:
            self.ended = True  # it died between two reads: the answer below says so

    def take(self, message: tuple[str, Any] | None) -> None:
        """The host's answer (None: its end closed, or the answer was not one)."""
        value = message[1] if message is not None else None
        self.result = value if isinstance(value, LibraryRead) else None
        self.ended = self.result is None

    def finish(self, timeout: float) -> LibraryRead:
        """The read's result, or the failure: a host that did not answer is killed (a hang), one whose end
        closed without an answer died (a crash). Either way the next read starts a new one."""
        elapsed = time.monotonic() - self.started
        failure = None
        if self.result is None:
            call = self._progress()
            if not self.ended:
                failure = LibraryFailure("hang", call, f"{timeout:g} s")
            else:
                if self.process is not None:
                    self.process.join(timeout=5)
                failure = LibraryFailure("crash", call, _exit_text(self.process.exitcode if self.process else None))
            output = self.output()
            self.stop()
        else:
            output = self.output()
        base = self.result or LibraryRead(self.path)
        known: list[TokenSnapshot | Unchanged] = [
            self.previous.get(slot.slot_id, slot) if isinstance(slot, Unchanged) else with_parsed_certificates(slot)
            for slot in base.slots
            if isinstance(slot, TokenSnapshot | Unchanged)
        ]
        slots = tuple(slot for slot in known if isinstance(slot, TokenSnapshot))  # an Unchanged never seen: dropped
        self.previous = {slot.slot_id: slot for slot in slots}
        return replace(base, slots=slots, failure=failure, output=output, elapsed=elapsed)

    def _progress(self) -> str:
        try:
            with open(self.progress_path or "", "rb") as file:
                return file.read(PROGRESS_BYTES).decode("ascii", "replace").strip() or "C_GetFunctionList"
        except OSError:
            return "C_GetFunctionList"

    def output(self) -> str:
        return _tail(self.output_path) if self.output_path else ""

    def stop(self) -> None:
        if self.connection is not None:
            with contextlib.suppress(OSError):
                self.connection.send(("quit", None, None, False))
            self.connection.close()
            self.connection = None
        if self.process is not None:
            self.process.join(timeout=0.2)
            if self.process.is_alive():
                self.process.kill()
                self.process.join(timeout=5)
            self.process = None
        for path in (self.output_path, self.progress_path):
            if path is not None:
                with contextlib.suppress(OSError):
                    os.unlink(path)
        self.output_path = self.progress_path = None


def ask_hosts(hosts: Sequence[LibraryHost], *, now: datetime, depth: Depth, last: bool = False) -> None:
    """Start a read on every host (`collect` waits for the answers); `last`: see LibraryHost.ask."""
    try:
        for host in hosts:
            host.ask(now, depth, last=last)
    except BaseException:
        for host in hosts:
            host.stop()
        raise


def collect(hosts: Sequence[LibraryHost], *, timeout: float) -> list[LibraryRead]:
    """The answers to `ask_hosts`, `timeout` at most from the ask; KeyboardInterrupt stops the hosts first."""
    try:
        if hosts:
            load_parser()  # while the children read: the certificates they send are parsed here (RawCertificate)
        deadline = min((host.started for host in hosts), default=time.monotonic()) + timeout
        waiting = {host.connection: host for host in hosts if host.connection is not None and not host.ended}
        while waiting:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            for connection in wait(list(waiting), timeout=remaining):
                host = waiting.pop(connection)
                try:
                    message = connection.recv(deadline)
                except TimeoutError:  # it began an answer and did not finish it in time: a hang (finish)
                    continue
                except (EOFError, OSError):
                    message = None
                except Exception:  # an answer that does not unpickle: as good as a crash
                    message = None
                host.take(message)
        return [host.finish(timeout) for host in hosts]
    except BaseException:
        for host in hosts:
            host.stop()
        raise


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
