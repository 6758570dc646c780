"""A scan of the workstation: modules found and loaded, a snapshot per token, and the findings.

`Workstation` keeps its modules loaded between scans, so the console can rescan every second; the `scan`
command makes one and scans once. A scan never logs in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from pkcs11.exceptions import PKCS11Error

import core
from core import pcsc
from core.config import LoadedConfig, load_config
from core.cryptoki import CryptokiError
from core.diagnostics import diagnose_token, diagnose_workstation
from core.findings import Finding, Severity, worst_first
from core.i18n import N_, Text
from core.modules import Module, ModuleReport, discover, load_all
from core.snapshot import TokenGone, TokenSnapshot, read_snapshot


@dataclass(frozen=True, slots=True)
class ScannedToken:
    snapshot: TokenSnapshot
    findings: tuple[Finding, ...]

    @property
    def worst(self) -> Severity | None:
        return self.findings[0].severity if self.findings else None

    @property
    def healthy(self) -> bool:
        return self.worst in (None, Severity.INFO)

    def to_dict(self) -> dict[str, Any]:
        return {**self.snapshot.to_dict(), "findings": [finding.to_dict() for finding in self.findings]}


@dataclass(frozen=True, slots=True)
class ScanResult:
    taken_at: datetime
    config: LoadedConfig
    modules: tuple[ModuleReport, ...]
    tokens: tuple[ScannedToken, ...]
    findings: tuple[Finding, ...]
    readers: tuple[TokenSnapshot, ...] = ()  # slots without a readable token: empty, or holding an unreadable one

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
            "readers": [reader.to_dict() for reader in self.reader_list],
            "findings": [finding.to_dict() for finding in self.findings],
            "summary": {"tokens": len(self.tokens), **counts},
        }


class Workstation:
    """This machine's PKCS#11 modules, loaded once, and scans over them."""

    def __init__(
        self,
        modules: Sequence[str] = (),
        *,
        environ: Mapping[str, str] | None = None,
        config: LoadedConfig | None = None,
        **discovery: Any,
    ) -> None:
        self.config = config or load_config()
        candidates = discover(modules, environ=environ, config_modules=self.config.config.modules, **discovery)
        self.reports, self.modules = load_all(candidates)

    def close(self) -> None:
        """C_Finalize every module, so the library lets go of readers and sessions before the process ends."""
        for module in self.modules:
            module.finalize()
        self.modules = []

    def scan(self, *, refresh: bool = False) -> ScanResult:
        """Snapshot every token. `refresh` re-initialises modules first, so tokens that appeared or vanished
        since the last scan are seen (SoftHSM2 needs it; it costs every open session of the module)."""
        now = datetime.now(UTC)
        reports = {module.path: module.report for module in self.modules}
        tokens: list[ScannedToken] = []
        readers: list[TokenSnapshot] = []
        for module in self.modules:
            try:
                module_tokens, module_readers = self._scan_module(module, now, refresh)
                tokens += module_tokens
                readers += module_readers
            except (PKCS11Error, CryptokiError) as error:
                reports[module.path] = replace(
                    module.report,
                    problem=Text(N_("slot list failed: {error}"), {"error": str(error) or type(error).__name__}),
                )
        module_reports = tuple(reports.get(report.path, report) for report in self.reports)
        snapshots = [token.snapshot for token in tokens]
        config_error = (str(self.config.path), self.config.error) if self.config.error else None
        findings = diagnose_workstation(module_reports, snapshots, config_error)
        findings = _with_reader_findings(findings, module_reports, snapshots, readers)
        return ScanResult(
            taken_at=now,
            config=self.config,
            modules=module_reports,
            tokens=tuple(tokens),
            findings=tuple(findings),
            readers=tuple(readers),
        )

    @staticmethod
    def _scan_module(module: Module, now: datetime, refresh: bool) -> tuple[list[ScannedToken], list[TokenSnapshot]]:
        scanned, readers = [], []
        with module.lock:
            if refresh:
                module.refresh()
            for slot in module.lib.get_slots(token_present=False):
                try:
                    snapshot = read_snapshot(module, slot, now)
                except TokenGone:
                    continue  # pulled out mid-scan: it is simply not there
                if not snapshot.token_present or snapshot.token_error:
                    readers.append(snapshot)  # an empty reader, or one holding what the library cannot read
                    continue
                if module.is_softhsm and not snapshot.initialised:
                    continue  # SoftHSM2's spare slot for creating a token, not a token
                scanned.append(ScannedToken(snapshot, tuple(diagnose_token(snapshot))))
        return scanned, readers


def _with_reader_findings(
    findings: list[Finding],
    reports: Sequence[ModuleReport],
    tokens: Sequence[TokenSnapshot],
    readers: Sequence[TokenSnapshot],
) -> list[Finding]:
    """The readers' and smart-card service's findings (core.pcsc), in place of a bare "no token" they explain.
    The service's socket is asked only when a PC/SC library sees no slot at all."""
    blind = pcsc.blind_pcsc_libraries(reports, tokens, readers)
    pcscd_up = pcsc.pcscd_answers(pcsc.socket_path()) if blind else None
    reader_findings = pcsc.diagnose_readers(reports, tokens, readers, pcscd_up=pcscd_up)
    return worst_first(pcsc.explained_no_token([*findings, *reader_findings]))


def scan(modules: Sequence[str] = (), **kwargs: Any) -> ScanResult:
    return Workstation(modules, **kwargs).scan()
