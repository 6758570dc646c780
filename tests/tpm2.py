"""tpm2-pkcs11 on a software TPM for tests: the stack that gives every token the same serial, keeps a spare
"create a token here" slot, and locks every PIN at once when the TPM's dictionary-attack protection trips.

Everything lives in the test's own directory and dies with it:
  - `swtpm` on two free local TCP ports (the TPM and its control channel), its state in the directory;
  - `tpm2_startup -c` straight to it (swtpm's TCTI), as firmware would at boot;
  - a private D-Bus session bus (`dbus-daemon --session`, its socket in the directory) with `tpm2-abrmd` on it:
    tpm2-pkcs11 cannot work on swtpm alone ("out of memory for object contexts"); the resource manager
    swaps its objects in and out. The machine's own buses never see any of it;
  - the tpm2-pkcs11 store (TPM2_PKCS11_STORE) with two tokens made by `tpm2_ptool`, sharing serial
    0000000000000000, each with its user and SO PIN.
The environment this process and its children need (`env`) is the TCTI `tabrmd:bus_type=session` with
DBUS_SESSION_BUS_ADDRESS pointing at the private bus. Checks use the independent tools: OpenSC's pkcs11-tool
on the module, tpm2-tools on the TPM.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

SERIAL = "0000000000000000"  # tpm2-pkcs11 gives every token this serial
TOOLS = (
    "swtpm",
    "tpm2_startup",
    "tpm2_shutdown",
    "tpm2_ptool",
    "tpm2-abrmd",
    "dbus-daemon",
    "tpm2_dictionarylockout",
    "pkcs11-tool",
)
TABRMD_TCTI = "tabrmd:bus_type=session"
START_WAIT = 20.0  # seconds a daemon gets to come up; only setup waits, no test asserts on time


@dataclass(frozen=True)
class Tpm2Token:
    label: str
    user_pin: str
    so_pin: str


# Two tokens on the one TPM. tpm2-pkcs11 takes any PIN; these also meet the bank's rules, so actions accept them.
TOKENS = (Tpm2Token("ALPHA", "Alpha7pin", "AlphaSo7pin"), Tpm2Token("BETA", "Beta7pin", "BetaSo7pin"))


def module_path() -> str | None:
    """libtpm2_pkcs11.so as Debian's libtpm2-pkcs11-1 installs it (asked of dpkg, then the usual places)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        listing = subprocess.run(
            ["dpkg", "-L", "libtpm2-pkcs11-1"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
        for line in listing.splitlines():
            if line.endswith("/libtpm2_pkcs11.so") and os.path.exists(line):
                return line
    for candidate in ("/usr/lib/x86_64-linux-gnu/pkcs11/libtpm2_pkcs11.so", "/usr/lib/pkcs11/libtpm2_pkcs11.so"):
        if os.path.exists(candidate):
            return candidate
    return None


def _tabrmd_tcti_installed() -> bool:
    return any(
        Path(directory, "libtss2-tcti-tabrmd.so.0").exists()
        for directory in ("/usr/lib/x86_64-linux-gnu", "/usr/lib", "/usr/lib64")
    )


def unavailable_reason() -> str | None:
    """Why the tpm2-pkcs11 tests cannot run here, or None when they can."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}")]
    if missing:
        return (
            f"missing {', '.join(missing)} (Debian packages swtpm, tpm2-tools, tpm2-abrmd, libtpm2-pkcs11-tools, "
            "dbus, opensc)"
        )
    if module_path() is None:
        return "tpm2-pkcs11 is not installed (Debian package libtpm2-pkcs11-1)"
    if not _tabrmd_tcti_installed():
        return "tpm2-abrmd's TCTI library is missing (Debian package libtss2-tcti-tabrmd0)"
    return None


def _free_port_pair() -> int:
    """A local TCP port P with P+1 free too: swtpm's TCTI talks to the TPM on P and to its control on P+1."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            if port >= 65535:
                continue
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
        return port
    raise RuntimeError("no two consecutive free local TCP ports")


class Tpm2Error(RuntimeError):
    """The software TPM stack did not come up or a tool failed."""


@dataclass
class Tpm2Stack:
    """swtpm + private D-Bus + tpm2-abrmd + a tpm2-pkcs11 store with `TOKENS`, all under `root`."""

    root: Path
    module: str = ""
    port: int = 0
    env: dict[str, str] = field(default_factory=dict)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    setup_seconds: float = 0.0

    @property
    def store(self) -> Path:
        return self.root / "store"

    def start(self, template: Path | None = None) -> None:
        """Start the stack; from `template` (a stopped stack's root: TPM state and store) if given, which skips
        making the tokens again (tpm2_ptool's seconds) and gives the same tokens with the same keys."""
        began = time.monotonic()
        self.module = module_path() or ""
        try:
            if template is not None:
                for part in ("tpmstate", "store"):
                    shutil.copytree(template / part, self.root / part)
            self._start(make_tokens=template is None)
        except BaseException:
            self.stop()
            raise
        self.setup_seconds = time.monotonic() - began

    def _start(self, *, make_tokens: bool) -> None:
        self.store.mkdir(parents=True, exist_ok=True)
        (self.root / "tpmstate").mkdir(parents=True, exist_ok=True)
        swtpm_tcti = self._start_swtpm()
        base = self._clean_environ()
        bus = self.root / "bus"
        self._spawn("dbus", "dbus-daemon", "--session", f"--address=unix:path={bus}", "--nofork", "--nopidfile")
        self.env = {
            **base,
            "DBUS_SESSION_BUS_ADDRESS": f"unix:path={bus}",
            "TPM2TOOLS_TCTI": TABRMD_TCTI,
            "TPM2_PKCS11_TCTI": TABRMD_TCTI,
            "TPM2_PKCS11_STORE": str(self.store),
            "TSS2_LOG": "all+NONE",  # tss2's own chatter about retries while the daemons come up
        }
        self._wait_for(lambda: bus.exists(), "the private D-Bus bus")
        abrmd = ["tpm2-abrmd", "--session", f"--tcti={swtpm_tcti}"]
        if os.geteuid() == 0:
            abrmd.append("--allow-root")  # it refuses root otherwise; CI is root
        self._spawn("tpm2-abrmd", *abrmd, env=self.env)
        self._until_ok("tpm2-abrmd", ["tpm2_getcap", "properties-fixed"], self.env)
        if not make_tokens:
            return
        self.tool("tpm2_ptool", "init", "--path", str(self.store))
        for token in TOKENS:
            self.tool(
                "tpm2_ptool",
                "addtoken",
                "--pid=1",
                f"--label={token.label}",
                f"--userpin={token.user_pin}",
                f"--sopin={token.so_pin}",
                "--path",
                str(self.store),
            )

    @staticmethod
    def _clean_environ() -> dict[str, str]:
        return {key: value for key, value in os.environ.items() if not key.startswith(("TPM2", "TSS2", "DBUS"))}

    def _start_swtpm(self) -> str:
        """swtpm on a free port pair, started up (`tpm2_startup -c`); its TCTI. Another program may take the
        ports between the choice and swtpm's bind: then swtpm exits at once, and another pair is tried."""
        for attempt in range(3):
            self.port = _free_port_pair()
            tcti = f"swtpm:host=127.0.0.1,port={self.port}"
            self._spawn(
                "swtpm",
                "swtpm",
                "socket",
                "--tpm2",
                "--server",
                f"type=tcp,port={self.port},bindaddr=127.0.0.1",
                "--ctrl",
                f"type=tcp,port={self.port + 1},bindaddr=127.0.0.1",
                "--tpmstate",
                f"dir={self.root / 'tpmstate'}",
                "--flags",
                "not-need-init",
            )
            try:
                self._until_ok(
                    "tpm2_startup", ["tpm2_startup", "-c"], {**self._clean_environ(), "TPM2TOOLS_TCTI": tcti}
                )
                return tcti
            except Tpm2Error:
                swtpm = self.processes.pop()
                if swtpm.poll() is None or attempt == 2:  # it is running, so the ports were not the problem
                    self.processes.append(swtpm)
                    raise
        raise AssertionError("unreachable")

    def _spawn(self, name: str, *args: str, env: dict[str, str] | None = None) -> None:
        log = open(self.root / f"{name}.log", "wb")  # noqa: SIM115 - the child writes it as long as it lives
        try:
            process = subprocess.Popen(
                list(args), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.root
            )
        finally:
            log.close()
        self.processes.append(process)

    def _wait_for(self, ready, what: str) -> None:
        deadline = time.monotonic() + START_WAIT
        while not ready():
            dead = [p for p in self.processes if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise Tpm2Error(f"{what} did not come up: {self.logs()}")
            time.sleep(0.05)

    def _until_ok(self, what: str, args: list[str], env: dict[str, str]) -> None:
        result: list[subprocess.CompletedProcess[str]] = []

        def ok() -> bool:
            result[:] = [subprocess.run(args, env=env, capture_output=True, text=True, timeout=30, check=False)]
            return result[0].returncode == 0

        try:
            self._wait_for(ok, what)
        except Tpm2Error as error:
            raise Tpm2Error(f"{error}; last {' '.join(args)}: {result[0].stderr if result else ''}") from None

    def logs(self) -> str:
        return " | ".join(
            f"{path.name}: {path.read_text(errors='replace').strip()[-400:]}"
            for path in sorted(self.root.glob("*.log"))
        )

    def stop(self) -> None:
        """Every daemon started, newest first (abrmd before its bus and its TPM). The TPM is shut down in order
        first, as at a clean power-off, so its state directory can start another stack."""
        if self.processes and all(process.poll() is None for process in self.processes):
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                self.tool("tpm2_shutdown", check=False)
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
        for process in reversed(self.processes):
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        self.processes.clear()

    # --- the independent tools -----------------------------------------------------------------------------

    def tool(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=120, check=False)
        if check and done.returncode != 0:
            raise Tpm2Error(f"{' '.join(args[:2])} failed ({done.returncode}): {done.stderr.strip()[-600:]}")
        return done

    def slots(self) -> dict[str, int]:
        """label -> slot id, as pkcs11-tool lists the initialised tokens."""
        out = self.tool("pkcs11-tool", "--module", self.module, "-L").stdout
        found = {}
        for match in re.finditer(r"^Slot \d+ \((0x[0-9a-f]+)\):.*\n\s+token label\s+:\s+(.*)$", out, flags=re.M):
            found[match.group(2).strip()] = int(match.group(1), 16)
        return found

    def pkcs11_tool(self, label: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.tool("pkcs11-tool", "--module", self.module, "--slot", str(self.slots()[label]), *args, check=check)

    def read_object(self, label: str, kind: str, cka_id: str) -> bytes:
        """The DER of a public object (`kind` pubkey or cert) as pkcs11-tool reads it."""
        slot = str(self.slots()[label])
        args = ["pkcs11-tool", "--module", self.module, "--slot", slot, "--read-object", "--type", kind, "--id", cka_id]
        return subprocess.run(args, env=self.env, capture_output=True, check=True, timeout=60).stdout

    def user_pin_works(self, label: str, pin: str) -> bool:
        return self.pkcs11_tool(label, "--login", "--pin", pin, "-O", check=False).returncode == 0

    def lower_lockout_threshold(self, max_tries: int = 2) -> None:
        """Make the dictionary-attack lockout quick to reach and slow to wear off: `max_tries` failures lock the
        TPM, one failure is forgotten only after an hour, so a test sees it locked until it clears it."""
        self.tool(
            "tpm2_dictionarylockout",
            "--setup-parameters",
            f"--max-tries={max_tries}",
            "--recovery-time=3600",
            "--lockout-recovery-time=1",
        )

    def in_lockout(self) -> bool:
        out = self.tool("tpm2_getcap", "properties-variable").stdout
        return bool(re.search(r"inLockout:\s+1", out))

    def clear_lockout(self) -> None:
        self.tool("tpm2_dictionarylockout", "--clear-lockout")


@contextlib.contextmanager
def running(root: Path, template: Path | None = None) -> Iterator[Tpm2Stack]:
    stack = Tpm2Stack(root)
    stack.start(template)
    try:
        yield stack
    finally:
        stack.stop()
