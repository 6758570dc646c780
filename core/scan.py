"""A scan of the workstation: modules found and loaded, a snapshot per token, and the findings.

`Workstation` scans every library in child processes (core.isolation), so the console can rescan every second
whatever a library does; the `scan` command makes one and scans once. A scan never logs in.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import core
from core import lockouts, pcsc
from core.config import LoadedConfig, load_config
from core.diagnostics import diagnose_token, diagnose_workstation
from core.findings import Finding, Severity, worst_first
from core.isolation import DEFAULT_TIMEOUT, Depth, LibraryHost, LibraryRead, ask_hosts, collect
from core.modules import Module, ModuleReport, discover, load, looks_like_driver, report_from_read
from core.snapshot import TokenSnapshot, with_lockouts


@dataclass(frozen=True, slots=True)
class ScannedToken:
    """A token's snapshot with its findings, worst first."""

    snapshot: TokenSnapshot
    findings: tuple[Finding, ...]

    @property
    def worst(self) -> Severity | None:
        return self.findings[0].severity if self.findings else None

    @property
    def healthy(self) -> bool:
        return self.worst in (None, Severity.INFO)

    @property
    def rank(self) -> int:
        """Worst token first: errors, then warnings, then the healthy ones (a note is healthy)."""
        return 2 if self.healthy else (self.worst or Severity.INFO).rank

    def to_dict(self) -> dict[str, Any]:
        return {**self.snapshot.to_dict(), "findings": [finding.to_dict() for finding in self.findings]}


@dataclass(frozen=True, slots=True)
class ScanResult:
    """One scan of the workstation: the libraries, the tokens (worst first), the readers and the findings."""

    taken_at: datetime
    config: LoadedConfig
    modules: tuple[ModuleReport, ...]
    tokens: tuple[ScannedToken, ...]
    findings: tuple[Finding, ...]
    readers: tuple[TokenSnapshot, ...] = ()  # slots without a token, or with one the library cannot read

    def __post_init__(self) -> None:
        # Worst first (errors, warnings, healthy), slot order within each: the console, `scan`, the report and
        # the metrics all list what needs the helpdesk first, whoever made the result.
        object.__setattr__(self, "tokens", tuple(sorted(self.tokens, key=lambda token: token.rank)))

    @property
    def reader_list(self) -> list[pcsc.Reader]:
        """Every reader and what is in it, for the readers' section of `scan`, `--json` and the dashboard."""
        return pcsc.list_readers((token.snapshot for token in self.tokens), self.readers)

    @property
    def all_findings(self) -> list[Finding]:
        return [*self.findings, *(finding for token in self.tokens for finding in token.findings)]

    @property
    def has_errors(self) -> bool:
        return any(finding.severity is Severity.ERROR for finding in self.all_findings)

    def to_dict(self) -> dict[str, Any]:
        counts = {str(severity): 0 for severity in Severity}
        for finding in self.all_findings:
            counts[str(finding.severity)] += 1
        return {
            "version": core.__version__,
            "taken_at": self.taken_at.isoformat(),
            "config": {"path": str(self.config.path), "error": self.config.error},
            "modules": [report.to_dict() for report in self.modules],
            "tokens": [token.to_dict() for token in self.tokens],
            "findings": [finding.to_dict() for finding in self.findings],
            "readers": [reader.to_dict() for reader in self.reader_list],
            "summary": {"tokens": len(self.tokens), **counts},
        }


class Workstation:
    """This machine's PKCS#11 libraries and scans over them.

    Every scan reads the libraries in child processes (core.isolation): a library that hangs or crashes
    becomes a finding, not the end of the tool. Libraries are loaded into this process only for actions, and
    only those whose last isolated read went well (`modules`).
    """

    def __init__(
        self,
        modules: Sequence[str] = (),
        *,
        environ: Mapping[str, str] | None = None,
        config: LoadedConfig | None = None,
        timeout: float | None = None,
        **discovery: Any,
    ) -> None:
        self.config = config or load_config()
        self.environ = environ
        self.timeout = timeout or DEFAULT_TIMEOUT
        self.candidates = discover(modules, environ=environ, config_modules=self.config.config.modules, **discovery)
        self.reports: list[ModuleReport] = []
        self._loaded: dict[str, Module] = {}
        self._last: ScanResult | None = None
        self._hosts: dict[str, LibraryHost] = {}
        self._unloadable: set[str] = set()  # read well in isolation, but would not start in this process
        self._diagnosed: dict[tuple[str, int], tuple[TokenSnapshot, object, ScannedToken]] = {}
        self._last_full: float | None = None
        self._begun: tuple[datetime, list[LibraryHost]] | None = None  # a first read asked by `begin`

    def close(self) -> None:
        """C_Finalize every library loaded here, so it lets go of readers and sessions before the process ends."""
        for host in self._hosts.values():
            host.stop()
        self._hosts = {}
        for module in self._loaded.values():
            module.finalize()
        self._loaded = {}

    @property
    def modules(self) -> list[Module]:
        """The libraries loaded into this process for actions: those whose last isolated read went well.
        Reads them first if they were never read (a CLI action): a library is first touched in isolation."""
        if self._last is None:
            self.scan()
        assert self._last is not None
        healthy = [report for report in self._last.modules if report.loaded and report.failure is None]
        for report in healthy:
            if report.path not in self._loaded and report.path not in self._unloadable:
                module = load(report)
                if module is None:
                    self._unloadable.add(report.path)  # NSS's softoken: not retried every second
                else:
                    self._loaded[report.path] = module
        return [self._loaded[report.path] for report in healthy if report.path in self._loaded]

    def _scanned(self, report: ModuleReport, snapshot: TokenSnapshot) -> ScannedToken:
        """The token with its findings; diagnosed again only when its snapshot or its lockouts changed (a poll
        mostly hands back the very snapshot object of the previous scan)."""
        key = (snapshot.module_path, snapshot.slot_id)
        locked = lockouts.locked_roles(snapshot.lockout_key)
        cached = self._diagnosed.get(key)
        if cached is not None and cached[0] is snapshot and cached[1] == locked:
            return cached[2]
        final = with_lockouts(replace(snapshot, kaztoken=is_kaztoken(report, snapshot)))
        scanned = ScannedToken(final, tuple(diagnose_token(final)))
        self._diagnosed[key] = (snapshot, locked, scanned)
        return scanned

    STALE_SECONDS = 30.0  # a poll re-reads the objects of tokens not in a reader at least this often (days left)

    def begin(self) -> None:
        """Start the first full read without waiting for it; the next `scan` takes its answers. The console calls
        this before it imports Textual: the libraries are read meanwhile, by children forked straight from a
        process that has one thread yet (no forkserver to start first)."""
        if self._begun is None and self._last is None:
            now = datetime.now(UTC)
            hosts = self._hosts_for_read()
            try:
                ask_hosts(hosts, now=now, depth=Depth.FULL)
            except Exception:
                return  # the first scan asks again, where a failure is shown in the console (not before it)
            self._begun = (now, hosts)

    def _hosts_for_read(self) -> list[LibraryHost]:
        # Skipped modules (p11-kit registry) are never touched, not even in a child process.
        present = [c for c in self.candidates if c.skipped is None and os.path.exists(c.path)]
        hosts = []
        for candidate in present:
            if candidate.path not in self._hosts:
                reserved = candidate.init_args.encode() if candidate.init_args else None
                self._hosts[candidate.path] = LibraryHost(candidate.path, environ=self.environ, reserved=reserved)
            hosts.append(self._hosts[candidate.path])
        return hosts

    def scan(self, *, refresh: bool = False, last: bool = False) -> ScanResult:
        """Snapshot every token, each library read in its own child process (kept between scans).

        `refresh` is a poll: a token is read again only when something says it changed (core.isolation.Depth),
        and a smart card in a reader is sent no command; otherwise everything is read. `last`: no scan follows
        (the `scan` command): each host lets go of its library as soon as it has answered, while the answers
        are judged here (a C_Finalize and a process's end were 4 ms of a `scan --json`)."""
        if self._begun is not None:  # the read `begin` asked for: full, whatever this call asks
            (now, hosts), self._begun = self._begun, None
            self._last_full = time.monotonic()
            return self._judge(now, collect(hosts, timeout=self.timeout))
        now = datetime.now(UTC)
        depth = Depth.POLL
        if not refresh or self._last_full is None:
            depth = Depth.FULL
        elif time.monotonic() - self._last_full >= self.STALE_SECONDS:
            depth = Depth.STALE
        if depth is not Depth.POLL:
            self._last_full = time.monotonic()
        hosts = self._hosts_for_read()
        ask_hosts(hosts, now=now, depth=depth, last=last)
        return self._judge(now, collect(hosts, timeout=self.timeout))

    def _judge(self, now: datetime, answers: list[LibraryRead]) -> ScanResult:
        """The scan result from the libraries' reads: reports, tokens with their findings, readers."""
        reads = {read.path: read for read in answers}
        reports, tokens, readers = [], [], []
        for candidate in self.candidates:
            read = reads.get(candidate.path)
            report = report_from_read(candidate, read)
            reports.append(report)
            if read is None:
                continue
            for snapshot in read.slots:
                if not isinstance(snapshot, TokenSnapshot):
                    continue  # LibraryHost.finish has put the snapshots in place of the host's Unchanged markers
                if is_spare_slot(snapshot):
                    continue
                if not snapshot.token_present or snapshot.token_error:
                    readers.append(snapshot)
                    continue
                tokens.append(self._scanned(report, snapshot))
        self.reports = reports
        config_error = (str(self.config.path), self.config.error) if self.config.error else None
        snapshots = [token.snapshot for token in tokens]
        findings = diagnose_workstation(reports, snapshots, config_error)
        result = ScanResult(
            taken_at=now,
            config=self.config,
            modules=tuple(reports),
            tokens=tuple(tokens),
            findings=tuple(_with_reader_findings(findings, reports, snapshots, readers, self.environ)),
            readers=tuple(readers),
        )
        self._last = result
        return result


def _with_reader_findings(
    findings: list[Finding],
    reports: Sequence[ModuleReport],
    tokens: Sequence[TokenSnapshot],
    readers: Sequence[TokenSnapshot],
    environ: Mapping[str, str] | None,
) -> list[Finding]:
    """The readers' and smart-card service's findings (core.pcsc), in place of a bare "no token" they explain.
    The service's socket is asked only when a PC/SC library sees no slot at all."""
    blind = pcsc.blind_pcsc_libraries(reports, tokens, readers)
    pcscd_up = pcsc.pcscd_answers(pcsc.socket_path(environ)) if blind else None
    reader_findings = pcsc.diagnose_readers(reports, tokens, readers, pcscd_up=pcscd_up)
    return worst_first(pcsc.explained_by_readers([*findings, *reader_findings], blind))


def is_spare_slot(snapshot: TokenSnapshot) -> bool:
    """A software module's empty "create a new token here" slot (SoftHSM2, tpm2-pkcs11), decided from what the
    slot and token say: a token that is not initialised, in a slot that is no removable device, with no
    serial. A real token that is not initialised sits in a removable slot (a reader) or has a serial."""
    return (
        snapshot.token_present
        and not snapshot.token_error
        and not snapshot.initialised
        and not pcsc.in_reader(snapshot)  # slot flags are named "removable-device" (core.flags)
        and not snapshot.serial.strip("0 ")
    )


def is_kaztoken(report: ModuleReport, snapshot: TokenSnapshot) -> bool:
    """A token from a KAZTOKEN/Rutoken-family library, or from the libraries the training lab and the tests
    build KAZTOKENs on (SoftHSM2, openCryptoki's soft token); anything else is another device."""
    if looks_like_driver(report.path, report.description, report.manufacturer):
        return True
    if looks_like_driver("", snapshot.model, snapshot.manufacturer):
        return True
    return any(mark in report.manufacturer.lower() for mark in TRAINING_STAND_INS)


TRAINING_STAND_INS = ("softhsm", "opencryptoki", "ibm")


def scan(modules: Sequence[str] = (), **kwargs: Any) -> ScanResult:
    """One scan, for a command that ends after it (`scan`)."""
    workstation = Workstation(modules, **kwargs)
    try:
        result = workstation.scan(last=True)
    finally:
        workstation.close()
    # What is in memory now stays until the process ends: frozen, the collector never walks it again, at exit
    # included (the interpreter's teardown took 15-45 ms of a 200 ms `scan --json`; 6 ms frozen, measured).
    gc.freeze()
    return result
