"""A private smart-card service for a test: pcscd with vpcd's two virtual readers, seen by nobody else.

pcsc-lite 1.9.9's daemon has its socket and pid file compiled in (/run/pcscd/pcscd.comm, pcscd.pid) and no
option or variable to move them; its clients (libpcsclite, so OpenSC and pkcs11-tool) read
PCSCLITE_CSOCK_NAME. So the daemon runs in a mount namespace of its own (`unshare --mount`, root) where the
test's directory is bind-mounted over /run: it makes `<tmp>/run/pcscd/pcscd.comm`, which the test's clients
are pointed to, and the machine's /run/pcscd (and any pcscd there) is never touched. Its readers come from a
reader.conf.d of the test's own (`pcscd -c DIR`): one vpcd entry on two free TCP ports (vpcd serves reader
N on port+N), instead of /etc/reader.conf.d's fixed 35963.

What stays shared: vpcd listens on every interface (its server mode has no bind address), on the free ports
picked here; and pcscd still watches the machine's USB bus, so a real reader plugged in during the test would
show up in it (CI machines have none).

OpenSC gets a configuration of its own (OPENSC_CONF): only its PIV driver, no file cache, so a card it cannot
read is given up on quickly instead of being probed by every driver on every call.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

OPENSC_MODULE = "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so"
PCSCD = "/usr/sbin/pcscd"
VPCD_DRIVER = "/usr/lib/pcsc/drivers/serial/libifdvpcd.so"
READERS = ("Virtual PCD 00 00", "Virtual PCD 00 01")
START_LIMIT = 20.0  # seconds for pcscd to come up: a bound on waiting, not a measurement

OPENSC_CONF = """\
app default {
    card_drivers = PIV-II;
    framework pkcs15 {
        use_file_caching = false;
    }
    pkcs11 {
        # How a PIV card is unblocked through PKCS#11: C_SetPIN(PUK, new PIN) before any login.
        user_pin_unblock_style = set_pin_in_unlogged_session;
    }
}
"""


def unavailable_reason() -> str | None:
    """Why these tests cannot run here, or None."""
    missing = [path for path in (PCSCD, VPCD_DRIVER, OPENSC_MODULE) if not Path(path).exists()]
    if missing:
        return f"missing {', '.join(missing)} (Debian packages pcscd, vsmartcard-vpcd, opensc)"
    if shutil.which("unshare") is None or shutil.which("pkcs11-tool") is None:
        return "unshare or pkcs11-tool not found"
    if os.geteuid() != 0:
        return "a private pcscd needs root (a mount namespace over /run)"
    return _namespace_refused()


@functools.cache
def _namespace_refused() -> str | None:
    """Root in a container may still be refused a mount namespace (no CAP_SYS_ADMIN): try one."""
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "true"], capture_output=True, text=True, timeout=30
    )
    return f"no mount namespace here: {done.stderr.strip()}" if done.returncode else None


def free_port_pair() -> int:
    """A port P with P and P+1 free (vpcd takes one per reader)."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("", 0))
            port = first.getsockname()[1]
        if _free(port, port + 1):
            return port
    raise RuntimeError("no two consecutive free TCP ports")


def _free(*ports: int) -> bool:
    for port in ports:
        with socket.socket() as sock:
            try:
                sock.bind(("", port))
            except OSError:
                return False
    return True


@dataclass
class PrivatePcscd:
    """pcscd for one test. `env` is what a client (scan, pkcs11-tool) needs to talk to it, and only to it."""

    directory: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def socket_path(self) -> Path:
        return self.directory / "run" / "pcscd" / "pcscd.comm"

    @property
    def log_path(self) -> Path:
        return self.directory / "pcscd.log"

    @property
    def opensc_conf(self) -> Path:
        return self.directory / "opensc.conf"

    @property
    def env(self) -> dict[str, str]:
        return {"PCSCLITE_CSOCK_NAME": str(self.socket_path), "OPENSC_CONF": str(self.opensc_conf)}

    def reader_port(self, reader: int = 0) -> int:
        return self.port + reader

    def prepare(self) -> None:
        (self.directory / "run").mkdir(parents=True, exist_ok=True)
        conf_dir = self.directory / "reader.conf.d"
        conf_dir.mkdir(exist_ok=True)
        self.port = free_port_pair()
        (conf_dir / "vpcd").write_text(
            f'FRIENDLYNAME "Virtual PCD"\nDEVICENAME /dev/null:{self.port}\n'
            f"LIBPATH {VPCD_DRIVER}\nCHANNELID {self.port}\n"
        )
        self.opensc_conf.write_text(OPENSC_CONF)

    def start(self) -> None:
        """Start the daemon and wait until it answers on its socket and both readers listen."""
        assert self.process is None, "already running"
        if not self.port or not _free(self.port, self.port + 1):
            self.prepare()  # first start, or another program took a port while the service was down
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        # --auto-exit: should the test process die without its teardown, pcscd ends after 60 s without clients.
        script = f'mount --bind "{self.directory / "run"}" /run && exec {PCSCD} --foreground --auto-exit -c "$1"'
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    "unshare",
                    "--mount",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                    script,
                    "sh",
                    str(self.directory / "reader.conf.d"),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_LIMIT
        while not (self.answers() and all(_listening(self.reader_port(n)) for n in range(len(READERS)))):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"private pcscd did not start; see {self.log_path}")
            time.sleep(0.05)

    def answers(self) -> bool:
        with socket.socket(socket.AF_UNIX) as sock:
            try:
                sock.connect(str(self.socket_path))
            except OSError:
                return False
        return True

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _listening(port: int) -> bool:
    """vpcd listens on the reader's port. Read from /proc rather than by connecting: a connection to vpcd is a
    card being inserted."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    return True
    return False


@contextlib.contextmanager
def private_pcscd(directory: Path, *, running: bool = True) -> Iterator[PrivatePcscd]:
    daemon = PrivatePcscd(directory)
    daemon.prepare()
    try:
        if running:
            daemon.start()
        yield daemon
    finally:
        daemon.stop()
