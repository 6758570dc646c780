"""Where the audit trail goes besides the local file: the sinks a bank already runs.

Configured as `[audit] sinks = ["file", "syslog", "postgresql://…"]` in the settings file, or by the environment
variable KAZTOKEN_HELPDESK_AUDIT_SINKS (comma-separated), which overrides it. Names:

- `file`: the local JSONL (core.audit). Always written first, whatever the list says: it is the spool every other
  sink is delivered from (core.delivery), so it is never "sent" anywhere itself.
- `syslog`: RFC 5424 to the local syslog socket (/dev/log); `syslog+unix:///path` another datagram socket;
  `syslog+tcp://host:port` a receiver over TCP (RFC 6587 octet counting).
- `journald`: systemd's journal, through its native socket, each field of the record a journal field.
- `postgresql://…` (or `postgres://…`): the shared table (core.audit_pg). Credentials come the libpq way
  (PGPASSFILE, ~/.pgpass, a service file, PGSERVICE): a password in the settings is refused.

A sink's `send` delivers a batch or raises SinkDown with the reason; it never decides what was delivered before
(core.delivery does, from its offsets). Everything a sink sends is built from the record's checked fields.
"""

from __future__ import annotations

import json
import os
import re
import socket
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from core.audit import ATTEMPT, AuditEntry
from core.config import APP_NAME, Config
from core.i18n import N_, Text
from core.untrusted import visible

SINKS_ENV = "KAZTOKEN_HELPDESK_AUDIT_SINKS"
FILE = "file"
DEV_LOG = "/dev/log"
JOURNAL_SOCKET = "/run/systemd/journal/socket"
TIMEOUT = 5.0  # seconds for a remote sink to connect or answer: delivery runs off the action, but must end


@dataclass(frozen=True, slots=True)
class Record:
    """One record of the spool, ready for a sink: its key (`id`, `kind`) says what "stored once" means."""

    id: str  # the record's id; for an old line without one, a digest of the line (stable across retries)
    kind: str  # attempt or outcome: an action's two records share the id
    entry: AuditEntry
    end: int  # the spool offset just past its line: delivered up to here once this record is

    @property
    def data(self) -> dict[str, Any]:
        """The record as the local file holds it (the same fields, the same values)."""
        return {**self.entry.to_dict(), "id": self.id}


class SinkDown(Exception):
    """The sink could not take the batch now; delivery retries later from the spool. The message is the OS's or
    the server's word for it (shown through visible()), never a record's content. `sent`: how many of the batch's
    first records the sink is known to have (a datagram socket knows; a TCP stream or a transaction does not)."""

    def __init__(self, reason: str, *, sent: int = 0) -> None:
        super().__init__(reason)
        self.sent = sent


class SinkConfigError(ValueError):
    """A sink name that cannot be used, said why (a Text, translated when shown)."""

    def __init__(self, name: str, why: str) -> None:
        name = redacted(name)  # said on screen and in JSON: a password typed into the settings goes no further
        super().__init__(f"{name}: {why}")
        self.name = name
        self.text = Text(why)


def redacted(name: str) -> str:
    """`name` with any password in it (`user:secret@`, `password=secret`) as `***`."""
    name = re.sub(r"(//[^/@:]*:)[^/@]*@", r"\1***@", name)
    return re.sub(r"(?i)(password\s*=\s*)('[^']*'|[^&\s]*)", r"\1***", name)


class Sink(Protocol):
    @property
    def name(self) -> str: ...  # read-only: the sinks are frozen dataclasses

    def send(self, records: Sequence[Record]) -> None: ...


def sink_names(config: Config, environ: Mapping[str, str] | None = None) -> list[str]:
    """The configured names, the environment's first; `file` is implied (it is the spool)."""
    environ = os.environ if environ is None else environ
    explicit = environ.get(SINKS_ENV, "").strip()
    names = [name.strip() for name in explicit.split(",")] if explicit else list(config.audit_sinks)
    unique: list[str] = []
    for name in names:
        if name and name not in unique:
            unique.append(name)
    return unique


def remote_sinks(names: Sequence[str]) -> tuple[list[Sink], list[SinkConfigError]]:
    """The sinks to deliver to (every name but `file`), and the names that cannot be used, each with why."""
    sinks: list[Sink] = []
    problems: list[SinkConfigError] = []
    for name in names:
        if name == FILE:
            continue
        try:
            sinks.append(parse_sink(name))
        except SinkConfigError as error:
            problems.append(error)
    return sinks, problems


def parse_sink(name: str) -> Sink:
    if name == "syslog":
        return SyslogUnix(name, DEV_LOG)
    if name == "journald":
        return Journald(name, JOURNAL_SOCKET)
    scheme = name.split(":", 1)[0].lower()
    if scheme in ("postgresql", "postgres"):
        try:
            from core.audit_pg import PostgresSink

            return PostgresSink.from_name(name)
        except ImportError:  # an install without psycopg: said where sinks are shown, never a crash of the console
            raise SinkConfigError(name, N_("psycopg (PostgreSQL's client for Python) is not installed")) from None
    if scheme == "syslog+unix":
        path = urlsplit(name).path
        if not path.startswith("/"):
            raise SinkConfigError(name, N_("a syslog socket is named by its full path: syslog+unix:///run/x.sock"))
        return SyslogUnix(name, path)
    if scheme == "syslog+tcp":
        parts = urlsplit(name)
        try:
            port = parts.port
        except ValueError:
            port = None
        if not parts.hostname or port is None:
            raise SinkConfigError(name, N_("a syslog receiver is named by host and port: syslog+tcp://host:514"))
        return SyslogTcp(name, parts.hostname, port)
    raise SinkConfigError(
        name, N_("not a sink: file, syslog, syslog+unix:///path, syslog+tcp://host:port, journald, postgresql://…")
    )


# --- syslog (RFC 5424) -----------------------------------------------------------------------------------------

FACILITY_AUTHPRIV = 10  # security/authorisation messages: where a SIEM looks, and kept from world-readable logs
SD_ID = "kaztoken@32473"  # a private structured-data id needs an enterprise number; 32473 is the documentation one
_SEVERITY_INFO, _SEVERITY_NOTICE, _SEVERITY_WARNING = 6, 5, 4


def _severity(record: Record) -> int:
    if record.kind == ATTEMPT:
        return _SEVERITY_INFO
    return _SEVERITY_NOTICE if record.entry.outcome == "done" else _SEVERITY_WARNING


def _header_field(value: str, limit: int) -> str:
    """A header field is printable US-ASCII without spaces (RFC 5424 §6); anything else becomes `_`."""
    cleaned = "".join(char if "!" <= char <= "~" else "_" for char in value)[:limit]
    return cleaned or "-"


def _sd_value(value: object) -> str:
    """A structured-data value: visible() (no control character reaches a log viewer), then RFC 5424's escapes."""
    if isinstance(value, list | tuple):
        value = ",".join(map(str, value))
    text = visible("" if value is None else value)
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def rfc5424(record: Record) -> bytes:
    """`<PRI>1 TIME HOST APP - KIND [kaztoken@32473 field="value" …] {record as JSON}`.

    The structured data holds every field for the SIEM's parser; the message is the record as JSON, pure ASCII
    (every other character escaped), exactly the local line's data, for a pipeline that wants it whole."""
    data = record.data
    params = " ".join(f'{name}="{_sd_value(value)}"' for name, value in sorted(data.items()) if value is not None)
    header = " ".join(
        (
            f"<{FACILITY_AUTHPRIV * 8 + _severity(record)}>1",
            _header_field(record.entry.time, 48),
            _header_field(record.entry.host, 255),
            APP_NAME,
            str(os.getpid()),
            _header_field(record.kind, 32),
        )
    )
    message = json.dumps(data, ensure_ascii=True, sort_keys=True)
    return f"{header} [{SD_ID} {params}] {message}".encode("utf-8", "backslashreplace")  # SD values may be Cyrillic


def send_datagrams(path: str, datagrams: Iterable[bytes]) -> None:
    """One datagram a record to a local socket. A local datagram is queued at the receiver or refused at once, so
    the ones sent before a failure are delivered: SinkDown says how many, and they are not sent again."""
    sent = 0
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(TIMEOUT)
            sock.connect(path)
            for datagram in datagrams:
                sock.send(datagram)
                sent += 1
    except OSError as error:
        raise SinkDown(error.strerror or type(error).__name__, sent=sent) from None


@dataclass(frozen=True, slots=True)
class SyslogUnix:
    """The local syslog daemon's datagram socket (rsyslog's imuxsock, journald's /dev/log): one record a datagram."""

    name: str
    path: str

    def send(self, records: Sequence[Record]) -> None:
        send_datagrams(self.path, map(rfc5424, records))


@dataclass(frozen=True, slots=True)
class SyslogTcp:
    """A syslog receiver over TCP, octet-counted (RFC 6587 §3.4.1): a record may hold any byte.

    TCP says nothing of what the receiver read before it died, so a batch counts as delivered only when the
    receiver, after our end of the stream, closes its own: it has read every byte before our FIN."""

    name: str
    host: str
    port: int

    def send(self, records: Sequence[Record]) -> None:
        frames = b"".join(b"%d %s" % (len(message), message) for message in map(rfc5424, records))
        try:
            with socket.create_connection((self.host, self.port), timeout=TIMEOUT) as sock:
                sock.sendall(frames)
                sock.shutdown(socket.SHUT_WR)
                while sock.recv(4096):  # a receiver says nothing back; EOF is its "read it all"
                    pass
        except OSError as error:
            raise SinkDown(error.strerror or type(error).__name__) from None


# --- journald (native protocol) --------------------------------------------------------------------------------


def journal_fields(record: Record) -> dict[str, str]:
    """The record as journal fields: KAZTOKEN_<FIELD>, with MESSAGE, PRIORITY and SYSLOG_IDENTIFIER for journalctl."""
    entry = record.entry
    summary = f"{entry.action} {entry.outcome or 'attempt'} serial={entry.serial} by {entry.operator}@{entry.host}"
    fields = {
        "MESSAGE": visible(summary),
        "PRIORITY": str(_severity(record)),
        "SYSLOG_FACILITY": str(FACILITY_AUTHPRIV),
        "SYSLOG_IDENTIFIER": APP_NAME,
    }
    for name, value in sorted(record.data.items()):
        if value is None:
            continue
        fields[f"KAZTOKEN_{name.upper()}"] = ",".join(value) if isinstance(value, list) else str(value)
    return fields


def journal_datagram(fields: Mapping[str, str]) -> bytes:
    """systemd's native protocol, every field in its binary-safe form: NAME, newline, length (64-bit little
    endian), value, newline. A label with a newline stays one field."""
    out = bytearray()
    for name, value in fields.items():
        data = value.encode("utf-8", "backslashreplace")
        out += name.encode("ascii") + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
    return bytes(out)


@dataclass(frozen=True, slots=True)
class Journald:
    name: str
    path: str

    def send(self, records: Sequence[Record]) -> None:
        send_datagrams(self.path, (journal_datagram(journal_fields(record)) for record in records))
