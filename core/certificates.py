"""X.509 certificates as the helpdesk reads them, parsed with `cryptography`.

A certificate comes off a customer's token, where anyone can write anything: `parse_certificate` takes any
bytes and always answers. What it cannot read it describes in the helpdesk's words (`CertificateInfo.problem`),
never with the parser's own debug text, and no library warning reaches stderr (the console's screen).
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from core.i18n import N_, Text

if TYPE_CHECKING:
    from cryptography import x509

_KEY_USAGES = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
)

# A customer's certificate is one or two kilobytes; anything this big is not one, and is not worth parsing.
MAX_CERTIFICATE_BYTES = 64 * 1024

# Why a certificate cannot be read, as the helpdesk tells it. Each fills "… could not be read: {error}."
EMPTY = N_("the object holds no data")
TOO_LARGE = N_("it is far too large to be a certificate ({size} bytes)")
PEM_TEXT = N_("it is stored as text (PEM) instead of the binary form (DER) programs read from a token")
NOT_A_CERTIFICATE = N_("it is not a certificate")
TRUNCATED = N_("it is damaged: part of it is missing (cut short)")
EXTRA_DATA = N_("it is damaged: there is extra data after its end")
BAD_VERSION = N_("it uses a format programs do not accept (version {version})")
VERSION_DAMAGED = N_("it is damaged: its format version cannot be read")
DATES_DAMAGED = N_("it is damaged: its validity dates are not valid dates")
NAMES_DAMAGED = N_("it is damaged: the name of its owner or issuer cannot be read")
KEY_DAMAGED = N_("it is damaged: its public key cannot be read")
EXTENSION_TWICE = N_("an extension appears twice in it ({extension})")
EXTENSION_DAMAGED = N_("it is damaged: one of its extensions cannot be read")
DAMAGED = N_("it is damaged: its contents do not follow the certificate format")

# Where cryptography's parse error says the damage is (its text is only looked at, never shown): the first match
# picks the helpdesk's sentence; anything else is DAMAGED.
_ERROR_PLACES = (
    ("TbsCertificate::version", VERSION_DAMAGED),
    ("TbsCertificate::validity", DATES_DAMAGED),
    ("TbsCertificate::subject", NAMES_DAMAGED),
    ("TbsCertificate::issuer", NAMES_DAMAGED),
    ("AttributeTypeValue", NAMES_DAMAGED),
    ("TbsCertificate::spki", KEY_DAMAGED),
    ("TbsCertificate::raw_extensions", EXTENSION_DAMAGED),
    ("ShortData", TRUNCATED),
    ("ExtraData", EXTRA_DATA),
)


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    """One CKO_CERTIFICATE object. `problem` is set (and the X.509 fields empty) when the value is unreadable."""

    cka_id: str
    label: str
    has_key: bool
    subject: str = ""
    common_name: str = ""
    issuer: str = ""
    serial: str = ""
    not_before: datetime | None = None
    not_after: datetime | None = None
    days_left: int | None = None
    key_usage: tuple[str, ...] = ()
    extended_key_usage: tuple[str, ...] = ()
    fingerprint_sha256: str = ""
    # Extensions marked critical that are not known (dotted OIDs): programs must refuse such a certificate.
    unknown_critical_extensions: tuple[str, ...] = ()
    serial_positive: bool = True  # RFC 5280 wants a positive serial; some programs refuse zero or negative ones
    problem: Text | None = None  # why it cannot be read, translated when shown

    @property
    def error(self) -> str | None:
        """Why it cannot be read, in English: stable text for `scan --json`; None when it was read."""
        return self.problem.english if self.problem else None

    @property
    def name(self) -> str:
        """How the helpdesk names it: the CN, else the object label, else the CKA_ID."""
        return self.common_name or self.label or (f"id {self.cka_id}" if self.cka_id else "?")


@dataclass(frozen=True, slots=True)
class RawCertificate:
    """A certificate object as a child reading a library sends it (core.isolation): its bytes, parsed by the
    parent, which imports the parser while the children read (cryptography's import costs more than reading 64
    tokens)."""

    cka_id: str
    label: str
    has_key: bool
    der: bytes

    def parsed(self, now: datetime) -> CertificateInfo:
        return parse_certificate(self.der, cka_id=self.cka_id, label=self.label, has_key=self.has_key, now=now)


class _Unreadable(Exception):
    def __init__(self, problem: Text) -> None:
        super().__init__(problem.english)
        self.problem = problem


# warnings.catch_warnings swaps the process-wide filters and puts them back on exit: two threads (the console's
# scan and an action's snapshot) doing so at once could restore each other's, so parses take turns.
_QUIET = threading.Lock()


@contextmanager
def _quiet() -> Iterator[None]:
    """No warning from the parser reaches stderr: a negative serial, say, makes cryptography warn, and on the
    console stderr is painted over the screen. What such warnings are about is reported as findings instead."""
    with _QUIET, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _outer_problem(der: bytes) -> Text | None:
    """What is wrong with the bytes as a whole, judged from the outer DER header alone (never raises)."""
    if not der:
        return Text(EMPTY)
    if len(der) > MAX_CERTIFICATE_BYTES:
        return Text(TOO_LARGE, {"size": len(der)})
    if der.lstrip()[:11] == b"-----BEGIN ":
        return Text(PEM_TEXT)
    if der[0] != 0x30:  # a certificate is a SEQUENCE
        return Text(NOT_A_CERTIFICATE)
    if len(der) < 2:
        return Text(TRUNCATED)
    if der[1] < 0x80:
        header, length = 2, der[1]
    elif der[1] == 0x80 or der[1] - 0x80 > 4:  # indefinite length (BER, not DER) or absurdly long
        return Text(DAMAGED)
    else:
        header = 2 + der[1] - 0x80
        if len(der) < header:
            return Text(TRUNCATED)
        length = int.from_bytes(der[2:header], "big")
    if header + length > len(der):
        return Text(TRUNCATED)
    if header + length < len(der):
        return Text(EXTRA_DATA)
    if length == 0 or der[header] != 0x30:  # its first part, the signed body, is a SEQUENCE too
        return Text(NOT_A_CERTIFICATE)
    return None


def load_parser() -> None:
    """Import what parsing needs: cryptography's X.509 parser (25 ms, a fifth of a whole `scan`) and hashlib
    (OpenSSL's libcrypto, for the fingerprints: 3 ms). core.isolation does it while the children read, so the
    first certificate does not wait for them."""
    import hashlib  # noqa: F401

    import cryptography.x509  # noqa: F401


def _parse_problem(error: Exception) -> Text:
    from cryptography import x509

    if isinstance(error, x509.InvalidVersion):
        return Text(BAD_VERSION, {"version": error.parsed_version + 1})  # X.509 counts from 0: v3 is 2
    message = str(error)
    return Text(next((problem for place, problem in _ERROR_PLACES if place in message), DAMAGED))


def _common_name(name: x509.Name) -> str:
    from cryptography.x509.oid import NameOID

    values = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(values[0].value) if values else ""


def _key_usage(extensions: x509.Extensions) -> tuple[str, ...]:
    from cryptography import x509

    try:
        usage = extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return ()
    names = [name for name in _KEY_USAGES if getattr(usage, name)]
    if usage.key_agreement:
        names += [name for name in ("encipher_only", "decipher_only") if getattr(usage, name)]
    return tuple(names)


def _extended_key_usage(extensions: x509.Extensions) -> tuple[str, ...]:
    from cryptography import x509

    try:
        usage = extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(oid._name if oid._name != "Unknown OID" else oid.dotted_string for oid in usage)


def _extensions(cert: x509.Certificate) -> x509.Extensions:
    """The extensions, parsed on first access: a duplicated or damaged one only shows here."""
    from cryptography import x509

    try:
        return cert.extensions
    except x509.DuplicateExtension as error:
        name = error.oid._name if error.oid._name != "Unknown OID" else error.oid.dotted_string
        raise _Unreadable(Text(EXTENSION_TWICE, {"extension": name})) from error
    except Exception as error:  # ValueError, UnsupportedGeneralNameType…: each is "an extension is damaged"
        raise _Unreadable(Text(EXTENSION_DAMAGED)) from error


def _names(cert: x509.Certificate) -> tuple[str, str, str]:
    try:
        return cert.subject.rfc4514_string(), _common_name(cert.subject), cert.issuer.rfc4514_string()
    except Exception as error:
        raise _Unreadable(Text(NAMES_DAMAGED)) from error


def _dates(cert: x509.Certificate) -> tuple[datetime, datetime]:
    try:
        return cert.not_valid_before_utc, cert.not_valid_after_utc
    except Exception as error:
        raise _Unreadable(Text(DATES_DAMAGED)) from error


def days_between(now: datetime, then: datetime) -> int:
    """Whole days from now until then (negative when then is past), counted the way people count them."""
    return (then.date() - now.date()).days


def _read(der: bytes, info: CertificateInfo, now: datetime) -> CertificateInfo:
    from cryptography import x509

    problem = _outer_problem(der)
    if problem:
        raise _Unreadable(problem)
    try:
        cert = x509.load_der_x509_certificate(der)
    except Exception as error:
        raise _Unreadable(_parse_problem(error)) from error
    subject, common_name, issuer = _names(cert)
    not_before, not_after = _dates(cert)
    extensions = _extensions(cert)
    serial = cert.serial_number
    return replace(
        info,
        subject=subject,
        common_name=common_name,
        issuer=issuer,
        serial=f"{serial:X}",
        serial_positive=serial > 0,
        not_before=not_before,
        not_after=not_after,
        days_left=days_between(now, not_after),
        key_usage=_key_usage(extensions),
        extended_key_usage=_extended_key_usage(extensions),
        unknown_critical_extensions=tuple(
            extension.oid.dotted_string
            for extension in extensions
            if extension.critical and isinstance(extension.value, x509.UnrecognizedExtension)
        ),
        # The stored bytes are the whole certificate (_outer_problem); hashing them is 30× cheaper than asking
        # cryptography to encode the parsed certificate again and hash that.
        fingerprint_sha256=_sha256(der),
    )


def parse_certificate(
    der: bytes, *, cka_id: str, label: str, has_key: bool, now: datetime | None = None
) -> CertificateInfo:
    """What the helpdesk needs to know about one certificate object; total: any bytes give an answer."""
    now = now or datetime.now(UTC)
    info = CertificateInfo(cka_id=cka_id, label=label, has_key=has_key)
    try:
        with _quiet():
            return _read(der, info, now)
    except _Unreadable as error:
        return replace(info, problem=error.problem)
    except Exception:
        # Bytes from a token are hostile: whatever else a parser raises on them, the certificate is damaged.
        return replace(info, problem=Text(DAMAGED))


def _sha256(der: bytes) -> str:
    """The certificate's SHA-256 fingerprint as viewers print it. hashlib is imported by `load_parser` (or here),
    in the parent that parses: the library hosts, forked before, never need it."""
    import hashlib

    return hashlib.sha256(der).digest().hex(":").upper()
