"""Token health for Prometheus: `scan --metrics FILE` in node_exporter's textfile format.

node_exporter reads every `*.prom` file in its textfile directory on each scrape, so the file is written to a
temporary name beside it and renamed (prometheus_client's write_to_textfile): a scrape never sees half a file.
Label values come from tokens and certificates (hostile): prometheus_client escapes backslash, quote and newline;
what remains (a lone surrogate from a broken label) is written as its escape, so the file is always UTF-8.

    kaztoken_tokens                                             tokens seen by this scan
    kaztoken_token_findings{token_id,serial,code,severity}      1 per finding on a token
    kaztoken_workstation_findings{code,severity}                1 per finding about the terminal (driver-missing…)
    kaztoken_certificate_days_left{token_id,serial,cka_id}      days until a certificate ends (negative: ended)
    kaztoken_pin_tries_left{token_id,serial,role}               where the token tells (Rutoken family's counters)
    kaztoken_pin_locked{token_id,serial,role}                   1 when that PIN is locked, else 0
    kaztoken_audit_pending_records{sink}                        audit records a sink has not received yet
    kaztoken_scan_timestamp_seconds                             when the scan was taken
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

from core.config import Config
from core.scan import ScanResult
from core.snapshot import PinStatus


def _label(value: object) -> str:
    return str(value).encode("utf-8", "backslashreplace").decode("utf-8")


def registry(result: ScanResult, config: Config | None = None) -> CollectorRegistry:
    registry = CollectorRegistry()
    token = ("token_id", "serial")
    tokens = Gauge("kaztoken_tokens", "Tokens seen by the scan", registry=registry)
    findings = Gauge(
        "kaztoken_token_findings", "Findings on a token, by code", [*token, "code", "severity"], registry=registry
    )
    workstation = Gauge(
        "kaztoken_workstation_findings", "Findings about the terminal, by code", ["code", "severity"], registry=registry
    )
    days = Gauge(
        "kaztoken_certificate_days_left", "Days until the certificate ends", [*token, "cka_id"], registry=registry
    )
    tries = Gauge(
        "kaztoken_pin_tries_left", "PIN tries left, where the token tells", [*token, "role"], registry=registry
    )
    locked = Gauge("kaztoken_pin_locked", "1 when the PIN is locked", [*token, "role"], registry=registry)
    taken = Gauge("kaztoken_scan_timestamp_seconds", "When the scan was taken (Unix time)", registry=registry)

    tokens.set(len(result.tokens))
    taken.set(result.taken_at.timestamp())
    for finding in result.findings:
        workstation.labels(finding.code, str(finding.severity)).inc()
    for scanned in result.tokens:
        snapshot = scanned.snapshot
        ids = (_label(snapshot.token_id), _label(snapshot.serial))
        for finding in scanned.findings:
            findings.labels(*ids, finding.code, str(finding.severity)).inc()
        for certificate in snapshot.certificates:
            if certificate.days_left is not None:
                days.labels(*ids, _label(certificate.cka_id)).set(certificate.days_left)
        for role, pin in (("user", snapshot.user_pin), ("admin", snapshot.so_pin)):
            if not snapshot.initialised:
                continue
            if pin.tries_left is not None:
                tries.labels(*ids, role).set(pin.tries_left)
            locked.labels(*ids, role).set(1 if pin.status in (PinStatus.LOCKED, PinStatus.LOCKED_FOR_NOW) else 0)
    if config is not None:
        _pending(registry, config)
    return registry


def _pending(registry: CollectorRegistry, config: Config) -> None:
    """How far each audit sink lags behind the local file: an alert when a branch's trail stops reaching the SIEM."""
    from core import delivery

    plan = delivery.Plan.configured(config)
    if not plan.sinks:
        return
    gauge = Gauge(
        "kaztoken_audit_pending_records", "Audit records a sink has not received", ["sink"], registry=registry
    )
    try:
        statuses = delivery.pending(plan)
    except OSError:
        return  # the audit file cannot be read: `audit` says why; the token metrics still go out
    for status in statuses:
        if status.problem is None:
            gauge.labels(_label(status.name)).set(status.pending)


def write_metrics(result: ScanResult, path: Path, config: Config | None = None) -> None:
    """Writes the metrics to `path` through a temporary file and a rename (raises OSError)."""
    write_to_textfile(str(path), registry(result, config))
