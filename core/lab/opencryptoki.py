"""The machine's openCryptoki soft token as a lab scenario: whether it can be used here, its state, the lock a
test run shares with the lab, and its factory reset (which restarts pkcsslotd, so needs root)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from pkcs11.exceptions import PKCS11Error

from core import session as sessions
from core.cryptoki import Cryptoki, CryptokiError
from core.flags import TokenFlag
from core.i18n import _
from core.lab.scenarios import (
    OCK_SLOT,
    PKCSSLOTD,
    LabError,
    OckReading,
)
from core.lab.tokens import describe

_PKCSSLOTD_PIDFILE = Path("/run/pkcsslotd.pid")
_SWTOK = Path("/var/lib/opencryptoki/swtok")
_OCK_LOCKS = Path("/var/lock/opencryptoki")
_OCK_GROUP = "pkcs11"


def static_reason(enabled: bool, module: str) -> str | None:
    """Why openCryptoki cannot be used here, from what can be seen without loading it."""
    if not enabled:
        return _("openCryptoki is switched off for this lab")
    if not os.path.exists(module):
        return _("openCryptoki is not installed (Debian package opencryptoki)")
    if not os.path.exists(PKCSSLOTD):
        return _("openCryptoki's slot daemon {path} is missing").format(path=PKCSSLOTD)
    if not _pkcsslotd_pids():
        return _("openCryptoki's slot daemon pkcsslotd is not running (start it as root, or run scripts/setup)")
    return None


def root_reason(enabled: bool, module: str) -> str | None:
    """Why this process cannot put openCryptoki's token into a scenario, or None."""
    reason = static_reason(enabled, module)
    if reason is None and os.geteuid() != 0:
        reason = _("needs root: the soft token is first reset to its factory state, which restarts pkcsslotd")
    return reason


def read(enabled: bool, module: str) -> OckReading:
    """The soft token's state, read in this process (which must not have a console driving it)."""
    reason = static_reason(enabled, module)
    if reason is not None:
        return OckReading(False, reason)
    try:
        lib = sessions.load(module)
        if OCK_SLOT not in sessions.slot_ids(lib):
            return OckReading(False, _("openCryptoki has no soft token in slot {slot}").format(slot=OCK_SLOT))
        info = Cryptoki(module).token_info(OCK_SLOT)
    except (PKCS11Error, OSError, CryptokiError) as error:
        return OckReading(False, _("openCryptoki does not answer: {error}").format(error=describe(error)))
    return OckReading(True, "", bool(info.flags & TokenFlag.TOKEN_INITIALIZED), info.label, info.flags)


@contextlib.contextmanager
def held(lock: Path | None, wait: float = 10) -> Iterator[None]:
    """The machine's soft token for this lab alone while it changes it (unless this process holds it)."""
    if lock is None or flock_held_here(lock):
        yield
        return
    with lock.open("a") as handle:
        if not flock_within(handle.fileno(), wait):
            raise LabError(
                _("openCryptoki's soft token is in use by a test run ({path}): try again later.").format(path=lock)
            )
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def flock_within(fd: int, seconds: float, step: float = 0.1) -> bool:
    """An exclusive flock on the open file `fd`, tried for `seconds`: False when another process keeps it that
    long (the lab, and the test runs that share the machine's one soft token)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() > deadline:
                return False
            time.sleep(step)


def flock_held_here(path: Path) -> bool:
    """Whether this process already holds an flock on `path` (a test fixture took it): a second flock from here
    would wait for this process itself. /proc/locks names the process that took each flock."""
    try:
        stat = path.stat()
        table = Path("/proc/locks").read_text()
    except OSError:
        return False
    where = f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}:{stat.st_ino}"
    for line in table.splitlines():
        fields = line.split()
        # "12: FLOCK  ADVISORY  WRITE 4711 00:1a:123 0 EOF"; a waiter has "->" after the number.
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[4] == str(os.getpid()) and fields[5] == where:
            return True
    return False


def _pkcsslotd_pids() -> set[int]:
    """Running pkcsslotd processes (zombies excluded), found through /proc without needing root."""
    pids: set[int] = set()
    with contextlib.suppress(OSError, ValueError):
        pids.add(int(_PKCSSLOTD_PIDFILE.read_text().split()[0]))
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == "pkcsslotd":
                    pids.add(int(entry.name))
    return {pid for pid in pids if _is_running_pkcsslotd(pid)}


def _is_running_pkcsslotd(pid: int) -> bool:
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return comm == "pkcsslotd" and state != "Z"


def _same_root(pid: int) -> bool:
    """A pkcsslotd of a chroot serves other files: not ours to stop."""
    try:
        return os.path.samestat(os.stat(f"/proc/{pid}/root"), os.stat("/"))
    except OSError:
        return False


def factory_reset(module: str, timeout: float = 5) -> None:
    """The soft token back to its factory state (uninitialised), as after installing the package: stop
    pkcsslotd, remove the token's files and shared memory, start pkcsslotd again. Needs root."""
    sessions.finalize_if_loaded(module)  # it maps the old token's shared memory until finalised
    targets = {pid for pid in _pkcsslotd_pids() if _same_root(pid)}
    for pid in targets:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while targets & _pkcsslotd_pids():
        if time.monotonic() > deadline:
            raise LabError(
                _(
                    "pkcsslotd did not stop within {seconds:.0f} s: another program (a console?) still uses "
                    "openCryptoki. Quit it and try again."
                ).format(seconds=timeout)
            )
        time.sleep(0.02)
    try:
        for name in ("NVTOK.DAT", "MK_SO", "MK_USER"):
            (_SWTOK / name).unlink(missing_ok=True)
        objects = _SWTOK / "TOK_OBJ"
        if objects.is_dir():
            for item in objects.iterdir():
                item.unlink()
        for segment in Path("/dev/shm").glob("*opencryptoki*swtok*"):
            segment.unlink(missing_ok=True)
        for directory in (_SWTOK, objects, _OCK_LOCKS, _OCK_LOCKS / "swtok"):
            directory.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(LookupError):
                shutil.chown(directory, group=_OCK_GROUP)
            directory.chmod(0o770)
    except OSError as error:
        raise LabError(_("openCryptoki's token files could not be reset: {error}").format(error=error)) from error
    with tempfile.TemporaryFile("w+") as errors:  # not a pipe: the daemon would keep it open
        started = subprocess.run(
            [PKCSSLOTD], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors, timeout=timeout
        )
        errors.seek(0)
        message = errors.read().strip()
    if started.returncode != 0:
        raise LabError(_("pkcsslotd did not start: {message}").format(message=message or started.returncode))
    deadline = time.monotonic() + timeout
    while True:
        try:
            lib = sessions.load(module)
            if OCK_SLOT in sessions.slot_ids(lib):
                return
            sessions.finalize(lib)
        except (PKCS11Error, CryptokiError):
            pass
        if time.monotonic() > deadline:
            raise LabError(_("pkcsslotd started but the soft token does not answer"))
        time.sleep(0.05)
