"""Findings: what is wrong, in the helpdesk's words, and which action fixes it.

The catalogue below is the one place where a finding's severity, action and texts are defined. Texts are
message ids with `{placeholders}`, translated when read, so a finding made before a language switch shows
in the new language.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from core.i18n import N_, Text, _
from core.untrusted import visible


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"

    @property
    def rank(self) -> int:
        """Worst first: errors sort before warnings before notes."""
        return (Severity.ERROR, Severity.WARNING, Severity.INFO).index(self)


class Action(StrEnum):
    PERSONALISE = "personalise"
    CHANGE_PIN = "change-pin"
    UNBLOCK = "unblock"
    RE_ENROL = "re-enrol"
    FORMAT = "format"
    INSTALL_DRIVER = "install-driver"


# The actions' full names: the console's help and palette, the audit trail's readers.
ACTION_NAMES: MappingProxyType[Action, str] = MappingProxyType(
    {
        Action.PERSONALISE: N_("Personalise the token"),
        Action.CHANGE_PIN: N_("Change a PIN"),
        Action.UNBLOCK: N_("Unblock the user PIN"),
        Action.RE_ENROL: N_("Re-enrol the certificate"),
        Action.FORMAT: N_("Format the token"),
        Action.INSTALL_DRIVER: N_("Install the KAZTOKEN driver"),
    }
)


@dataclass(frozen=True, slots=True)
class FindingKind:
    """A catalogue entry: how bad, which action fixes it, and the texts (message ids) that say so."""

    severity: Severity
    action: Action | None
    title: str
    explanation: str


CATALOGUE: MappingProxyType[str, FindingKind] = MappingProxyType(
    {
        "driver-missing": FindingKind(
            Severity.ERROR,
            Action.INSTALL_DRIVER,
            N_("KAZTOKEN driver not installed"),
            N_(
                "No KAZTOKEN PKCS#11 library was found on this computer{where}. Install the KAZTOKEN driver "
                "with the token unplugged (if it was plugged in during the install, unplug it and plug it "
                "in again afterwards); antivirus may block the installer and admin rights may be needed."
            ),
        ),
        "driver-broken": FindingKind(
            Severity.ERROR,
            Action.INSTALL_DRIVER,
            N_("KAZTOKEN driver fails to load"),
            N_("The PKCS#11 library {path} is there but does not work: {error}. {remedy}"),
        ),
        "config-broken": FindingKind(
            Severity.WARNING,
            None,
            N_("Settings file unreadable: defaults used"),
            N_(
                "The settings file {path} could not be read ({error}). The console runs on its defaults; "
                "fix or remove the file."
            ),
        ),
        "driver-hangs": FindingKind(
            Severity.ERROR,
            None,
            N_("A token library stopped answering"),
            N_(
                "The PKCS#11 library {path} did not answer in {call} (waited {detail}); the console stopped waiting "
                "and carries on without it. {remedy}"
            ),
        ),
        "driver-crashed": FindingKind(
            Severity.ERROR,
            None,
            N_("A token library crashed"),
            N_("The PKCS#11 library {path} crashed in {call} ({detail}); the console was not affected. {remedy}"),
        ),
        "not-a-kaztoken": FindingKind(
            Severity.INFO,
            None,
            N_("Not a KAZTOKEN"),
            N_(
                "This device is «{device}», not a KAZTOKEN: the customer may have brought another device (a bank "
                "card, a TPM, the computer's certificate store). Internet Banking signs only with the KAZTOKEN."
            ),
        ),
        "object-unreadable": FindingKind(
            Severity.WARNING,
            None,
            N_("Some objects on the token could not be read"),
            N_(
                "{count} object(s) on the token could not be read; everything else is shown. If the customer's "
                "applet fails too, the token may be damaged."
            ),
        ),
        "no-token": FindingKind(
            Severity.ERROR,
            None,
            N_("No token plugged in"),
            N_(
                "The driver works but sees no KAZTOKEN. Plug the token in (try another USB port, without a "
                "hub). The driver must be installed before the token is first plugged in: if it was plugged in "
                "during the install, unplug it and plug it in again."
            ),
        ),
        # Readers and the smart-card service (core.pcsc).
        "pcsc-not-running": FindingKind(
            Severity.ERROR,
            None,
            N_("Smart-card service not running"),
            N_(
                "The token library ({path}) reaches tokens through the smart-card service, and that service "
                "is not running, so no reader and no token can be seen, whatever is plugged in. Start the "
                "smart-card service «pcscd» as an administrator («sudo systemctl start pcscd»), then rescan."
            ),
        ),
        "reader-empty": FindingKind(
            Severity.ERROR,
            None,
            N_("Reader empty: {name}"),
            N_(
                "The reader «{name}» is connected but has no token in it: the token is not pushed in all the "
                "way, or the USB port is bad. Push it in firmly or try another USB port (without a hub), then "
                "rescan."
            ),
        ),
        "token-not-recognised": FindingKind(
            Severity.ERROR,
            None,
            N_("Token not recognised in {name}"),
            N_(
                "Something is in the reader «{name}» but the library {path} cannot read it ({error}): the "
                "wrong driver for this token, or a damaged token. Check it is a KAZTOKEN and that the KAZTOKEN "
                "driver is installed; try it on another computer. If no computer reads it, the token is damaged."
            ),
        ),
        "token-not-initialised": FindingKind(
            Severity.ERROR,
            Action.FORMAT,
            N_("Token not initialised"),
            N_(
                "The token has no file system or security policy yet: nothing can be stored on it. Format it "
                "(«Форматировать»), then personalise it."
            ),
        ),
        "token-unreadable": FindingKind(
            Severity.ERROR,
            None,
            N_("Token could not be read"),
            N_("Reading the token failed: {error}. Unplug it, plug it in again and rescan."),
        ),
        "label-missing": FindingKind(
            Severity.WARNING,
            Action.PERSONALISE,
            N_("Token has no name"),
            N_(
                "The customer's applet shows «KAZTOKEN <no label> - ?»: the token is empty and ready for "
                "registration, or was never personalised. Personalise it («Персонализация токена»): a token "
                "name, a new user PIN."
            ),
        ),
        "profile-empty": FindingKind(
            Severity.INFO,
            None,
            N_("No signing profile yet (normal before the first registration)"),
            N_(
                "There is no key and no certificate on the token: the normal state before the customer's first "
                "registration. The applet will say «На данном токене "
                "профиль не найден, создать?»: the customer registers through Internet Banking, which "
                "creates the profile."
            ),
        ),
        "registration-unfinished": FindingKind(
            Severity.ERROR,
            Action.RE_ENROL,
            N_("Registration unfinished: do not format"),
            # The detail says which half is missing and whether it can be finished at all.
            N_("{detail} Never format the token meanwhile (the bank's guide)."),
        ),
        "user-pin-not-initialised": FindingKind(
            Severity.ERROR,
            Action.PERSONALISE,
            N_("User PIN not set"),
            N_("The token has no user PIN yet, so the customer cannot log in. Personalise the token to set one."),
        ),
        "user-pin-count-low": FindingKind(
            Severity.WARNING,
            # Not "change the PIN": that needs the current PIN and spends another try when the customer is unsure.
            Action.UNBLOCK,
            N_("Wrong user PIN entered recently{tries}"),
            N_(
                "A wrong user PIN was entered since the last correct one. Each wrong PIN spends a try; when "
                "none are left the PIN locks. Check the PIN with the customer before anyone tries again "
                "(«Ошибка: 0200040» is often a wrong PIN or key file, not a broken token); if they are not sure "
                "of it, set a new user PIN with the admin PIN («Разблокировать»), which spends no user try."
            ),
        ),
        "user-pin-final-try": FindingKind(
            Severity.ERROR,
            Action.UNBLOCK,
            N_("Last user PIN try left"),
            N_(
                "One more wrong user PIN locks the token. Do not guess: if the customer is unsure, set a new "
                "user PIN with the admin PIN («Разблокировать»).{note}"
            ),
        ),
        "user-pin-locked": FindingKind(
            Severity.ERROR,
            Action.UNBLOCK,
            N_("User PIN locked"),
            N_(
                "Too many wrong user PINs: the token refuses even the right one. Unblock it with the admin "
                "PIN («Разблокировать»), which sets a new user PIN; the keys and certificates stay.{note}"
            ),
        ),
        "pin-locked-temporarily": FindingKind(
            Severity.ERROR,
            None,  # nothing to do but wait, or ask the TPM's owner: unblocking and formatting are refused too
            N_("PIN locked for now: the TPM's protection against guessing"),
            N_(
                "The token refused the right PIN as locked, yet it does not mark the PIN as locked: this is a "
                "temporary lockout, the TPM's protection against guessing after too many wrong PINs. It wears off "
                "after a while, or the TPM's owner clears it (tpm2_dictionarylockout --clear-lockout). The PIN, "
                "the keys and the certificates are not lost: no new token is needed, do not format. Meanwhile do "
                "not try more PINs; afterwards try the right one once."
            ),
        ),
        "user-pin-to-be-changed": FindingKind(
            Severity.WARNING,
            Action.CHANGE_PIN,
            N_("User PIN must be changed"),
            N_(
                "The token asks for a new user PIN: it is still the factory default. Change it («Изменить…») under the "
                "bank's rules: 8+ characters, upper- and lower-case Latin letters, no runs like 123 or abc."
            ),
        ),
        "so-pin-count-low": FindingKind(
            Severity.WARNING,
            None,
            N_("Wrong admin PIN entered recently{tries}"),
            N_(
                "A wrong admin PIN was entered since the last correct one. If the admin PIN locks, the user "
                "PIN can no longer be unblocked: find the right admin PIN before trying again."
            ),
        ),
        "so-pin-final-try": FindingKind(
            Severity.ERROR,
            None,
            N_("Last admin PIN try left"),
            N_(
                "One more wrong admin PIN locks the admin PIN for good: the user PIN could then never be "
                "unblocked. Do not guess."
            ),
        ),
        "so-pin-locked": FindingKind(
            Severity.ERROR,
            None,  # formatting needs the admin PIN too (C_InitToken answers CKR_PIN_LOCKED)
            N_("Admin PIN locked"),
            N_(
                "The admin PIN is locked: the user PIN can no longer be unblocked, and the token can no longer "
                "be formatted. While the user PIN works the token can still sign; otherwise the customer needs a "
                "new token and a new registration."
            ),
        ),
        "so-pin-to-be-changed": FindingKind(
            Severity.WARNING,
            Action.CHANGE_PIN,
            N_("Admin PIN must be changed"),
            N_(
                "The token asks for a new admin PIN: it is still the factory default. Anyone who knows the "
                "default can reset the user PIN."
            ),
        ),
        "user-pin-default": FindingKind(
            Severity.WARNING,
            Action.CHANGE_PIN,
            N_("User PIN is still the factory default"),
            N_(
                "The token says its user PIN is still the factory one from the guide: anyone holding the token "
                "can sign with it. Change it («Изменить…») under the bank's rules."
            ),
        ),
        "so-pin-default": FindingKind(
            Severity.WARNING,
            Action.CHANGE_PIN,
            N_("Admin PIN is still the factory default"),
            N_(
                "The token says its admin PIN is still the factory one from the guide: anyone who knows the "
                "default can reset the user PIN. Change the admin PIN."
            ),
        ),
        "certificate-expired": FindingKind(
            Severity.ERROR,
            Action.RE_ENROL,
            N_("Certificate expired {days} days ago ({name})"),
            N_(
                "The certificate «{name}» was valid until {not_after}. Internet Banking will refuse "
                "signatures made with it: the customer needs a new certificate (re-enrolment)."
            ),
        ),
        "certificate-expiring": FindingKind(
            Severity.WARNING,
            Action.RE_ENROL,
            N_("Certificate expires in {days} days ({name})"),
            N_(
                "The certificate «{name}» is valid until {not_after}. Re-enrol before then so the customer "
                "can keep signing."
            ),
        ),
        "certificate-not-yet-valid": FindingKind(
            Severity.WARNING,
            None,
            N_("Certificate not valid yet ({name})"),
            N_(
                "The certificate «{name}» becomes valid on {not_before}. If that date looks wrong, check "
                "this computer's clock and time zone."
            ),
        ),
        "certificate-unreadable": FindingKind(
            Severity.WARNING,
            None,
            N_("Unreadable certificate on the token"),
            N_("A certificate object ({name}) could not be read: {error}. Programs cannot use it."),
        ),
        "certificate-unknown-critical-extension": FindingKind(
            Severity.WARNING,
            Action.RE_ENROL,
            N_("Programs will refuse this certificate ({name})"),
            N_(
                "The certificate «{name}» carries an extension marked critical that programs do not know "
                "({extensions}). A program must refuse a certificate with a critical extension it does not "
                "understand, so signing with it fails. The customer needs a new certificate (re-enrolment)."
            ),
        ),
        "certificate-serial-invalid": FindingKind(
            Severity.WARNING,
            Action.RE_ENROL,
            N_("Certificate has a forbidden serial number ({name})"),
            N_(
                "The serial number of the certificate «{name}» is zero or negative, which the rules for "
                "certificates forbid. Some programs already refuse such a certificate and more will; if signing "
                "fails, the customer needs a new certificate (re-enrolment)."
            ),
        ),
        "duplicate-id": FindingKind(
            Severity.WARNING,
            Action.RE_ENROL,
            N_("Several keys or certificates share one ID ({id})"),
            N_(
                "{detail} Programs find a certificate's key by this ID, so which key signs, or which "
                "certificate goes with it, is left to chance: a program may pick the wrong one and the bank then "
                "refuses the signature. Re-enrolment puts one new key pair and its certificate on the token and "
                "removes all the others."
            ),
        ),
    }
)


_CATALOGUE_ACTION: Any = object()

# Placeholders a rule may leave out: they read as nothing.
OPTIONAL_PLACEHOLDERS: MappingProxyType[str, str] = MappingProxyType({"where": "", "tries": "", "note": ""})


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem (or note) about the workstation or a token. `params` fill the texts' placeholders;
    `action` is the catalogue's unless a rule knows this token needs another (or none)."""

    code: str
    params: MappingProxyType[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    action: Action | None = None

    @classmethod
    def of(cls, code: str, *, action: Action | None = _CATALOGUE_ACTION, **params: Any) -> Finding:
        if code not in CATALOGUE:
            raise KeyError(f"unknown finding code {code!r}")
        if action is _CATALOGUE_ACTION:
            action = CATALOGUE[code].action
        return cls(code, MappingProxyType(params), action)

    @property
    def kind(self) -> FindingKind:
        return CATALOGUE[self.code]

    @property
    def severity(self) -> Severity:
        return self.kind.severity

    @property
    def title(self) -> str:
        return _(self.kind.title).format_map(self._texts())

    @property
    def explanation(self) -> str:
        return _(self.kind.explanation).format_map(self._texts())

    def _texts(self) -> dict[str, Any]:
        texts: dict[str, Any] = dict(OPTIONAL_PLACEHOLDERS)
        for key, value in self.params.items():
            # `detail`, `note` and `remedy` hold message ids of their own, a Text is one with its parameters;
            # other strings are data (paths, names, a certificate's CN, a library's error): shown visibly,
            # whatever a token put in them.
            if isinstance(value, Text):
                texts[key] = visible(str(value))
            elif key in ("detail", "note", "remedy"):
                texts[key] = _(value)
            else:
                texts[key] = visible(value) if isinstance(value, str) else value
        if self.params.get("tries_left") is not None:
            texts["tries"] = _(": {tries_left} tries left").format(tries_left=self.params["tries_left"])
        return texts

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "severity": str(self.severity),
            "title": self.title,
            "explanation": self.explanation,
            "action": str(self.action) if self.action else None,
        }


def worst_first(findings: list[Finding]) -> list[Finding]:
    """Worst first; within a severity, a locked or last-try user PIN leads: unblocking is what the customer
    needs before anything else can be done with the token."""
    return sorted(findings, key=lambda finding: (finding.severity.rank, finding.action is not Action.UNBLOCK))
