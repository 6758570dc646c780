"""Diagnostic rules: small pure functions from a snapshot (or the module reports) to findings.

Each rule looks at one thing. `diagnose_token` and `diagnose_workstation` run them all; adding a rule is
adding a function to a tuple.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

from core.certificates import CertificateInfo
from core.findings import Finding, worst_first
from core.i18n import N_
from core.modules import ModuleReport
from core.snapshot import PinState, PinStatus, TokenSnapshot

EXPIRY_WARNING_DAYS = 30

TokenRule = Callable[[TokenSnapshot], Iterable[Finding]]


def _usable(snapshot: TokenSnapshot) -> bool:
    """Rules about labels, PINs and objects only make sense on an initialised token that could be read."""
    return snapshot.initialised


def rule_not_initialised(snapshot: TokenSnapshot) -> Iterable[Finding]:
    if not snapshot.initialised:
        yield Finding.of("token-not-initialised")


def rule_unreadable(snapshot: TokenSnapshot) -> Iterable[Finding]:
    if snapshot.read_error:
        yield Finding.of("token-unreadable", error=snapshot.read_error)


def rule_label(snapshot: TokenSnapshot) -> Iterable[Finding]:
    if _usable(snapshot) and not snapshot.label.strip():
        yield Finding.of("label-missing")


def rule_profile(snapshot: TokenSnapshot) -> Iterable[Finding]:
    if _usable(snapshot) and not snapshot.read_error and not snapshot.certificates and not snapshot.keys:
        yield Finding.of("profile-empty")


def rule_registration(snapshot: TokenSnapshot) -> Iterable[Finding]:
    if not _usable(snapshot) or snapshot.read_error:
        return
    orphan_keys = {key.cka_id for key in snapshot.keys if not key.has_certificate}
    orphan_certs = [cert for cert in snapshot.certificates if not cert.has_key]
    if orphan_keys:
        yield Finding.of(
            "registration-unfinished",
            detail=N_(
                "There is a key on the token without its certificate: a registration was interrupted (connection "
                "lost or wrong data). It must be finished: re-enrolment continues it."
            ),
            ids=sorted(orphan_keys),
        )
    elif orphan_certs:
        yield Finding.of(
            "registration-unfinished",
            detail=N_(
                "There is a certificate on the token without its key: it cannot sign, and this registration cannot "
                "be finished. Re-enrol for a new key pair and certificate; the old certificate goes at its last step."
            ),
            ids=sorted(cert.cka_id for cert in orphan_certs),
        )


_SO_LOCKED_NOTE = N_(
    " But the admin PIN is locked too, so it cannot unblock anything, nor format the token: the customer needs a "
    "new token and a new registration."
)


def _pin_findings(pin: PinState, role: str, *, so_locked: bool = False) -> Iterable[Finding]:
    codes = {
        PinStatus.COUNT_LOW: f"{role}-pin-count-low",
        PinStatus.FINAL_TRY: f"{role}-pin-final-try",
        PinStatus.LOCKED: f"{role}-pin-locked",
    }
    if pin.status in codes:
        code = codes[pin.status]
        counts: dict[str, Any] = {"tries_left": pin.tries_left, "max_tries": pin.max_tries}
        if so_locked and code in ("user-pin-final-try", "user-pin-locked"):
            # Unblocking and formatting both need the admin PIN, which the token now refuses.
            yield Finding.of(code, action=None, note=_SO_LOCKED_NOTE, **counts)
        else:
            yield Finding.of(code, **counts)
    if pin.to_be_changed and pin.status is not PinStatus.LOCKED:
        yield Finding.of(f"{role}-pin-to-be-changed")


def rule_user_pin(snapshot: TokenSnapshot) -> Iterable[Finding]:
    if not _usable(snapshot):
        return
    if snapshot.user_pin.status is PinStatus.NOT_INITIALISED:
        yield Finding.of("user-pin-not-initialised")
    else:
        yield from _pin_findings(snapshot.user_pin, "user", so_locked=snapshot.so_pin.status is PinStatus.LOCKED)


def rule_pin_locked_for_now(snapshot: TokenSnapshot) -> Iterable[Finding]:
    """A login was refused as locked while the flags say nothing (a TPM's dictionary-attack lockout): one
    finding for the token, whichever PINs met it; never "user PIN locked", whose remedy (unblock) cannot work."""
    if _usable(snapshot) and PinStatus.LOCKED_FOR_NOW in (snapshot.user_pin.status, snapshot.so_pin.status):
        yield Finding.of("pin-locked-temporarily")


def rule_so_pin(snapshot: TokenSnapshot) -> Iterable[Finding]:
    # An uninitialised slot's SO flags mean nothing: SoftHSM2 claims SO_PIN_LOCKED on its free slot.
    if _usable(snapshot):
        yield from _pin_findings(snapshot.so_pin, "so")


_NO_DEFAULT_FINDING = (PinStatus.NOT_INITIALISED, PinStatus.LOCKED, PinStatus.LOCKED_FOR_NOW)


def rule_default_pins(snapshot: TokenSnapshot) -> Iterable[Finding]:
    """Factory PINs, as the vendor extension's NOT_DEFAULT flags tell without a login. A PIN not set or locked
    has worse findings of its own; a PIN the token already asks to change is `*-pin-to-be-changed`."""
    if not _usable(snapshot):
        return
    for pin, code in ((snapshot.user_pin, "user-pin-default"), (snapshot.so_pin, "so-pin-default")):
        if pin.default and not pin.to_be_changed and pin.status not in _NO_DEFAULT_FINDING:
            yield Finding.of(code)


def certificate_findings(cert: CertificateInfo, now: datetime) -> Iterable[Finding]:
    if cert.problem:
        yield Finding.of("certificate-unreadable", name=cert.name, error=cert.problem)
        return
    if cert.unknown_critical_extensions:
        yield Finding.of(
            "certificate-unknown-critical-extension",
            name=cert.name,
            extensions=", ".join(cert.unknown_critical_extensions),
        )
    if not cert.serial_positive:
        yield Finding.of("certificate-serial-invalid", name=cert.name)
    assert cert.not_before is not None and cert.not_after is not None and cert.days_left is not None
    dates: dict[str, Any] = {
        "name": cert.name,
        "not_after": f"{cert.not_after:%Y-%m-%d}",
        "not_before": f"{cert.not_before:%Y-%m-%d}",
    }
    if cert.days_left < 0:
        yield Finding.of("certificate-expired", days=-cert.days_left, **dates)
    elif cert.days_left <= EXPIRY_WARNING_DAYS:
        yield Finding.of("certificate-expiring", days=cert.days_left, **dates)
    if cert.not_before > now:
        yield Finding.of("certificate-not-yet-valid", **dates)


def rule_certificates(snapshot: TokenSnapshot) -> Iterable[Finding]:
    for cert in snapshot.certificates:
        yield from certificate_findings(cert, snapshot.taken_at)


def rule_unreadable_objects(snapshot: TokenSnapshot) -> Iterable[Finding]:
    if snapshot.unreadable_objects:
        yield Finding.of("object-unreadable", count=snapshot.unreadable_objects)


def rule_device(snapshot: TokenSnapshot) -> Iterable[Finding]:
    if not snapshot.kaztoken:
        yield Finding.of("not-a-kaztoken", device=snapshot.device_name)


_SHARED_ID_DETAIL = {
    (True, False): N_("There are several key pairs under this ID."),
    (False, True): N_("There are several certificates for one key under this ID."),
    (True, True): N_("There are several key pairs and several certificates under this ID."),
}


def rule_duplicate_ids(snapshot: TokenSnapshot) -> Iterable[Finding]:
    """Two key pairs, or two certificates for a key, under one CKA_ID: programs pair keys and certificates by it.

    A pair is seen by its public half (the private one stays hidden until a login), or by its private half
    where a token shows that. Certificates without a key under their ID are already `registration-unfinished`,
    and cannot be mistaken for the certificate of a key."""
    if not _usable(snapshot) or snapshot.read_error:
        return
    public = Counter(key.cka_id for key in snapshot.keys if key.key_class == "public")
    private = Counter(key.cka_id for key in snapshot.keys if key.key_class == "private")
    certificates = Counter(cert.cka_id for cert in snapshot.certificates)
    for cka_id in sorted(public | private | certificates):
        pairs = max(public[cka_id], private[cka_id])
        detail = _SHARED_ID_DETAIL.get((pairs > 1, pairs > 0 and certificates[cka_id] > 1))
        if detail:
            yield Finding.of("duplicate-id", id=cka_id or "—", detail=detail)


TOKEN_RULES: tuple[TokenRule, ...] = (
    rule_device,
    rule_unreadable_objects,
    rule_not_initialised,
    rule_unreadable,
    rule_label,
    rule_profile,
    rule_registration,
    rule_duplicate_ids,
    rule_user_pin,
    rule_so_pin,
    rule_default_pins,
    rule_pin_locked_for_now,
    rule_certificates,
)


def rule_pin_tries(snapshot: TokenSnapshot) -> Iterable[Finding]:
    """Tries running out or locked, on any device: the customer's PIN is the customer's problem whatever it is."""
    if not _usable(snapshot):
        return
    if snapshot.user_pin.status is not PinStatus.NOT_INITIALISED:
        yield from _pin_findings(snapshot.user_pin, "user", so_locked=snapshot.so_pin.status is PinStatus.LOCKED)
    yield from _pin_findings(snapshot.so_pin, "so")


# Another device (a PIV card, a TPM, the OS trust store): what it is, and its PINs' tries; the KAZTOKEN's own rules
# (profile, registration, certificates to re-enrol, a name to personalise) would be wrong advice for it.
OTHER_DEVICE_RULES: tuple[TokenRule, ...] = (rule_device, rule_unreadable, rule_pin_tries, rule_pin_locked_for_now)


def diagnose_token(snapshot: TokenSnapshot) -> list[Finding]:
    rules = TOKEN_RULES if snapshot.kaztoken else OTHER_DEVICE_RULES
    return worst_first([finding for rule in rules for finding in rule(snapshot)])


def diagnose_workstation(
    reports: Sequence[ModuleReport], tokens: Sequence[TokenSnapshot], config_error: tuple[str, str] | None = None
) -> list[Finding]:
    """Findings about the machine rather than one token: driver, settings, nothing plugged in.

    `config_error` is (path, error) when the settings file could not be read.
    """
    findings = []
    if config_error:
        findings.append(Finding.of("config-broken", path=config_error[0], error=config_error[1]))
    drivers = [report for report in reports if report.driver]
    missing = [report for report in drivers if not report.found]
    broken = [report for report in drivers if report.found and (not report.loaded or report.error)]
    working = [report for report in drivers if report.loaded and not report.error]
    for report in reports:
        if report.failure is not None:
            code = "driver-hangs" if report.failure.kind == "hang" else "driver-crashed"
            findings.append(
                Finding.of(
                    code,
                    path=report.path,
                    call=report.failure.call,
                    detail=report.failure.detail,
                    remedy=report.remedy,
                )
            )
    for report in broken:
        if report.failure is None:
            findings.append(Finding.of("driver-broken", path=report.path, error=report.problem, remedy=report.remedy))
    if not working and not broken:
        where = ", ".join(report.path for report in missing)
        findings.append(Finding.of("driver-missing", where=f" ({where})" if where else ""))
    if any(report.loaded for report in reports) and not tokens:
        findings.append(Finding.of("no-token"))
    return worst_first(findings)
