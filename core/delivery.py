"""Delivery of the local audit file (the spool) to the remote sinks: at least once, never in an action's way.

An action writes its records to the local file only (core.audit); this module carries them on later, from the
file, in order. For each sink a small state file next to the audit file (`audit.jsonl.delivery.json`) keeps the
byte offset up to which that sink has everything: a batch is read from there, sent, and only then is the offset
moved past it. So a sink that is down (PostgreSQL stopped, the syslog receiver gone) misses nothing: its offset
stays, and the next flush sends from there. A crash between a batch's delivery and the state's update sends the
batch again: PostgreSQL stores a record once by its id; syslog carries the id for the SIEM to fold duplicates.

One deliverer at a time per audit file (an flock on `audit.jsonl.delivery.lock`): consoles sharing a file do not
send a record twice between them. The state file is read as hostile: anything odd in it means "from the start"
(at least once, stored once, wins over saving a resend). A new audit file (rotated: another inode, or shorter than
an offset) is delivered from its start.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import stat
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core import audit
from core.config import Config
from core.sinks import Record, Sink, SinkConfigError, SinkDown, remote_sinks, sink_names
from core.small_files import read_small_file

STATE_MAX_BYTES = 1 << 20  # a few sinks' offsets take a few hundred bytes
QUIET_REST_SECONDS = 60.0
BATCH = 500  # records per send: one transaction or one TCP stream; a busy day's spool goes in a few


def state_path(spool: Path) -> Path:
    return spool.with_name(spool.name + ".delivery.json")


def lock_path(spool: Path) -> Path:
    return spool.with_name(spool.name + ".delivery.lock")


@dataclass(slots=True)
class SinkState:
    offset: int = 0  # bytes of the spool this sink has every record of
    delivered: int = 0  # records sent to it from this spool (a count for the operator, nothing depends on it)
    last_try: str | None = None
    last_ok: str | None = None
    last_error: str | None = None  # the OS's or the server's word, from the last failed try


@dataclass(slots=True)
class State:
    file: tuple[int, int] | None = None  # (device, inode) of the spool the offsets are about
    sinks: dict[str, SinkState] = field(default_factory=dict)

    def of(self, name: str) -> SinkState:
        return self.sinks.setdefault(name, SinkState())


def _identity(info: os.stat_result) -> tuple[int, int]:
    return (info.st_dev, info.st_ino)


def load_state(spool: Path, identity: tuple[int, int] | None) -> State:
    try:  # a FIFO or /dev/zero put in its place must not hang or flood the deliverer (UnfitFile: a ValueError)
        data = json.loads(read_small_file(state_path(spool), STATE_MAX_BYTES))
    except (OSError, ValueError, RecursionError):
        return State(identity)
    state = State(identity)
    if not isinstance(data, dict) or data.get("file") != (list(identity) if identity else None):
        return state  # another spool (rotated, restored): every sink from its start
    sinks = data.get("sinks")
    if not isinstance(sinks, dict):
        return state
    for name, values in sinks.items():
        if not isinstance(name, str) or not isinstance(values, dict):
            continue
        offset, delivered = values.get("offset"), values.get("delivered", 0)
        if type(offset) is not int or offset < 0 or type(delivered) is not int:
            continue
        texts = {key: values.get(key) for key in ("last_try", "last_ok", "last_error")}
        texts = {key: value if isinstance(value, str) else None for key, value in texts.items()}
        state.sinks[name] = SinkState(offset, delivered, **texts)
    return state


def save_state(spool: Path, state: State) -> None:
    """Written to a temporary file, flushed, renamed over the old one: a crash leaves the old state or the new."""
    path = state_path(spool)
    data = {"file": list(state.file) if state.file else None, "sinks": {k: asdict(v) for k, v in state.sinks.items()}}
    temporary = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, json.dumps(data, sort_keys=True).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)


# --- the spool -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Chunk:
    records: list[Record]
    end: int  # the offset past the last whole line read (malformed lines are passed over, and counted)
    skipped: int = 0


def _record(raw: bytes, end: int) -> Record | None:
    try:
        entry = audit.AuditEntry.from_dict(json.loads(raw.decode("utf-8")))
    except (UnicodeDecodeError, ValueError, RecursionError):  # MalformedRecord is a ValueError
        return None
    # A line from before records had ids: its digest stands in, the same on every retry.
    key = entry.id or "sha256:" + hashlib.sha256(raw.strip()).hexdigest()[:32]
    return Record(key, entry.record, entry, end)


def read_spool(spool: Path, offset: int, limit: int | None = BATCH, identity: tuple[int, int] | None = None) -> Chunk:
    """The records after `offset`, at most `limit`. A last line without its newline is being written (or was
    torn by a full disk, and the next record will end it): it is left for later. With `identity`, a file that is
    no longer that one (rotated meanwhile) gives nothing: its offsets are about the other."""
    records: list[Record] = []
    skipped = 0
    end = offset
    with _open(spool) as stream:
        if identity is not None and _identity(os.fstat(stream.fileno())) != identity:
            return Chunk([], offset)
        stream.seek(offset)
        while limit is None or len(records) < limit:
            line = stream.readline(audit.MAX_LINE + 1)
            if not line.endswith(b"\n"):
                if len(line) <= audit.MAX_LINE:
                    break  # end of file, or a line still being written
                while line and not line.endswith(b"\n"):  # too long to be a record: pass over it
                    line = stream.readline(audit.MAX_LINE)
                if not line:
                    break
                end = stream.tell()
                skipped += 1
                continue
            end = stream.tell()
            if not line.strip():
                continue
            record = _record(line, end)
            if record is None:
                skipped += 1
            else:
                records.append(record)
    return Chunk(records, end, skipped)


@contextlib.contextmanager
def _open(spool: Path) -> Iterator[Any]:
    fd = os.open(spool, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(0, "not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as stream:
            yield stream
    finally:
        os.close(fd)


def _spool_identity(spool: Path) -> tuple[tuple[int, int], int] | None:
    try:
        info = os.stat(spool)
    except FileNotFoundError:
        return None
    return _identity(info), info.st_size


# --- flushing and what is pending ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SinkStatus:
    """One sink after a flush or a look: what it has not received yet, and how its last try went."""

    name: str
    pending: int = 0  # records in the spool it has not received
    oldest: str | None = None  # the time of the oldest of them
    delivered_now: int = 0
    error: str | None = None  # why it is down (the last try's), or None
    last_ok: str | None = None
    problem: SinkConfigError | None = None  # the name cannot be used at all

    def to_dict(self) -> dict[str, Any]:
        return {
            "sink": self.name,
            "pending": self.pending,
            "oldest": self.oldest,
            "delivered_now": self.delivered_now,
            "error": self.error,
            "last_ok": self.last_ok,
            "problem": self.problem.text.english if self.problem else None,
        }


@dataclass(frozen=True, slots=True)
class Plan:
    """The spool and the sinks it goes to, as configured."""

    spool: Path
    sinks: list[Sink]
    problems: list[SinkConfigError]

    @classmethod
    def configured(cls, config: Config, environ: Mapping[str, str] | None = None) -> Plan:
        sinks, problems = remote_sinks(sink_names(config, environ))
        return cls(audit.audit_path(), sinks, problems)


@contextlib.contextmanager
def _delivering(spool: Path, *, wait: bool) -> Iterator[bool]:
    """The spool's delivery lock: True when held. Without `wait`, False at once when another process delivers."""
    spool.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path(spool), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def flush(plan: Plan, *, wait: bool = True, rest: float = 0.0) -> list[SinkStatus]:
    """Delivers to each sink what it has not received, batch by batch, saving its offset after each. A sink that
    is down keeps its offset and says why; the others go on. Returns [] when another process is delivering and
    `wait` is False. A sink whose last try failed less than `rest` seconds ago is left alone this time."""
    if not plan.sinks:
        return _statuses(plan, {})
    with _delivering(plan.spool, wait=wait) as held:
        if not held:
            return []
        found = _spool_identity(plan.spool)
        if found is None:
            return _statuses(plan, {})
        identity, size = found
        state = load_state(plan.spool, identity)
        delivered: dict[str, int] = {}
        for sink in plan.sinks:
            if not _resting(state.of(sink.name), rest):
                delivered[sink.name] = _deliver(plan.spool, sink, state.of(sink.name), size, state)
        return _statuses(plan, delivered, state)


def _resting(sink_state: SinkState, rest: float) -> bool:
    if not rest or not sink_state.last_error or not sink_state.last_try:
        return False
    try:
        return (datetime.now(UTC) - datetime.fromisoformat(sink_state.last_try)).total_seconds() < rest
    except (ValueError, TypeError):  # a time from the state file that is none: try
        return False


def _deliver(spool: Path, sink: Sink, sink_state: SinkState, size: int, state: State) -> int:
    if sink_state.offset > size:  # the file was cut short under the same inode: start over
        sink_state.offset = 0
    sent = 0
    while True:
        chunk = read_spool(spool, sink_state.offset, identity=state.file)
        if chunk.end == sink_state.offset:
            return sent
        sink_state.last_try = _now()
        if chunk.records:
            try:
                sink.send(chunk.records)
            except Exception as error:  # SinkDown, or a sink's bug: either way the next sink still gets its turn
                taken = min(error.sent, len(chunk.records)) if isinstance(error, SinkDown) else 0
                if taken:  # a datagram socket took the first ones: they are not sent again
                    sink_state.offset = chunk.records[taken - 1].end
                    sink_state.delivered += taken
                    sent += taken
                sink_state.last_error = str(error) if isinstance(error, SinkDown) else _bug(error)
                save_state(spool, state)
                return sent
        sink_state.offset = chunk.end
        sink_state.delivered += len(chunk.records)
        sink_state.last_ok, sink_state.last_error = sink_state.last_try, None
        sent += len(chunk.records)
        save_state(spool, state)


def _bug(error: Exception) -> str:
    """An error no sink should raise: its class, and its first line (a library's message, never a record)."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def pending(plan: Plan) -> list[SinkStatus]:
    """What each sink has not received yet (read only: nothing is sent, no lock is taken)."""
    return _statuses(plan, {})


def _statuses(plan: Plan, delivered: dict[str, int], state: State | None = None) -> list[SinkStatus]:
    found = _spool_identity(plan.spool)
    if state is None:
        state = load_state(plan.spool, found[0] if found else None)
    out = []
    for sink in plan.sinks:
        sink_state = state.sinks.get(sink.name, SinkState())
        count, oldest = 0, None
        if found is not None:
            offset = sink_state.offset if sink_state.offset <= found[1] else 0
            chunk = read_spool(plan.spool, offset, limit=None)
            count = len(chunk.records)
            oldest = chunk.records[0].entry.time if chunk.records else None
        out.append(
            SinkStatus(
                sink.name,
                pending=count,
                oldest=oldest,
                delivered_now=delivered.get(sink.name, 0),
                error=sink_state.last_error if count else None,
                last_ok=sink_state.last_ok,
            )
        )
    out += [SinkStatus(problem.name, problem=problem) for problem in plan.problems]
    return out


# --- in the background ----------------------------------------------------------------------------------------


class Courier:
    """Delivers now and then from a long-running process (the console), off its UI thread: `due()` is a clock
    check for the UI thread, `tick()` does the work in a worker thread and never raises. A sink that failed is
    tried again after a pause that doubles up to five minutes, so a dead server is not called every second."""

    IDLE_SECONDS = 5.0
    RETRY_SECONDS = (15.0, 30.0, 60.0, 120.0, 300.0)

    def __init__(self, plan: Plan, clock: Any = time.monotonic) -> None:
        self.plan = plan
        self._clock = clock
        self._next = 0.0
        self._failures = 0
        self._running = threading.Lock()
        self.last: list[SinkStatus] = []

    def due(self) -> bool:
        return bool(self.plan.sinks) and self._clock() >= self._next and not self._running.locked()

    def tick(self) -> None:
        if not self._running.acquire(blocking=False):
            return
        try:
            self.last = flush(self.plan, wait=False)
            failed = any(status.error for status in self.last)
        except Exception as error:  # the audit file or its state unreadable: said by --pending, retried here
            self.last = [SinkStatus(sink.name, error=f"{type(error).__name__}: {error}") for sink in self.plan.sinks]
            failed = True
        finally:
            self._running.release()
        self._failures = self._failures + 1 if failed else 0
        pause = self.RETRY_SECONDS[min(self._failures, len(self.RETRY_SECONDS)) - 1] if failed else self.IDLE_SECONDS
        self._next = self._clock() + pause


def deliver_quietly(config: Config, environ: Mapping[str, str] | None = None) -> Sequence[SinkStatus]:
    """After a command's action: one try, errors kept for `audit --pending`, nothing said, nothing raised. A sink
    that failed within the last minute is not tried: a script of a hundred actions while the database is away
    does not wait a hundred connection timeouts."""
    try:
        plan = Plan.configured(config, environ)
        return flush(plan, wait=False, rest=QUIET_REST_SECONDS) if plan.sinks else []
    except Exception:  # the action is done and on the local record; delivery is retried by the next flush
        return []
