"""One operator per token: an action holds the token's lock, and a second console or CLI call is refused.

The lock is an flock on a file named after the token's serial, so the kernel lets it go when the holder dies
(no stale locks after a crash or a dropped SSH link). The file carries who holds it, for the refusal message.

Why not platformdirs: its runtime dir is per user, and two operators on one branch terminal may be two OS
users acting on the one USB token. The lock directory is machine-wide, in the system temp dir.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import socket
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from core.audit import operator
from core.i18n import _
from core.untrusted import visible

LOCK_DIR_ENV = "KAZTOKEN_HELPDESK_LOCK_DIR"


def lock_dir() -> Path:
    return Path(os.environ.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / "kaztoken-helpdesk-locks")


@dataclass(frozen=True, slots=True)
class Holder:
    operator: str
    host: str
    pid: int
    action: str
    since: str

    def describe(self) -> str:
        """Who holds the lock, for a refusal. Every field comes from a file another user may have written."""
        fields = ("operator", "host", "pid", "action", "since")
        return _("{operator}@{host} (pid {pid}, {action}, since {since})").format(
            **{name: visible(getattr(self, name)) for name in fields}
        )


class TokenBusy(Exception):
    """Another operator is acting on this token."""

    def __init__(self, serial: str, holder: Holder | None) -> None:
        who = holder.describe() if holder else "another process"
        super().__init__(f"token {serial} is in use by {who}")
        self.serial = serial
        self.holder = holder


@dataclass(slots=True)
class _Held:
    fd: int
    count: int


# flock belongs to an open file: a second open() in this process would conflict with our own lock. The
# console takes the lock when an action screen opens and the operation takes it again, so it is re-entrant.
_held: dict[str, _Held] = {}
_guard = threading.Lock()


def _file(serial: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", serial) or "no-serial"
    return lock_dir() / f"{safe}.lock"


def _read_holder(fd: int) -> Holder | None:
    with contextlib.suppress(OSError, ValueError, TypeError):
        os.lseek(fd, 0, os.SEEK_SET)
        return Holder(**json.loads(os.read(fd, 4096).decode("utf-8")))
    return None


def acquire(serial: str, action: str) -> None:
    """Take the token's lock or raise TokenBusy naming the holder."""
    with _guard:
        held = _held.get(serial)
        if held is not None:
            held.count += 1
            return
        directory = lock_dir()
        directory.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):  # shared by every user of the machine; sticky like /tmp
            directory.chmod(0o1777)
        fd = os.open(_file(serial), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise TokenBusy(serial, holder) from None
        holder = Holder(
            operator(), socket.gethostname(), os.getpid(), action, datetime.now(UTC).isoformat(timespec="seconds")
        )
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(asdict(holder)).encode(), 0)
        _held[serial] = _Held(fd, 1)


def release(serial: str) -> None:
    with _guard:
        held = _held.get(serial)
        if held is None:
            return
        held.count -= 1
        if held.count:
            return
        del _held[serial]
        with contextlib.suppress(OSError):
            os.ftruncate(held.fd, 0)
        os.close(held.fd)  # closing the file drops the flock


@contextlib.contextmanager
def holding(serial: str, action: str) -> Iterator[None]:
    acquire(serial, action)
    try:
        yield
    finally:
        release(serial)
