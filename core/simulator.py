"""The simulated KAZTOKEN (simulator/kaztoken_sim.c): building its library, and its readers' state.

The simulator is a PKCS#11 library for training and tests, not the vendor's library: SoftHSM2 underneath keeps
the objects, the simulator adds what a KAZTOKEN in a USB reader does (PIN counters that lock, the Rutoken-family
C_EX_GetTokenInfoExtended, plugging in and out, slow key generation). Its state lives in one directory, named to
the library by KAZTOKEN_SIM_DIR: `softhsm2.conf`, SoftHSM2's `tokens/`, and `readers/<slot>.state`, one small
key=value file per reader, changed under flock by the library and by this module alike. No PIN is ever in it.

The library is built from the repository with gcc (scripts/setup does it; `library()` builds it again when the
source is newer), next to a private copy of SoftHSM2's library, so a process that also loads SoftHSM2 itself
gets two separate instances. Nothing is installed system-wide or registered with p11-kit.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path

from core.i18n import _

SOURCE = Path(__file__).resolve().parent.parent / "simulator" / "kaztoken_sim.c"
BUILD_DIR = SOURCE.parent / "build"
LIBRARY_NAME = "libkaztoken-sim.so"
SOFTHSM_COPY = "libsofthsm2-for-sim.so"
SOFTHSM_LIBRARY = next(
    (
        path
        for path in ("/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so")
        if os.path.exists(path)
    ),
    "/usr/lib/softhsm/libsofthsm2.so",
)
DIR_ENV = "KAZTOKEN_SIM_DIR"
KEYGEN_DELAY_ENV = "KAZTOKEN_SIM_KEYGEN_DELAY_MS"
DEFAULT_TRIES = 10
MAX_READERS = 256  # the library's limit on slot ids


class SimulatorError(Exception):
    """The simulator could not be built or its state changed; the message says why (never a PIN)."""


# --- the library ---------------------------------------------------------------------------------------------


def library(build_dir: Path | None = None) -> Path:
    """The simulator's library, built first when it is missing or older than its source (or than SoftHSM2)."""
    build_dir = build_dir or BUILD_DIR
    target = build_dir / LIBRARY_NAME
    copy = build_dir / SOFTHSM_COPY
    if _fresh(target, copy):
        return target
    build_dir.mkdir(parents=True, exist_ok=True)
    with (build_dir / ".build.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel tests: one builds, the others wait and find it built
        if not _fresh(target, copy):
            _build(target, copy)
    return target


def _fresh(target: Path, copy: Path) -> bool:
    try:
        built = target.stat().st_mtime
        return (
            built >= SOURCE.stat().st_mtime
            and copy.stat().st_mtime >= Path(SOFTHSM_LIBRARY).stat().st_mtime
            and copy.stat().st_size == Path(SOFTHSM_LIBRARY).stat().st_size
        )
    except OSError:
        return False


def _build(target: Path, copy: Path) -> None:
    if not os.path.exists(SOFTHSM_LIBRARY):
        raise SimulatorError(_("SoftHSM2 is not installed (Debian package softhsm2): the simulator runs on it"))
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        raise SimulatorError(_("No C compiler to build the KAZTOKEN simulator (Debian package gcc)"))
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as work:
        built = Path(work) / LIBRARY_NAME
        command = [
            compiler,
            "-std=c11",
            "-O2",
            "-Wall",
            "-fPIC",
            "-shared",
            "-I/usr/include/p11-kit-1",
            "-o",
            str(built),
            str(SOURCE),
            "-ldl",
            "-lpthread",
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            raise SimulatorError(
                _("The KAZTOKEN simulator did not build (is libp11-kit-dev installed?): {error}").format(
                    error=result.stderr.strip()[-2000:]
                )
            )
        shutil.copy2(SOFTHSM_LIBRARY, Path(work) / SOFTHSM_COPY)
        os.replace(Path(work) / SOFTHSM_COPY, copy)
        os.replace(built, target)


# --- a reader's state ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReaderState:
    """readers/<slot>.state: the same keys, in the same order, as the library's format_state()."""

    serial: str
    present: int = 1
    generation: int = 0
    softhsm_serial: str = ""  # empty: the token is not initialised
    user_max: int = DEFAULT_TRIES
    user_left: int = DEFAULT_TRIES
    so_max: int = DEFAULT_TRIES
    so_left: int = DEFAULT_TRIES
    user_default: int = 1
    so_default: int = 1
    policy: int = 3  # TOKEN_FLAGS_ADMIN_CHANGE_USER_PIN | TOKEN_FLAGS_USER_CHANGE_USER_PIN
    keygen_delay_ms: int = 0

    @property
    def plugged(self) -> bool:
        return bool(self.present)

    def dump(self) -> str:
        return "".join(f"{item.name}={getattr(self, item.name)}\n" for item in fields(self))

    @classmethod
    def parse(cls, text: str) -> ReaderState:
        values: dict[str, object] = {}
        names = {item.name: item for item in fields(cls)}
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if not sep or key not in names:
                continue
            if key in ("serial", "softhsm_serial"):
                values[key] = "".join(ch for ch in value[:16] if ch.isalnum())
            else:
                with contextlib.suppress(ValueError):
                    values[key] = max(0, int(value))
        values.setdefault("serial", "")
        return cls(**values)  # type: ignore[arg-type]


class Simulator:
    """One simulator directory (KAZTOKEN_SIM_DIR): its readers and what is in them."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    @property
    def conf(self) -> Path:
        return self.root / "softhsm2.conf"

    @property
    def tokens_dir(self) -> Path:
        return self.root / "tokens"

    @property
    def readers_dir(self) -> Path:
        return self.root / "readers"

    def prepare(self) -> Simulator:
        for directory in (self.tokens_dir, self.readers_dir):
            directory.mkdir(parents=True, exist_ok=True)
        text = f"directories.tokendir = {self.tokens_dir}\nobjectstore.backend = file\nlog.level = ERROR\n"
        if not self.conf.exists() or self.conf.read_text() != text:
            self.conf.write_text(text)
        return self

    def environment(self) -> dict[str, str]:
        """What a process (a scan, a console, pkcs11-tool) needs to see this directory's readers."""
        return {DIR_ENV: str(self.root)}

    def state_path(self, slot: int) -> Path:
        return self.readers_dir / f"{int(slot)}.state"

    def readers(self) -> list[int]:
        slots = []
        with contextlib.suppress(OSError):
            for entry in self.readers_dir.iterdir():
                stem, dot, suffix = entry.name.partition(".")
                if dot and suffix == "state" and stem.isdigit() and int(stem) < MAX_READERS:
                    slots.append(int(stem))
        return sorted(slots)

    def add_reader(self, slot: int | None = None, **settings: int | str) -> int:
        """A new reader holding a new, uninitialised token (factory PINs not yet set); returns its slot id."""
        self.prepare()
        if slot is None:
            taken = set(self.readers())
            slot = next(number for number in range(1, MAX_READERS) if number not in taken)
        state = replace(ReaderState(serial=new_serial()), **settings)  # type: ignore[arg-type]
        path = self.state_path(slot)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(state.dump())
        return slot

    def state(self, slot: int) -> ReaderState:
        try:
            with self.state_path(slot).open(encoding="utf-8", errors="replace") as handle:
                fcntl.flock(handle, fcntl.LOCK_SH)
                return ReaderState.parse(handle.read(4096))
        except FileNotFoundError:
            raise SimulatorError(_("The simulator has no reader {slot}.").format(slot=slot)) from None

    @contextlib.contextmanager
    def _locked(self, slot: int) -> Iterator[tuple[object, ReaderState]]:
        try:
            handle = self.state_path(slot).open("r+", encoding="utf-8", errors="replace")
        except FileNotFoundError:
            raise SimulatorError(_("The simulator has no reader {slot}.").format(slot=slot)) from None
        with handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield handle, ReaderState.parse(handle.read(4096))

    def update(self, slot: int, **changes: int | str) -> ReaderState:
        """Change a reader's state in place (under the lock the library takes too)."""
        with self._locked(slot) as (handle, state):
            new = replace(state, **changes)  # type: ignore[arg-type]
            _rewrite(handle, new)
        return new

    def write(self, slot: int, state: ReaderState) -> None:
        """A whole state written over the reader's (a lab's reset): the generation still moves on, so programs
        that had sessions on the old token see it as pulled out and put back."""
        with self._locked(slot) as (handle, old):
            _rewrite(handle, replace(state, generation=max(old.generation, state.generation) + 1))

    def unplug(self, slot: int) -> None:
        with self._locked(slot) as (handle, state):
            if state.present:
                _rewrite(handle, replace(state, present=0, generation=state.generation + 1))

    def plug(self, slot: int) -> None:
        with self._locked(slot) as (handle, state):
            if not state.present:
                _rewrite(handle, replace(state, present=1, generation=state.generation + 1))

    def softhsm_dir(self, slot: int) -> Path | None:
        """SoftHSM2's directory for the reader's token (named by a UUID whose last 16 hex digits are its
        serial), or None when the token is not initialised."""
        serial = self.state(slot).softhsm_serial
        if not serial:
            return None
        with contextlib.suppress(OSError):
            for entry in self.tokens_dir.iterdir():
                if entry.is_dir() and "".join(entry.name.split("-")[3:]) == serial:
                    return entry
        return None

    def remove_reader(self, slot: int) -> None:
        """The reader and its token gone for good (SoftHSM2's files too)."""
        with contextlib.suppress(SimulatorError):
            directory = self.softhsm_dir(slot)
            if directory is not None:
                shutil.rmtree(directory, ignore_errors=True)
        self.state_path(slot).unlink(missing_ok=True)


def _rewrite(handle: object, state: ReaderState) -> None:
    handle.seek(0)  # type: ignore[attr-defined]
    handle.truncate()  # type: ignore[attr-defined]
    handle.write(state.dump())  # type: ignore[attr-defined]
    handle.flush()  # type: ignore[attr-defined]


def new_serial() -> str:
    """A token serial of 16 characters, unique in practice: «KZ» and 14 random hex digits."""
    return "KZ" + secrets.token_hex(7).upper()


# --- the helper the lab and tests call ---------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m core.simulator build | add | unplug | plug | show` over a simulator directory."""
    parser = argparse.ArgumentParser(prog="python -m core.simulator")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("build", help="build the library (when its source is newer) and print its path")
    for name in ("add", "unplug", "plug", "show"):
        command = commands.add_parser(name)
        command.add_argument("--dir", type=Path, default=os.environ.get(DIR_ENV))
        if name != "add":
            command.add_argument("slot", type=int)
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            print(library())
            return 0
        if args.dir is None:
            parser.error(f"--dir or {DIR_ENV} is needed")
        simulator = Simulator(args.dir)
        if args.command == "add":
            print(simulator.add_reader())
        elif args.command == "unplug":
            simulator.unplug(args.slot)
        elif args.command == "plug":
            simulator.plug(args.slot)
        else:
            print(simulator.state(args.slot).dump(), end="")
    except (SimulatorError, OSError) as error:
        print(error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
