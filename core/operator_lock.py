"""One operator per token: an action holds the token's lock, and a second console or CLI call is refused.

The lock is an flock on a file named after the token's serial, so the kernel lets it go when the holder dies
(no stale locks after a crash or a dropped SSH link). The file carries who holds it, for the refusal message.

Why not platformdirs: its runtime dir is per user, and two operators on one branch terminal may be two OS
users acting on the one USB token. So the lock files live in the system temp dir itself (root's, sticky), named
`kaztoken-helpdesk-<serial>.lock`, each readable and writable by every user. Not in a directory of their own
there: the first user to create one would own it, and the next users would have to trust a directory that
user controls (empty it, swap a lock file for a link to their own file), or be locked out.

The directory is hostile ground: it is opened without following a link and checked (owned by root or by us;
if others may write to it, sticky, so no one can remove or swap our files); the files are opened relative to
that open directory, never through a link, and must be regular files. Nothing is ever chmod-ed by path.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import socket
import stat
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from core.audit import operator
from core.i18n import N_, Text, _
from core.untrusted import visible

LOCK_DIR_ENV = "KAZTOKEN_HELPDESK_LOCK_DIR"
PREFIX = "kaztoken-helpdesk-"
MAX_HOLDER = 4096  # bytes of holder info read back; the file is anyone's to write
MAX_FIELD = 200  # characters kept of each holder field


def lock_dir() -> Path:
    return Path(os.environ.get(LOCK_DIR_ENV) or tempfile.gettempdir())


@dataclass(frozen=True, slots=True)
class Holder:
    operator: str
    host: str
    pid: int | str  # a str only when read back from a file that held no number there
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


class LockError(OSError):
    """The lock cannot be taken safely (a link, another user's directory or file, …). An OSError, so a caller
    that reports OS errors says it; `text` is the message in the user's language."""

    def __init__(self, text: Text, code: int = errno.EPERM) -> None:
        super().__init__(code, str(text))
        self.text = text


@dataclass(slots=True)
class _Held:
    fd: int
    count: int
    writable: bool


# flock belongs to an open file: a second open() in this process would conflict with our own lock. The
# console takes the lock when an action screen opens and the operation takes it again, so it is re-entrant.
_held: dict[str, _Held] = {}
_guard = threading.Lock()


def file_name(serial: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", serial)[:64] or "no-serial"
    return f"{PREFIX}{safe}.lock"


def _open_directory() -> int:
    """The lock directory, opened without following a link and checked; created (ours) if it does not exist."""
    path = lock_dir()
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    created = False
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        try:
            os.mkdir(path, 0o700)  # only ours until checked below, then opened to every user
            created = True
        except FileExistsError:
            pass
        except OSError as error:
            raise _unusable(path, error) from None
        try:
            fd = os.open(path, flags)
        except OSError as error:
            raise _directory_error(path, error) from None
    except OSError as error:
        raise _directory_error(path, error) from None
    try:
        info = os.fstat(fd)
        if info.st_uid not in (0, os.geteuid()):
            raise LockError(
                Text(
                    N_(
                        "The lock directory {path} belongs to another user (uid {uid}): it is not safe to use. "
                        "Nothing was changed; ask the administrator to remove it."
                    ),
                    {"path": str(path), "uid": info.st_uid},
                )
            )
        if created:
            os.fchmod(fd, 0o1777)  # through the descriptor of the directory just made: every user's, sticky
            info = os.fstat(fd)
        others_write = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        if others_write and not info.st_mode & stat.S_ISVTX:
            raise LockError(
                Text(
                    N_(
                        "The lock directory {path} can be written by other users and is not sticky: they could "
                        "remove or replace the locks. Nothing was changed; ask the administrator to fix it."
                    ),
                    {"path": str(path)},
                )
            )
    except BaseException:
        os.close(fd)
        raise
    return fd


def _directory_error(path: Path, error: OSError) -> LockError:
    if error.errno in (errno.ELOOP, errno.ENOTDIR):
        return LockError(
            Text(
                N_(
                    "The lock directory {path} is a symbolic link or not a directory: it is not safe to use. "
                    "Nothing was changed; ask the administrator to remove it."
                ),
                {"path": str(path)},
            ),
            error.errno,
        )
    return _unusable(path, error)


def _unusable(path: Path, error: OSError) -> LockError:
    return LockError(
        Text(
            N_("Cannot use the lock {path}: {reason}. Nothing was changed."),
            {"path": str(path), "reason": error.strerror or type(error).__name__},
        ),
        error.errno or errno.EIO,
    )


def _open_file(directory: int, name: str, shown: Path) -> tuple[int, bool]:
    """The lock file (fd, writable), never through a link; created readable and writable by every user.

    An existing file is opened without O_CREAT: with fs.protected_regular, O_CREAT on another user's file in a
    sticky directory is refused even when its mode lets us write. A file we may only read (another user's 0644,
    as older versions left them) still takes an flock; its holder line is then left as it is."""
    base = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
    for _attempt in range(5):  # a file removed or created by another process between two calls
        for mode, writable in ((os.O_RDWR, True), (os.O_RDONLY, False)):
            try:
                fd = os.open(name, base | mode, dir_fd=directory)
            except PermissionError:
                continue
            except FileNotFoundError:
                break
            except OSError as error:
                raise _file_error(shown, error) from None
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                raise _file_error(shown, OSError(errno.EINVAL, os.strerror(errno.EINVAL)))
            return fd, writable
        else:
            raise _file_error(shown, OSError(errno.EACCES, os.strerror(errno.EACCES)))
        try:
            fd = os.open(name, base | os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666, dir_fd=directory)
        except FileExistsError:
            continue
        except OSError as error:
            raise _file_error(shown, error) from None
        os.fchmod(fd, 0o666)  # the umask took bits away; the next OS user at this terminal needs them
        return fd, True
    raise _file_error(shown, OSError(errno.EAGAIN, os.strerror(errno.EAGAIN)))


def _file_error(path: Path, error: OSError) -> LockError:
    if error.errno == errno.ELOOP:
        error = OSError(errno.ELOOP, "a symbolic link")
    return _unusable(path, error)


def _field(value: object) -> str:
    return value[:MAX_FIELD] if isinstance(value, str) else "?"


def _read_holder(fd: int) -> Holder | None:
    """Who holds the lock, as the file says: anyone can write it, so it is parsed defensively and kept short
    (what is shown of it is still to be made safe for the screen where it is shown)."""
    try:
        data = json.loads(os.pread(fd, MAX_HOLDER, 0).decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    pid = data.get("pid")
    return Holder(
        operator=_field(data.get("operator")),
        host=_field(data.get("host")),
        pid=pid if type(pid) is int else _field(pid),
        action=_field(data.get("action")),
        since=_field(data.get("since")),
    )


def acquire(serial: str, action: str) -> None:
    """Take the token's lock or raise TokenBusy naming the holder (LockError if it cannot be taken safely)."""
    with _guard:
        held = _held.get(serial)
        if held is not None:
            held.count += 1
            return
        name = file_name(serial)
        directory = _open_directory()
        try:
            fd, writable = _open_file(directory, name, lock_dir() / name)
        finally:
            os.close(directory)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise TokenBusy(serial, holder) from None
        except OSError as error:
            os.close(fd)
            raise _unusable(lock_dir() / name, error) from None
        if writable:
            since = datetime.now(UTC).isoformat(timespec="seconds")
            holder = Holder(operator(), socket.gethostname(), os.getpid(), action, since)
            with contextlib.suppress(OSError):  # the lock is what matters; the note is a courtesy
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps(asdict(holder)).encode(), 0)
        _held[serial] = _Held(fd, 1, writable)


def release(serial: str) -> None:
    with _guard:
        held = _held.get(serial)
        if held is None:
            return
        held.count -= 1
        if held.count:
            return
        del _held[serial]
        if held.writable:
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
