"""Plain-text rendering of a scan: the `scan` command's report and the body of a ticket report.

Holds no secret by construction: a snapshot never contains a PIN.
"""

from __future__ import annotations

import getpass
import platform
import socket
from collections.abc import Iterable
from pathlib import Path

import core
from core.certificates import CertificateInfo
from core.findings import Finding, Severity
from core.i18n import N_, _
from core.pcsc import Reader, ReaderState
from core.scan import ScannedToken, ScanResult
from core.snapshot import KeyInfo, PinState, PinStatus, TokenSnapshot

MARKS = {Severity.ERROR: "✖", Severity.WARNING: "⚠", Severity.INFO: "ℹ"}


PIN_STATUS_TEXT = {
    PinStatus.OK: N_("ok"),
    PinStatus.COUNT_LOW: N_("wrong PIN entered recently"),
    PinStatus.FINAL_TRY: N_("last try left"),
    PinStatus.LOCKED: N_("locked"),
    PinStatus.NOT_INITIALISED: N_("not set"),
    PinStatus.TO_BE_CHANGED: N_("must be changed"),
}


def days_text(days: int) -> str:
    """How long a certificate has left, or how long ago it ended."""
    return _("expired {days} days ago").format(days=-days) if days < 0 else _("{days} days left").format(days=days)


def pin_summary(pin: PinState) -> str:
    text = _(PIN_STATUS_TEXT[pin.status])
    if pin.tries_left is not None and pin.max_tries:
        text += " " + _("({left} of {max} tries left)").format(left=pin.tries_left, max=pin.max_tries)
    return text


def _table(rows: Iterable[tuple[str, str]]) -> list[str]:
    rows = list(rows)
    width = max(len(name) for name, _value in rows)
    return [f"  {name.ljust(width)}  {value}" for name, value in rows]


def finding_lines(findings: Iterable[Finding], indent: str = "  ") -> list[str]:
    lines = []
    for finding in findings:
        action = f"  → {finding.action}" if finding.action else ""
        lines.append(f"{indent}{MARKS[finding.severity]} {finding.title} [{finding.code}]{action}")
    return lines


def token_lines(token: ScannedToken, *, explain: bool = False) -> list[str]:
    snap = token.snapshot
    serial = " — " + _("serial {serial}").format(serial=snap.serial) if snap.serial else ""
    title = f"KAZTOKEN «{snap.display_label}»{serial}"
    rows = [
        (_("Slot"), f"{snap.slot_id}: {snap.slot_description}"),
        (_("Model"), f"{snap.manufacturer} {snap.model}".strip()),
        (_("Versions"), _("hardware {hw}, firmware {fw}").format(hw=snap.hardware_version, fw=snap.firmware_version)),
        (_("Initialised"), _("yes") if snap.initialised else _("no")),
        (_("User PIN"), pin_summary(snap.user_pin)),
        (_("Admin PIN"), pin_summary(snap.so_pin)),
    ]
    for cert in snap.certificates:
        if cert.error:
            rows.append((_("Certificate"), _("unreadable: {error}").format(error=cert.problem)))
        else:
            assert cert.not_after is not None
            rows.append(
                (
                    _("Certificate"),
                    _("{name}, valid until {date} ({when})").format(
                        name=cert.name, date=f"{cert.not_after:%Y-%m-%d}", when=days_text(cert.days_left or 0)
                    ),
                )
            )
    keys = [key for key in snap.keys if key.key_class == "public"]
    rows.append(
        (
            _("Keys"),
            ", ".join(f"{key.key_type.upper()} {key.bits or ''} id {key.cka_id}".replace("  ", " ") for key in keys)
            or "—",
        )
    )
    lines = [title, *_table(rows)]
    if token.findings:
        for finding in token.findings:
            lines += finding_lines([finding])
            if explain:
                lines.append(f"      {finding.explanation}")
    else:
        lines.append("  ✔ " + _("Healthy: nothing to fix."))
    return lines


def _memory(free: int | None, total: int | None) -> str:
    if free is None and total is None:
        return _("unknown")
    return _("{free} free of {total} bytes").format(
        free="?" if free is None else free, total="?" if total is None else total
    )


def snapshot_rows(snap: TokenSnapshot) -> list[tuple[str, str]]:
    """Every field of a snapshot, in the helpdesk's words."""
    yes_no = {True: _("yes"), False: _("no")}
    return [
        (_("Label"), f"«{snap.display_label}»"),
        (_("Serial"), snap.serial or "—"),
        (_("Manufacturer"), snap.manufacturer or "—"),
        (_("Model"), snap.model or "—"),
        (_("Hardware version"), snap.hardware_version or "—"),
        (_("Firmware version"), snap.firmware_version or "—"),
        (_("Initialised"), yes_no[snap.initialised]),
        (
            _("User PIN"),
            pin_summary(snap.user_pin) + (" · " + _("must be changed") if snap.user_pin.to_be_changed else ""),
        ),
        (
            _("Admin PIN"),
            pin_summary(snap.so_pin) + (" · " + _("must be changed") if snap.so_pin.to_be_changed else ""),
        ),
        (
            _("PIN length"),
            _("{min} to {max} characters").format(
                min="?" if snap.min_pin_length is None else snap.min_pin_length,
                max="?" if snap.max_pin_length is None else snap.max_pin_length,
            ),
        ),
        (_("Public memory"), _memory(snap.free_public_memory, snap.total_public_memory)),
        (_("Token flags"), ", ".join(snap.flags) or "—"),
        (_("Slot"), f"{snap.slot_id}: {snap.slot_description}".strip()),
        (_("Slot maker"), snap.slot_manufacturer or "—"),
        (_("Slot flags"), ", ".join(snap.slot_flags) or "—"),
        (_("Token present"), yes_no[snap.token_present]),
        (_("Module"), snap.module_path),
        (_("Read at"), f"{snap.taken_at:%Y-%m-%d %H:%M:%S %Z}"),
        (_("Read error"), snap.read_error or "—"),
    ]


def certificate_rows(cert: CertificateInfo) -> list[tuple[str, str]]:
    if cert.error:
        return [(_("Object"), f"id {cert.cka_id} «{cert.label}»"), (_("Error"), str(cert.problem))]
    assert cert.not_before is not None and cert.not_after is not None
    return [
        (_("Subject"), cert.subject),
        (_("Issuer"), cert.issuer),
        (_("Serial"), cert.serial),
        (
            _("Valid"),
            _("{start} to {end} ({when})").format(
                start=f"{cert.not_before:%Y-%m-%d %H:%M}",
                end=f"{cert.not_after:%Y-%m-%d %H:%M}",
                when=days_text(cert.days_left or 0),
            ),
        ),
        (_("Key usage"), ", ".join(cert.key_usage) or "—"),
        (_("Extended usage"), ", ".join(cert.extended_key_usage) or "—"),
        (_("SHA-256"), cert.fingerprint_sha256),
        (_("Object"), _("id {id}, label «{label}»").format(id=cert.cka_id or "—", label=cert.label)),
        (_("Key on token"), _("yes") if cert.has_key else _("no: registration unfinished")),
    ]


def key_line(key: KeyInfo) -> str:
    size = f" {key.bits} bits" if key.bits else ""
    cert = _("with certificate") if key.has_certificate else _("no certificate")
    return f"{key.key_class} {key.key_type.upper()}{size} · id {key.cka_id or '—'} «{key.label}» · {cert}"


def render_text(result: ScanResult, *, explain: bool = False) -> str:
    lines = []
    for report in result.modules:
        state = _("loaded") if report.loaded else _("not loaded")
        about = f"{report.description} {report.library_version}".strip() if report.loaded else str(report.problem or "")
        driver = " [" + _("driver") + "]" if report.driver else ""
        lines.append(f"{_('Module')}: {report.path} ({report.source}, {state}){driver} {about}".rstrip())
    if result.findings:
        lines.append("")
        for finding in result.findings:
            lines += finding_lines([finding], indent="")
            if explain:
                lines.append(f"    {finding.explanation}")
    readers = result.reader_list
    if readers:
        lines += ["", *map(reader_line, readers)]
    for token in result.tokens:
        lines += ["", *token_lines(token, explain=explain)]
    if not result.tokens:
        lines += ["", _("No token found.")]
    return "\n".join(lines) + "\n"


def reader_state_text(reader: Reader) -> str:
    if reader.state is ReaderState.TOKEN:
        return _("token «{label}»").format(label=reader.token_label)
    if reader.state is ReaderState.NOT_RECOGNISED:
        return _("something the library cannot read")
    return _("empty")


def reader_line(reader: Reader) -> str:
    """One reader and what is in it, the same words on `scan` and the console."""
    return f"{_('Reader')}: {reader.name} ({Path(reader.module_path).name}): {reader_state_text(reader)}"


def ticket_report(result: ScanResult, token: ScannedToken | None = None) -> str:
    """Markdown for a helpdesk ticket: the workstation, the token(s), every finding explained."""
    tokens = [token] if token else list(result.tokens)
    lines = [
        "# " + _("KAZTOKEN helpdesk report"),
        "",
        # Message ids outside the f-strings: the extractor does not look inside one (Python 3.11).
        "- " + _("Console") + f": kaztoken-helpdesk {core.__version__}",
        "- " + _("Time") + f": {result.taken_at:%Y-%m-%d %H:%M:%S %Z}",
        "- "
        + _("Workstation")
        + f": {socket.gethostname()} ({platform.platform()}), "
        + _("operator")
        + f" {getpass.getuser()}",
        "",
        "## " + _("Modules"),
        "",
    ]
    for report in result.modules:
        lines.append(
            f"- `{report.path}` ({report.source}): "
            + (f"{report.description} {report.library_version}" if report.loaded else str(report.problem))
        )
    readers = result.reader_list
    if readers:
        lines += ["", "## " + _("Readers"), "", *(f"- {reader_line(reader)}" for reader in readers)]
    if result.findings:
        lines += ["", "## " + _("Workstation findings"), "", *map(_finding_item, result.findings)]
    for item in tokens:
        snap = item.snapshot
        lines += ["", f"## «{snap.display_label}» {snap.serial}", "", "### " + _("Findings"), ""]
        lines += [_finding_item(f) for f in item.findings] or ["- " + _("Healthy: nothing to fix.")]
        # Every field, from the same rows as the console's details screen.
        lines += ["", "### " + _("Token"), "", "```", *_table(snapshot_rows(snap)), "```"]
        for number, cert in enumerate(snap.certificates, 1):
            title = "### " + _("Certificate {n}").format(n=number)
            lines += ["", title, "", "```", *_table(certificate_rows(cert)), "```"]
        lines += ["", "### " + _("Objects (keys)"), ""]
        lines += [f"- {key_line(key)}" for key in snap.keys] or ["- " + _("none")]
    return "\n".join(lines) + "\n"


def _finding_item(finding: Finding) -> str:
    fix = ", " + _("fix") + f": {finding.action}" if finding.action else ""
    return f"- **{finding.title}** (`{finding.code}`, {finding.severity}{fix}): {finding.explanation}"
