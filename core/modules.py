"""PKCS#11 module discovery: which libraries this machine has, which is the KAZTOKEN driver, do they load.

Sources, in order of precedence:
  1. `--module PATH` (repeatable),
  2. the environment variable KAZTOKEN_HELPDESK_MODULE (paths separated by `:`),
  3. `modules` in the config file.
The first of these that names anything is used alone: naming a module means "use this one". Otherwise the
machine is searched: p11-kit's module registry, then well-known library names (the Rutoken/KAZTOKEN family,
OpenSC, SoftHSM2) in the usual library directories. Each candidate is reported whether or not it loads, so
one broken library never hides the others. A registry entry p11-kit would not load in this program
(`enable-in` / `disable-in`), or that is the operating system's trust store (`trust-policy: yes`), is not
loaded either, but still reported, as skipped and why.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from core import ckr, isolation
from core.cryptoki import Cryptoki, CryptokiError
from core.i18n import N_, Text
from core.isolation import LibraryFailure, LibraryRead
from core.remedies import remedy_for

if TYPE_CHECKING:  # python-pkcs11 (and asn1crypto under it) is imported when a library is loaded for an action:
    # a scan reads through core.cryptoki in child processes and never needs it (24 ms measured)
    from pkcs11._pkcs11 import lib as Library  # the class behind the factory function pkcs11.lib

MODULE_ENV = "KAZTOKEN_HELPDESK_MODULE"
# The program name p11-kit's `enable-in` / `disable-in` lists name this program by.
PROGRAM_NAME = "kaztoken-helpdesk"

# Lowest precedence first: an entry in /etc/pkcs11/modules overrides, key by key, the package's file of the
# same name (as p11-kit merges them).
P11KIT_REGISTRIES = (Path("/usr/share/p11-kit/modules"), Path("/etc/pkcs11/modules"))
# Where p11-kit resolves a registry entry that names a bare file.
P11KIT_MODULE_DIRS = (Path("/usr/lib/x86_64-linux-gnu/pkcs11"), Path("/usr/lib/pkcs11"), Path("/usr/lib64/pkcs11"))

LIBRARY_DIRS = (
    Path("/usr/lib"),
    Path("/usr/lib64"),
    Path("/usr/local/lib"),
    Path("/usr/lib/x86_64-linux-gnu"),
    Path("/usr/lib/x86_64-linux-gnu/pkcs11"),
    Path("/usr/lib/pkcs11"),
    Path("/usr/lib/softhsm"),
    Path("/opt/aktivco/rutokenecp/amd64"),
    Path("/opt/kaztoken/lib"),
)

# KAZTOKEN ships a Rutoken-family library; the vendor's exact file name is configurable, these are the
# names the family is known to use.
DRIVER_NAMES = ("libkztpkcs11.so", "libkaztoken.so", "librtpkcs11ecp.so", "librtpkcs11.so")
OTHER_NAMES = ("opensc-pkcs11.so", "libsofthsm2.so")


@dataclass(frozen=True, slots=True)
class ModuleCandidate:
    """A PKCS#11 library discovery found, where it was found, and why it is left alone if it is."""

    path: str
    source: str  # "option", "environment", "config", "p11-kit", "well-known"
    skipped: Text | None = None  # why discovery leaves it unloaded (p11-kit's registry says so)
    # pReserved of C_Initialize's arguments, from the registry's `x-init-reserved` as p11-kit passes it (NSS's
    # softoken takes its database directory there: "configdir=sql:/home/…/.pki/nssdb").
    init_args: str | None = None

    @property
    def explicit(self) -> bool:
        return self.source in ("option", "environment", "config")


@dataclass(frozen=True, slots=True)
class ModuleReport:
    """What the helpdesk needs to know about one PKCS#11 library on this machine."""

    path: str
    source: str
    found: bool
    loaded: bool
    driver: bool
    description: str = ""
    manufacturer: str = ""
    library_version: str = ""
    cryptoki_version: str = ""
    vendor_extension: bool = False
    problem: Text | None = None  # why it does not work, translated when shown
    remedy: str | None = None
    failure: LibraryFailure | None = None  # it hung or crashed while being read
    output: str = ""  # what the library printed while being read (kept for the details, never shown raw)
    skipped: Text | None = None  # deliberately not loaded, and why: not a problem

    @property
    def error(self) -> str | None:
        """The problem in English: stable text for `scan --json`."""
        return self.problem.english if self.problem else None

    def to_dict(self) -> dict[str, object]:
        return {
            "path": self.path,
            "source": self.source,
            "found": self.found,
            "loaded": self.loaded,
            "driver": self.driver,
            "description": self.description,
            "manufacturer": self.manufacturer,
            "library_version": self.library_version,
            "cryptoki_version": self.cryptoki_version,
            "vendor_extension": self.vendor_extension,
            "error": self.error,
            "remedy": self.remedy,
            "failure": (
                {"kind": self.failure.kind, "call": self.failure.call, "detail": self.failure.detail}
                if self.failure
                else None
            ),
            "output": self.output,
            "skipped": self.skipped.english if self.skipped else None,
        }


@dataclass(slots=True)
class Module:
    """A loaded module: python-pkcs11's library object, the raw entry points beside it, and one lock.

    Modules are initialised without locking callbacks (python-pkcs11 passes NULL to C_Initialize), which
    tells the library the application will not call it from two threads at once: every call goes under
    `lock`.
    """

    report: ModuleReport
    lib: Library
    raw: Cryptoki
    lock: threading.RLock = field(default_factory=threading.RLock)
    # Descriptor numbers held on /dev/null: see `initialize`.
    parked: list[int] = field(default_factory=list)

    @property
    def path(self) -> str:
        return self.report.path

    @property
    def is_softhsm(self) -> bool:
        return self.report.manufacturer.startswith("SoftHSM")

    def refresh(self) -> None:
        """Make tokens created by other processes visible where the module needs it: SoftHSM2 reads its token
        directory only at C_Initialize. Invalidates every open session of this module.

        Other modules are left alone: real readers (OpenSC, the vendor's) report plugging through
        C_GetSlotList, and openCryptoki 3.8 closes a stray file descriptor at every C_Finalize after the first
        in a process (measured: it closed the console's epoll), so re-initialising it every second is harmful.
        """
        if not self.is_softhsm:
            return
        with self.lock:
            self.lib.reinitialize()

    def finalize(self) -> None:
        """C_Finalize, whatever it answers, so another process (or a daemon's restart) may have the library."""
        from pkcs11.exceptions import PKCS11Error

        with self.lock:
            with contextlib.suppress(PKCS11Error):
                self.lib.finalize()
            for number in self.parked:
                _park(number)  # the stray close may just have hit one

    def initialize(self) -> None:
        """C_Initialize again after `finalize`.

        openCryptoki 3.8 opens its API lock file during C_Initialize and, at each later C_Finalize, closes that
        descriptor number again, whoever holds it by then (measured: the console's epoll, a test's lock file).
        The number is the lowest free one when C_Initialize starts; holding it on /dev/null afterwards gives the
        stray close something harmless to close. It costs a descriptor per cycle; cycles are rare (a trainer's
        reset of an openCryptoki scenario).
        """
        with self.lock:
            number = _lowest_free_descriptor()
            self.lib.initialize()
            self.parked.append(number)
            _park(number)


def _lowest_free_descriptor() -> int:
    number = os.open(os.devnull, os.O_RDONLY)
    os.close(number)
    return number


def _park(number: int) -> None:
    """Hold this descriptor number on /dev/null if it is free."""
    try:
        os.fstat(number)
        return
    except OSError:
        pass
    devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    if devnull != number:
        os.dup2(devnull, number, inheritable=False)
        os.close(devnull)


def looks_like_driver(path: str, description: str = "", manufacturer: str = "") -> bool:
    text = f"{os.path.basename(path)} {description} {manufacturer}".lower()  # per token and scan: no Path
    return any(mark in text for mark in ("kaztoken", "kzt", "rtpkcs11", "rutoken", "aktiv"))


def parse_p11kit_registry(text: str) -> dict[str, str]:
    """The options of a p11-kit .module file: `name: value` lines, `#` comments (p11-kit's own format)."""
    options: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        key, sep, value = line.partition(":")
        if sep and key and not line.startswith("#"):
            options[key.strip()] = value.strip()
    return options


def _in_program_list(programs: str, program: str) -> bool:
    """p11-kit's list matching: program names separated by commas and/or white space, compared exactly."""
    return program in programs.replace(",", " ").split()


def p11kit_skip_reason(options: Mapping[str, str], program: str = PROGRAM_NAME) -> Text | None:
    """Why this registry entry is not for this program, or None when it is.

    p11-kit's rules: with `enable-in` the module is loaded only in the programs it names (an empty list: in
    none), and then `disable-in` is ignored; otherwise `disable-in` names the programs it is not loaded in.
    `trust-policy: yes` marks the operating system's trust store (CA certificates, e.g. p11-kit-trust): a
    module every program may load, but never a customer's token.
    """
    enable_in, disable_in = options.get("enable-in"), options.get("disable-in")
    if enable_in is not None:
        if not _in_program_list(enable_in, program):
            return Text(N_("p11-kit's registry enables it only in: {programs}"), {"programs": enable_in or "—"})
    elif disable_in is not None and _in_program_list(disable_in, program):
        return Text(N_("p11-kit's registry disables it in {program}"), {"program": program})
    if options.get("trust-policy") == "yes":  # p11-kit's booleans are exactly "yes" or "no"
        return Text(N_("the operating system's trust store (CA certificates), not a token"))
    return None


def _registry_entries(registries: Iterable[Path]) -> dict[str, dict[str, str]]:
    """Each registry entry's options by name (the file name without `.module`), merged across registries as
    p11-kit does: a later registry's file overrides an earlier one's key by key."""
    entries: dict[str, dict[str, str]] = {}
    for registry in registries:
        try:
            files = sorted(registry.glob("*.module"))
        except OSError:
            continue
        for file in files:
            text = _read_registry_file(file)
            if text is not None:
                entries.setdefault(file.name.removesuffix(".module"), {}).update(parse_p11kit_registry(text))
    return entries


REGISTRY_FILE_LIMIT = 64 * 1024  # a module file is a few lines; more is not one


def _read_registry_file(path: Path) -> str | None:
    """A registry file's text, or None for what cannot be one: not a regular file (a FIFO would block the
    scan), unreadable, or too large."""
    try:
        if not path.is_file():
            return None
        with path.open("rb") as handle:
            data = handle.read(REGISTRY_FILE_LIMIT + 1)
    except OSError:
        return None
    return None if len(data) > REGISTRY_FILE_LIMIT else data.decode("utf-8", errors="replace")


def _registry_candidates(registries: Iterable[Path], module_dirs: Sequence[Path]) -> list[ModuleCandidate]:
    candidates = []
    for _name, options in sorted(_registry_entries(registries).items()):
        module = options.get("module")
        if not module:
            continue  # a `remote:` entry, or none at all: nothing this console can load
        if not os.path.isabs(module):
            module = str(next((d / module for d in module_dirs if (d / module).exists()), module_dirs[0] / module))
        init_args = options.get("x-init-reserved") or None
        candidates.append(ModuleCandidate(module, "p11-kit", p11kit_skip_reason(options), init_args))
    return candidates


def _well_known_candidates(library_dirs: Iterable[Path]) -> list[str]:
    return [
        str(directory / name)
        for name in (*DRIVER_NAMES, *OTHER_NAMES)
        for directory in library_dirs
        if (directory / name).exists()
    ]


def discover(
    options: Sequence[str] = (),
    *,
    environ: Mapping[str, str] | None = None,
    config_modules: Sequence[str] = (),
    registries: Iterable[Path] = P11KIT_REGISTRIES,
    module_dirs: Sequence[Path] = P11KIT_MODULE_DIRS,
    library_dirs: Iterable[Path] = LIBRARY_DIRS,
) -> list[ModuleCandidate]:
    environ = os.environ if environ is None else environ
    from_env = [part for part in environ.get(MODULE_ENV, "").split(":") if part]
    for source, paths in (("option", options), ("environment", from_env), ("config", config_modules)):
        if paths:
            return _unique(ModuleCandidate(str(path), source) for path in paths)
    # A module the registry skips keeps its place: the same library under a well-known name is not loaded either.
    found = _registry_candidates(registries, module_dirs)
    found += [ModuleCandidate(path, "well-known") for path in _well_known_candidates(library_dirs)]
    return _unique(found)


def _unique(candidates: Iterable[ModuleCandidate]) -> list[ModuleCandidate]:
    """One candidate per library: p11-kit and a well-known name often point at the same file by two paths."""
    seen: set[str] = set()
    unique = []
    for candidate in candidates:
        key = os.path.realpath(candidate.path)
        if key not in seen:
            seen.add(key)
            unique.append(candidate)
    return unique


def _version(version: tuple[int, int]) -> str:
    return f"{version[0]}.{version[1]}"


_REMEDY_MISSING = N_("Install the KAZTOKEN driver, or give the library's path with --module or in the settings.")
_REMEDY_NOT_PKCS11 = N_("This file is not a PKCS#11 library: point --module at the driver's PKCS#11 library.")
_REMEDY_HANG = N_("Unplug the token, plug it in again and rescan; if it happens again, reinstall the driver.")
_REMEDY_CRASH = N_(
    "Unplug the token, plug it in again and rescan; if it happens again, reinstall the driver or report the "
    "library's output (details) to its vendor."
)


def skipped_report(candidate: ModuleCandidate) -> ModuleReport:
    """A module discovery leaves alone: reported, never loaded, never the driver nor a broken one."""
    found = os.path.exists(candidate.path)
    return ModuleReport(candidate.path, candidate.source, found, False, False, skipped=candidate.skipped)


def report_from_read(candidate: ModuleCandidate, read: LibraryRead | None) -> ModuleReport:
    """What the helpdesk is told about a library from its isolated read (None: the file is not there)."""
    if candidate.skipped is not None:
        return skipped_report(candidate)
    path, source = candidate.path, candidate.source
    driver_by_name = candidate.explicit or looks_like_driver(path)
    if read is None:
        return ModuleReport(
            path, source, False, False, driver_by_name, problem=Text(N_("file not found")), remedy=_REMEDY_MISSING
        )
    if read.failure is not None:
        remedy = _REMEDY_HANG if read.failure.kind == "hang" else _REMEDY_CRASH
        problem = (
            Text(
                N_("stopped answering in {call} (waited {detail})"),
                {"call": read.failure.call, "detail": read.failure.detail},
            )
            if read.failure.kind == "hang"
            else Text(N_("crashed in {call} ({detail})"), {"call": read.failure.call, "detail": read.failure.detail})
        )
        return ModuleReport(
            path,
            source,
            True,
            False,
            driver_by_name,
            problem=problem,
            remedy=remedy,
            failure=read.failure,
            output=read.output,
        )
    if read.load_error is not None:
        return ModuleReport(
            path,
            source,
            True,
            False,
            driver_by_name,
            problem=Text(N_("not a PKCS#11 library: {error}"), {"error": read.load_error}),
            remedy=_REMEDY_NOT_PKCS11,
            output=read.output,
        )
    if read.init_error is not None:
        return ModuleReport(
            path,
            source,
            True,
            False,
            driver_by_name,
            problem=Text(N_("C_Initialize failed: {error}"), {"error": ckr.explain(read.init_error)}),
            remedy=remedy_for(path, "", read.init_error),
            output=read.output,
        )
    info = read.info
    assert info is not None
    report = ModuleReport(
        path=path,
        source=source,
        found=True,
        loaded=True,
        driver=candidate.explicit or looks_like_driver(path, info.description, info.manufacturer),
        description=info.description,
        manufacturer=info.manufacturer,
        library_version=_version(info.library_version),
        cryptoki_version=_version(info.cryptoki_version),
        vendor_extension=read.vendor_extension,
        output=read.output,
    )
    if read.slot_list_error is not None:
        report = replace(
            report,
            problem=Text(N_("slot list failed: {error}"), {"error": read.slot_list_error}),
            remedy=remedy_for(path, info.manufacturer),
        )
    return report


def load(report: ModuleReport) -> Module | None:
    """Load into this process, for actions, a library whose isolated read went well (`report` is that read's).
    None when it will not start here either (NSS's softoken, whose arguments python-pkcs11 cannot pass): the
    scan still shows its tokens; actions on them say the token is not found."""
    import pkcs11
    from pkcs11.exceptions import PKCS11Error

    try:
        raw = Cryptoki(report.path)
    except (OSError, AttributeError, CryptokiError):
        return None
    lock_number = _lowest_free_descriptor()  # see Module.initialize
    isolation.libraries_loaded_here = True
    try:
        lib = pkcs11.lib(report.path)
        raw.initialize()  # p11-kit's proxy: our function list is a separate one that needs its own C_Initialize
    except (PKCS11Error, OSError, RuntimeError, CryptokiError):
        return None
    _park(lock_number)
    return Module(report, lib, raw, parked=[lock_number])
