"""X.509 certificates as the helpdesk reads them, parsed with `cryptography`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

_KEY_USAGES = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
)


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    """One CKO_CERTIFICATE object. `error` is set (and the X.509 fields empty) when the value is unreadable."""

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
    error: str | None = None

    @property
    def name(self) -> str:
        """How the helpdesk names it: the CN, else the object label, else the CKA_ID."""
        return self.common_name or self.label or (f"id {self.cka_id}" if self.cka_id else "?")


def _common_name(name: x509.Name) -> str:
    values = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(values[0].value) if values else ""


def _key_usage(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return ()
    names = [name for name in _KEY_USAGES if getattr(usage, name)]
    if usage.key_agreement:
        names += [name for name in ("encipher_only", "decipher_only") if getattr(usage, name)]
    return tuple(names)


def _extended_key_usage(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(oid._name if oid._name != "Unknown OID" else oid.dotted_string for oid in usage)


def days_between(now: datetime, then: datetime) -> int:
    """Whole days from now until then (negative when then is past), counted the way people count them."""
    return (then.date() - now.date()).days


def parse_certificate(
    der: bytes, *, cka_id: str, label: str, has_key: bool, now: datetime | None = None
) -> CertificateInfo:
    now = now or datetime.now(UTC)
    try:
        cert = x509.load_der_x509_certificate(der)
        info = CertificateInfo(
            cka_id=cka_id,
            label=label,
            has_key=has_key,
            subject=cert.subject.rfc4514_string(),
            common_name=_common_name(cert.subject),
            issuer=cert.issuer.rfc4514_string(),
            serial=f"{cert.serial_number:X}",
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            days_left=days_between(now, cert.not_valid_after_utc),
            key_usage=_key_usage(cert),
            extended_key_usage=_extended_key_usage(cert),
            fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(":").upper(),
        )
    except (ValueError, TypeError) as error:
        # cryptography raises ValueError for malformed DER and for bad extensions met while parsing.
        return CertificateInfo(cka_id=cka_id, label=label, has_key=has_key, error=str(error) or type(error).__name__)
    return info
