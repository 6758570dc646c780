"""openCryptoki's software token for tests: the one stack on this machine that really counts and locks PIN tries.

There is one such token per machine (slot 3 of the openCryptoki library), its state split between
/var/lib/opencryptoki/swtok, a /dev/shm segment and the `pkcsslotd` daemon. Tests put it into a state with
OpenSC's `pkcs11-tool` (the same independent tool a helpdesk engineer would use) and read its flags back with
`pkcs11-tool -L`, so the scan under test is never its own witness.

Measured on openCryptoki 3.8.1 (Debian 12): three tries for each PIN; C_InitPIN works with the default SO PIN;
C_InitPIN clears USER_PIN_LOCKED (and USER_PIN_TO_BE_CHANGED) but not USER_PIN_COUNT_LOW; a user login before
C_InitPIN answers CKR_USER_PIN_NOT_INITIALIZED and spends no try; C_SetPIN refuses the default PINs.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pkcs11

from core.lab import OCK_LOCK, flock_held_here, flock_within

OCK_MODULE = "/usr/lib/x86_64-linux-gnu/pkcs11/libopencryptoki.so"
OCK_SLOT = 3  # the software token (libpkcs11_sw.so) in Debian's /etc/opencryptoki/opencryptoki.conf
PKCSSLOTD = "/usr/sbin/pkcsslotd"
PIDFILE = Path("/run/pkcsslotd.pid")  # the unit file says /var/run/pkcsslotd.pid: the same file on Debian
SWTOK = Path("/var/lib/opencryptoki/swtok")
LOCKS = Path("/var/lock/opencryptoki")
SHM = Path("/dev/shm")
GROUP = "pkcs11"

DEFAULT_SO_PIN = "87654321"  # what C_InitToken is given, and what SO_PIN_TO_BE_CHANGED asks to replace
SO_PIN = "11223344"  # the SO PIN after the change; openCryptoki refuses to change back to the default
USER_PIN = "12345678"
NEW_USER_PIN = "23456789"
WRONG_PIN = "0000"  # within openCryptoki's 4..8, so the token compares it (and counts it) instead of refusing it
LABEL = "IVANOV"

# The tests of every pytest run on this machine share the one token, and the lab takes the same lock (core.lab).
RUN_LOCK = OCK_LOCK


class OckError(RuntimeError):
    """The token or its daemon did not do what a helper asked."""


def unavailable_reason() -> str | None:
    """Why the openCryptoki tests cannot run here, or None when they can (pkcsslotd is checked by starting it)."""
    if not os.path.exists(OCK_MODULE):
        return f"openCryptoki is not installed ({OCK_MODULE} missing; Debian package opencryptoki)"
    if not os.path.exists(PKCSSLOTD):
        return f"openCryptoki's slot daemon {PKCSSLOTD} is missing"
    if shutil.which("pkcs11-tool") is None:
        return "OpenSC's pkcs11-tool is missing (Debian package opensc)"
    if os.geteuid() != 0:
        return "a factory reset of openCryptoki's soft token needs root (it restarts pkcsslotd and removes its files)"
    return None


def run(*args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, check=False, timeout=timeout)
    if check and result.returncode != 0:
        raise OckError(
            f"{' '.join(args)} failed ({result.returncode}): {result.stderr.strip() or result.stdout.strip()}"
        )
    return result


def tool(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """OpenSC's pkcs11-tool on the soft token."""
    return run("pkcs11-tool", "--module", OCK_MODULE, "--slot", str(OCK_SLOT), *args, check=check)


# --- the daemon ------------------------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    """Running, and not a zombie (a stopped daemon that nobody has reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _our_daemons() -> set[int]:
    """The pkcsslotd serving this file system: the one in its pid file, plus any other started from the same
    binary under the same root (a daemon started twice, or while the pid file was stale). A pkcsslotd left by
    a chroot (another root) serves other files and is not ours to stop."""
    pids: set[int] = set()
    with contextlib.suppress(OSError, ValueError):
        pids.add(int(PIDFILE.read_text().split()[0]))
    root = os.stat("/")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            same_root = os.path.samestat(os.stat(entry / "root"), root)
            if same_root and os.readlink(entry / "exe") == PKCSSLOTD:
                pids.add(int(entry.name))
    return {pid for pid in pids if _alive(pid) and _is_pkcsslotd(pid)}


def _is_pkcsslotd(pid: int) -> bool:
    try:
        return os.readlink(f"/proc/{pid}/exe") == PKCSSLOTD
    except OSError:
        return False


def stop_pkcsslotd(timeout: float = 15) -> None:
    targets = _our_daemons()
    for pid in targets:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while left := _our_daemons():
        if time.monotonic() > deadline:
            raise OckError(f"pkcsslotd (pid {', '.join(map(str, sorted(left)))}) did not stop within {timeout:.0f} s")
        time.sleep(0.02)
    for pid in targets:
        # Reap the daemons start_pkcsslotd adopted (now zombies); one started elsewhere is not our child.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37


@contextlib.contextmanager
def _adopting_orphans() -> Iterator[None]:
    """Make the daemon that pkcsslotd forks off our child rather than PID 1's while it starts.

    PID 1 of a container often never reaps (this machine's reaps late), so each daemon a reset stops would stay
    a zombie; adopted, stop_pkcsslotd reaps it. Only for the length of the start, so that nothing else
    this test process runs is affected.
    """
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # variadic: every argument passed as a full unsigned long
    before = ctypes.c_int(0)
    zero = ctypes.c_ulong(0)
    prctl(ctypes.c_int(_PR_GET_CHILD_SUBREAPER), ctypes.byref(before), zero, zero, zero)
    prctl(ctypes.c_int(_PR_SET_CHILD_SUBREAPER), ctypes.c_ulong(1), zero, zero, zero)
    try:
        yield
    finally:
        prctl(ctypes.c_int(_PR_SET_CHILD_SUBREAPER), ctypes.c_ulong(before.value), zero, zero, zero)


def start_pkcsslotd(timeout: float = 15) -> None:
    """Start the daemon and wait until a client gets the soft token's slot from it."""
    # Not a pipe for its output: a daemon that kept one open would make subprocess wait for it forever.
    with tempfile.TemporaryFile("w+") as errors, _adopting_orphans():
        started = subprocess.run(
            [PKCSSLOTD], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors, timeout=timeout
        )
        errors.seek(0)
        message = errors.read().strip()
    if started.returncode != 0:
        raise OckError(f"{PKCSSLOTD} exited with {started.returncode}: {message}")
    deadline = time.monotonic() + timeout
    while True:
        answer = run("pkcs11-tool", "--module", OCK_MODULE, "-L", check=False)
        if answer.returncode == 0 and f"(0x{OCK_SLOT:x})" in answer.stdout:
            return
        if time.monotonic() > deadline:
            raise OckError(f"pkcsslotd started but slot {OCK_SLOT} does not answer: {answer.stderr.strip()} {message}")
        time.sleep(0.05)


def _group_dir(path: Path) -> None:
    """A directory the way openCryptoki's tmpfiles.d makes it: root:pkcs11, 0770."""
    path.mkdir(parents=True, exist_ok=True)
    shutil.chown(path, group=GROUP)
    path.chmod(0o770)


def finalize_in_process() -> None:
    """Forget this process's view of the token before a reset.

    python-pkcs11 keeps each library loaded per path (`pkcs11._loaded`) and core.scan reuses it. openCryptoki
    maps the token's /dev/shm segment at C_Initialize and keeps that mapping: after a reset (segment removed,
    daemon restarted) an initialised library would go on showing the old token. Between resets no finalize is
    needed: flags live in that shared segment, so changes made by pkcs11-tool processes show in the next scan.
    The next `pkcs11.lib()` (every scan makes one) initialises the library again.
    """
    lib = pkcs11._loaded.get(OCK_MODULE)
    if lib is not None:
        with contextlib.suppress(pkcs11.PKCS11Error):
            lib.finalize()


def factory_reset() -> None:
    """Back to an uninitialised token, as after installing the package: stop pkcsslotd, remove the token's
    files and shared memory, start pkcsslotd again. The only way back from a locked SO PIN (C_InitToken then
    answers CKR_PIN_LOCKED)."""
    finalize_in_process()
    stop_pkcsslotd()
    for name in ("NVTOK.DAT", "MK_SO", "MK_USER"):
        (SWTOK / name).unlink(missing_ok=True)
    objects = SWTOK / "TOK_OBJ"
    if objects.is_dir():
        for item in objects.iterdir():
            item.unlink()
    for segment in SHM.glob("*opencryptoki*swtok*"):
        segment.unlink(missing_ok=True)
    # /var/lock is a tmpfs on a booted Debian: the lock directories vanish with every reboot.
    for directory in (SWTOK, objects, LOCKS, LOCKS / "swtok"):
        _group_dir(directory)
    start_pkcsslotd()


# openCryptoki 3.8 closes, at every C_Finalize after the first in a process, the descriptor number its API lock
# file had, whoever holds that number by then (see core/lab/). This process initialises and finalises it
# many times, so the run lock lives far above the numbers open() hands out, where that stray close never lands.
_HIGH_FD = 1000


@contextlib.contextmanager
def exclusive(timeout: float = 300) -> Iterator[None]:
    """Hold the machine's soft token for this test run; another run waits (the token is one per machine)."""
    opened = os.open(RUN_LOCK, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    handle = fcntl.fcntl(opened, fcntl.F_DUPFD_CLOEXEC, _HIGH_FD)
    os.close(opened)
    try:
        if not flock_within(handle, timeout, step=0.2):
            raise OckError(f"another test run has held {RUN_LOCK} for {timeout:.0f} s")
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    finally:
        os.close(handle)


def held_by_this_process() -> bool:
    """Whether this process already holds RUN_LOCK through `exclusive()` (another test module's fixture took it):
    an flock belongs to an open file, so a second `exclusive()` here would wait for this process itself."""
    return flock_held_here(RUN_LOCK)


@contextlib.contextmanager
def exclusive_here(timeout: float = 300) -> Iterator[None]:
    """`exclusive()`, or nothing more if this process already holds it: lets a module-scoped fixture nest
    inside another test file's session-scoped one, in whatever order pytest runs the files."""
    if held_by_this_process():
        yield
        return
    with exclusive(timeout):
        yield


# --- the token's state -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Listed:
    """Slot 3 as `pkcs11-tool -L` prints it: the independent view of the token's state."""

    text: str

    @property
    def initialised(self) -> bool:
        return not re.search(r"token state:\s+uninitialized", self.text)

    @property
    def flags(self) -> frozenset[str]:
        """pkcs11-tool's names: "user PIN count low", "final user PIN try", "SO PIN locked", ... An uninitialised
        token is listed without flags."""
        line = re.search(r"token flags\s*:\s*(.*)", self.text)
        return frozenset(flag.strip() for flag in line.group(1).split(",")) if line else frozenset()


def listed() -> Listed:
    out = run("pkcs11-tool", "--module", OCK_MODULE, "-L").stdout
    for block in re.split(r"^Slot ", out, flags=re.M)[1:]:
        slot = re.match(r"\d+ \(0x([0-9a-f]+)\)", block)
        if slot and int(slot.group(1), 16) == OCK_SLOT:
            return Listed(block)
    raise OckError(f"pkcs11-tool -L does not list slot {OCK_SLOT}:\n{out}")


def _rv(result: subprocess.CompletedProcess[str]) -> str:
    """CKR_OK, or the CKR_ name pkcs11-tool reports for the call that failed."""
    if result.returncode == 0:
        return "CKR_OK"
    found = re.search(r"rv = (CKR_\w+)", result.stderr)
    if not found:
        raise OckError(f"pkcs11-tool failed without a PKCS#11 error: {result.stderr.strip()}")
    return found.group(1)


def init_token(label: str = LABEL, so_pin: str = DEFAULT_SO_PIN) -> None:
    """C_InitToken: afterwards USER_PIN_TO_BE_CHANGED|SO_PIN_TO_BE_CHANGED and no user PIN."""
    tool("--init-token", "--label", label, "--so-pin", so_pin)


def change_so_pin(old: str = DEFAULT_SO_PIN, new: str = SO_PIN) -> None:
    tool("--login", "--login-type", "so", "--so-pin", old, "--change-pin", "--new-pin", new)


def init_user_pin(pin: str = USER_PIN, so_pin: str = SO_PIN) -> None:
    """SO login + C_InitPIN: sets the user PIN the first time, and is the unblock of a locked one."""
    tool("--login", "--login-type", "so", "--so-pin", so_pin, "--init-pin", "--pin", pin)


def personalise() -> None:
    """What a healthy customer token looks like: initialised, SO PIN changed, user PIN set."""
    init_token()
    change_so_pin()
    init_user_pin()


def user_login(pin: str) -> str:
    """One user login (then a harmless object listing); the token's answer to C_Login."""
    return _rv(tool("--login", "--pin", pin, "--list-objects", check=False))


def so_login(pin: str) -> str:
    """One SO login (then a harmless object listing); the token's answer to C_Login. openCryptoki refuses an SO
    login while a read-only session is open, and a listing opens one unless asked for read-write."""
    return _rv(tool("--session-rw", "--login", "--login-type", "so", "--so-pin", pin, "--list-objects", check=False))


def spend_user_tries(count: int) -> None:
    for _ in range(count):
        if (answer := user_login(WRONG_PIN)) != "CKR_PIN_INCORRECT":
            raise OckError(f"a wrong user PIN was answered with {answer}, not CKR_PIN_INCORRECT: no try was spent")


def spend_so_tries(count: int) -> None:
    for _ in range(count):
        if (answer := so_login(WRONG_PIN)) != "CKR_PIN_INCORRECT":
            raise OckError(f"a wrong SO PIN was answered with {answer}, not CKR_PIN_INCORRECT: no try was spent")
