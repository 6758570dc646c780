"""Plain-text rendering of a scan: the `scan` command's report and the body of a ticket report.

Holds no secret by construction: a snapshot never contains a PIN.
"""

from __future__ import annotations

import getpass
import platform
import socket
from collections.abc import Iterable

import core
from core.findings import Finding, Severity
from core.i18n import N_, _
from core.scan import ScannedToken, ScanResult
from core.snapshot import PinState, PinStatus

MARKS = {Severity.ERROR: "✖", Severity.WARNING: "⚠", Severity.INFO: "ℹ"}


PIN_STATUS_TEXT = {
    PinStatus.OK: N_("ok"),
    PinStatus.COUNT_LOW: N_("wrong PIN entered recently"),
    PinStatus.FINAL_TRY: N_("last try left"),
    PinStatus.LOCKED: N_("locked"),
    PinStatus.NOT_INITIALISED: N_("not set"),
    PinStatus.TO_BE_CHANGED: N_("must be changed"),
}


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
    title = f"KAZTOKEN «{snap.display_label}»" + (f" — serial {snap.serial}" if snap.serial else "")
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
            rows.append((_("Certificate"), _("unreadable: {error}").format(error=cert.error)))
        else:
            assert cert.not_after is not None
            rows.append(
                (
                    _("Certificate"),
                    _("{name}, valid until {date} ({days} days left)").format(
                        name=cert.name, date=f"{cert.not_after:%Y-%m-%d}", days=cert.days_left
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


def render_text(result: ScanResult, *, explain: bool = False) -> str:
    lines = []
    for report in result.modules:
        state = _("loaded") if report.loaded else _("not loaded")
        about = f"{report.description} {report.library_version}".strip() if report.loaded else report.error or ""
        driver = " [" + _("driver") + "]" if report.driver else ""
        lines.append(f"{_('Module')}: {report.path} ({report.source}, {state}){driver} {about}".rstrip())
    if result.findings:
        lines.append("")
        for finding in result.findings:
            lines += finding_lines([finding], indent="")
            if explain:
                lines.append(f"    {finding.explanation}")
    for token in result.tokens:
        lines += ["", *token_lines(token, explain=explain)]
    if not result.tokens:
        lines += ["", _("No token found.")]
    return "\n".join(lines) + "\n"


def ticket_report(result: ScanResult, token: ScannedToken | None = None) -> str:
    """Markdown for a helpdesk ticket: the workstation, the token(s), every finding explained."""
    tokens = [token] if token else list(result.tokens)
    lines = [
        "# " + _("KAZTOKEN helpdesk report"),
        "",
        f"- {_('Console')}: kaztoken-helpdesk {core.__version__}",
        f"- {_('Time')}: {result.taken_at:%Y-%m-%d %H:%M:%S %Z}",
        f"- {_('Workstation')}: {socket.gethostname()} ({platform.platform()}), {_('operator')} {getpass.getuser()}",
        "",
        "## " + _("Modules"),
        "",
    ]
    for report in result.modules:
        lines.append(
            f"- `{report.path}` ({report.source}): "
            + (f"{report.description} {report.library_version}" if report.loaded else f"{report.error}")
        )
    if result.findings:
        lines += ["", "## " + _("Workstation findings"), ""]
        lines += [f"- **{f.title}** (`{f.code}`, {f.severity}): {f.explanation}" for f in result.findings]
    for item in tokens:
        lines += [
            "",
            "## " + f"«{item.snapshot.display_label}» {item.snapshot.serial}",
            "",
            "```",
            *token_lines(item, explain=True),
            "```",
        ]
    return "\n".join(lines) + "\n"
