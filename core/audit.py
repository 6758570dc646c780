"""The audit trail: JSON lines appended and flushed to disk, two per action on a token.

Before an action touches the token, an "attempt" record (who, which token, what) is written and fsync-ed; if it
cannot be, the action is refused. After it, an "outcome" record with the same `id` says how it went and the
token's state before and after. An attempt without its outcome is what a crash or a failing disk leaves behind,
and the reader shows it as such. The file is also the spool of the remote sinks (syslog, PostgreSQL: core.sinks),
which core.delivery feeds from it afterwards: no action waits on a network.

Records are built from fixed fields only, so no PIN can reach the file: there is no free-text field an
operation could pass one through. The file is read as hostile (anyone with write access can put anything in
it): every line is checked field by field, and a line that does not hold a record is shown as malformed,
never completed with invented values.
"""

from __future__ import annotations

import json
import os
import pwd
import socket
import stat
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

# Where the trail is kept is decided in core.config (the program's log sits beside it); named here too.
from core.config import AUDIT_ENV as AUDIT_ENV
from core.config import audit_path as audit_path
from core.i18n import N_, Text

ATTEMPT, OUTCOME = "attempt", "outcome"  # the two kinds of record
MAX_LINE = 64 * 1024  # a record is well under 2 KiB; a longer line is not one, and is not read into memory


def operator() -> str:
    """The account of the real uid, from the OS: LOGNAME and USER are the caller's to set, so never read."""
    uid = os.getuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:  # no passwd entry (some containers): the uid is still the truth
        return str(uid)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True, slots=True)
class AuditEntry:
    action: str  # personalise, change-pin, unblock, format, …
    serial: str
    outcome: str | None = None  # core.actions.Outcome value; None on an attempt record
    label: str = ""
    module: str = ""
    role: str | None = None  # whose PIN the action used: "user" or "admin"
    reason: str | None = None  # a stable code (wrong-pin, policy, …), never a message with user input
    findings_before: tuple[str, ...] = ()
    findings_after: tuple[str, ...] = ()
    pin_before: str | None = None  # PIN status (ok, count-low, locked…), never the PIN
    pin_after: str | None = None
    tries_before: int | None = None
    tries_after: int | None = None
    time: str = field(default_factory=_now)
    operator: str = field(default_factory=operator)
    host: str = field(default_factory=socket.gethostname)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)  # shared by an action's attempt and outcome
    record: str = OUTCOME

    @property
    def attempt_only(self) -> bool:
        """An attempt whose outcome was never written: the action may or may not have changed the token."""
        return self.record == ATTEMPT

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["findings_before"] = list(self.findings_before)
        data["findings_after"] = list(self.findings_after)
        if self.record == ATTEMPT:  # only what is known before the token is touched
            data = {name: data[name] for name in ("action", "serial", "role", "reason", *_WHO)}
        return data

    @classmethod
    def from_dict(cls, data: object) -> AuditEntry:
        """A record read back, checked field by field; raises MalformedRecord naming what is wrong."""
        if not isinstance(data, dict):
            raise MalformedRecord(N_("not a JSON object"))
        record = data.get("record", OUTCOME)  # lines written before attempts were recorded are outcomes
        if record not in (ATTEMPT, OUTCOME):
            raise MalformedRecord(N_("unknown kind of record"))
        required = ("action", "serial", "time", "operator", "host") + (("outcome",) if record == OUTCOME else ())
        values: dict[str, Any] = {"record": record, "id": _text(data, "id", required=False) or ""}
        for spec in fields(cls):
            name = spec.name
            if name in ("record", "id"):
                continue
            if name in ("findings_before", "findings_after"):
                values[name] = _codes(data, name)
            elif name in ("tries_before", "tries_after"):
                values[name] = _count(data, name)
            else:
                values[name] = _text(data, name, required=name in required)
        if values["label"] is None:
            values["label"] = ""
        if values["module"] is None:
            values["module"] = ""
        try:  # written as UTC with its offset: a time without one, or beyond the calendar, is none of ours
            when = datetime.fromisoformat(values["time"])
            if when.utcoffset() is None:
                raise ValueError(values["time"])
            when.astimezone(UTC)
        except (ValueError, OverflowError):
            raise MalformedRecord(N_("its time is not a time")) from None
        return cls(**values)


_WHO = ("time", "operator", "host", "id", "record")


class MalformedRecord(ValueError):
    """A line that is not an audit record; the message id says why (never the line's content)."""

    def __init__(self, why: str, **params: Any) -> None:
        super().__init__(why)
        self.text = Text(why, params)


def _text(data: dict[str, Any], name: str, *, required: bool) -> str | None:
    value = data.get(name)
    if value is None:
        if required:
            raise MalformedRecord(N_("the field {field} is missing"), field=name)
        return None
    if not isinstance(value, str):
        raise MalformedRecord(N_("the field {field} is not text"), field=name)
    return value


def _count(data: dict[str, Any], name: str) -> int | None:
    value = data.get(name)
    if value is None:
        return None
    if type(value) is not int:  # not a bool, not a float
        raise MalformedRecord(N_("the field {field} is not a whole number"), field=name)
    return value


def _codes(data: dict[str, Any], name: str) -> tuple[str, ...]:
    value = data.get(name)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise MalformedRecord(N_("the field {field} is not a list of codes"), field=name)
    return tuple(value)


def attempt(action: str, serial: str, *, role: str | None = None, reason: str | None = None) -> AuditEntry:
    """The record written before an action touches the token; its `id` goes on the outcome record. `serial` is
    the token as the operator named it (a serial, or a token id from `scan --json`)."""
    return AuditEntry(action=action, serial=serial, role=role, reason=reason, record=ATTEMPT)


class AuditError(Exception):
    """The audit file could not be written or read. `reason` is the OS's word for it, never a record's content."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def _line(entry: AuditEntry) -> bytes:
    text = json.dumps(entry.to_dict(), ensure_ascii=False, sort_keys=True)
    # A label read from a token may hold lone surrogates: "\udcxx" is still valid JSON, and the line still UTF-8.
    return (text + "\n").encode("utf-8", "backslashreplace")


def append(entry: AuditEntry, path: Path | None = None) -> Path:
    """Append one record and push it to disk before returning: an action is on record even if the machine dies.

    Raises AuditError when the record is not safely on disk (full, read-only, not a regular file, …)."""
    path = path or audit_path()
    data = _line(entry)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_APPEND: several consoles may write one file; each line lands whole. O_NONBLOCK: a FIFO with no reader
        # fails at once instead of hanging the console.
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY, 0o600)
    except OSError as error:
        raise AuditError(path, error.strerror or type(error).__name__) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # /dev/null would swallow records, /dev/full and pipes fail
            raise AuditError(path, _NOT_REGULAR)
        written = os.write(fd, data)
        if written != len(data):  # the disk filled mid-line: end the torn line so the next record starts clean
            os.write(fd, b"\n")
            raise OSError(28, os.strerror(28))
        os.fsync(fd)
    except OSError as error:
        raise AuditError(path, error.strerror or type(error).__name__) from None
    finally:
        os.close(fd)
    return path


_NOT_REGULAR = N_("not a regular file")  # said as the OS says the others: after the path


@dataclass(frozen=True, slots=True)
class Malformed:
    """A line of the audit file that holds no record: where it is and why, never what it says."""

    line: int  # 1-based
    why: Text

    def to_dict(self) -> dict[str, Any]:
        return {"record": "malformed", "line": self.line, "problem": self.why.english}


Item = AuditEntry | Malformed


def _lines(stream: BinaryIO) -> Iterator[bytes | None]:
    """The file's lines, each at most MAX_LINE bytes; None for a longer one (skipped without being kept)."""
    while True:
        line = stream.readline(MAX_LINE + 1)
        if not line:
            return
        if len(line) <= MAX_LINE or line.endswith(b"\n"):
            yield line
            continue
        while line and not line.endswith(b"\n"):
            line = stream.readline(MAX_LINE)
        yield None


def _parse(number: int, raw: bytes | None) -> Item:
    if raw is None:
        return Malformed(number, Text(N_("the line is too long to be a record")))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return Malformed(number, Text(N_("the line is not UTF-8 text")))
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return Malformed(number, Text(N_("the line is not JSON")))
    try:
        return AuditEntry.from_dict(data)
    except MalformedRecord as error:
        return Malformed(number, error.text)


def read(path: Path | None = None, *, limit: int | None = None) -> list[Item]:
    """The actions on record, newest first: each outcome with its attempt folded in, an attempt without an
    outcome as itself, and every line that holds no record as Malformed (blank lines are skipped).

    Raises AuditError when the file cannot be read, or is not a regular file (a device or a pipe is no trail)."""
    path = path or audit_path()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except FileNotFoundError:
        return []
    except OSError as error:
        raise AuditError(path, error.strerror or type(error).__name__) from None
    items: list[Item | None] = []
    open_attempts: dict[str, int] = {}  # id → index in items of an attempt still waiting for its outcome
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise AuditError(path, _NOT_REGULAR)
        with os.fdopen(fd, "rb", closefd=False) as stream:
            for number, raw in enumerate(_lines(stream), 1):
                if raw is not None and not raw.strip():
                    continue
                item = _parse(number, raw)
                if isinstance(item, AuditEntry) and item.id:
                    if item.attempt_only:
                        open_attempts[item.id] = len(items)
                    else:
                        index = open_attempts.pop(item.id, None)
                        if index is not None and _same_action(items[index], item):
                            items[index] = None  # the outcome stands for both
                items.append(item)
    except OSError as error:
        raise AuditError(path, error.strerror or type(error).__name__) from None
    finally:
        os.close(fd)
    newest_first = [item for item in reversed(items) if item is not None]
    return newest_first if limit is None else newest_first[:limit]


def _same_action(attempt_item: Item | None, outcome: AuditEntry) -> bool:
    """The id's outcome is the attempt's: same action, same operator and host. (Not the serial: an attempt names
    the token as the operator did, by serial or token id; the outcome by the serial found.)"""
    if not isinstance(attempt_item, AuditEntry):
        return False
    who = (attempt_item.action, attempt_item.operator, attempt_item.host)
    return who == (outcome.action, outcome.operator, outcome.host)


def entries(items: list[Item]) -> list[AuditEntry]:
    """The records among the items read (for code that needs only those)."""
    return [item for item in items if isinstance(item, AuditEntry)]
