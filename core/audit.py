"""The audit trail: one JSON line per attempted action on a token, appended and flushed to disk.

Who did what to which token, and what state it was in before and after. Entries are built from fixed fields
only, so no PIN can reach the file: there is no free-text field an operation could pass one through.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import socket
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import platformdirs

from core.config import APP_NAME

AUDIT_ENV = "KAZTOKEN_HELPDESK_AUDIT"  # a shared path for a branch's consoles; else the user log dir


def audit_path() -> Path:
    explicit = os.environ.get(AUDIT_ENV)
    if explicit:
        return Path(explicit)
    return platformdirs.user_log_path(APP_NAME) / "audit.jsonl"


def operator() -> str:
    with contextlib.suppress(Exception):  # no passwd entry in some containers
        return getpass.getuser()
    return str(os.getuid())


@dataclass(frozen=True, slots=True)
class AuditEntry:
    action: str  # personalise, change-pin, unblock, format, …
    outcome: str  # core.actions.Outcome value
    serial: str
    label: str
    module: str
    role: str | None = None  # whose PIN the action used: "user" or "admin"
    reason: str | None = None  # a stable code (wrong-pin, policy, …), never a message with user input
    findings_before: tuple[str, ...] = ()
    findings_after: tuple[str, ...] = ()
    pin_before: str | None = None  # PIN status (ok, count-low, locked…), never the PIN
    pin_after: str | None = None
    tries_before: int | None = None
    tries_after: int | None = None
    time: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    operator: str = field(default_factory=operator)
    host: str = field(default_factory=socket.gethostname)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["findings_before"] = list(self.findings_before)
        data["findings_after"] = list(self.findings_after)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AuditEntry:
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        for name in ("findings_before", "findings_after"):
            known[name] = tuple(known.get(name) or ())
        return cls(**known)


def append(entry: AuditEntry, path: Path | None = None) -> Path:
    """Append one entry and push it to disk before returning: an action is on record even if the machine dies."""
    path = path or audit_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(entry.to_dict(), ensure_ascii=False, sort_keys=True) + "\n"
    # O_APPEND: several consoles may write one file; each line lands whole.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def read(path: Path | None = None, *, limit: int | None = None) -> list[AuditEntry]:
    """The newest entries first. A damaged line (a disk that filled up mid-write) is skipped, not fatal."""
    path = path or audit_path()
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return []
    entries: list[AuditEntry] = []
    for line in reversed(lines):
        with contextlib.suppress(ValueError, TypeError):
            entries.append(AuditEntry.from_dict(json.loads(line)))
        if limit is not None and len(entries) >= limit:
            break
    return entries
