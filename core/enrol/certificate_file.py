"""The CA's answer: certificates read from a file (PEM, DER, PKCS#7, a bundle), the one for the new key chosen,
and the training CA's answer made at once."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7

from core.csr import (
    same_public_key,
)
from core.frame import (
    Refusal,
    Stop,
)
from core.i18n import N_, Text
from core.small_files import UnfitFile, read_small_file
from core.training_ca import TrainingCA

MAX_CERTIFICATE_FILE = 1024 * 1024  # a CA's answer, chain included, is a few KiB


class CertificateFileError(ValueError):
    """The file holds no certificate that can be read."""


def read_certificates(data: bytes) -> list[x509.Certificate]:
    """Every certificate in PEM (one or a bundle), DER, or a PKCS#7 chain (PEM or DER)."""
    certificates: list[x509.Certificate] = []
    if b"-----BEGIN" in data:
        for marker, loader in (
            (b"-----BEGIN PKCS7-----", pkcs7.load_pem_pkcs7_certificates),
            (b"-----BEGIN CMS-----", pkcs7.load_pem_pkcs7_certificates),
            (b"-----BEGIN CERTIFICATE-----", x509.load_pem_x509_certificates),
        ):
            if marker in data:
                with contextlib.suppress(ValueError):
                    certificates += loader(data)
    else:
        for der_loader in (lambda d: [x509.load_der_x509_certificate(d)], pkcs7.load_der_pkcs7_certificates):
            with contextlib.suppress(ValueError):
                certificates = list(der_loader(data))
                break
    if not certificates:
        raise CertificateFileError("no certificate")
    return certificates


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def choose_certificate(certificates: Sequence[x509.Certificate], spki_der: bytes, now: datetime) -> x509.Certificate:
    """The certificate for the key `spki_der`, currently valid; a Refusal saying what is wrong otherwise."""
    matching = [cert for cert in certificates if same_public_key(_spki(cert), spki_der)]
    if not matching:
        if len(certificates) > 1 or all(_is_ca(cert) for cert in certificates):
            raise Refusal(
                "no-leaf",
                Text(
                    N_(
                        "The file holds {count} certificate(s) of a chain, but none for the new key: the customer's "
                        "own certificate is missing from it. Ask the CA for the certificate itself."
                    ),
                    {"count": len(certificates)},
                ),
                field="certificate",
            )
        raise Refusal(
            "another-key",
            Text(
                N_(
                    "This certificate was issued for another key, not for the new key on this token. Check that it "
                    "is the CA's answer to this token's request."
                )
            ),
            field="certificate",
        )
    valid = [cert for cert in matching if cert.not_valid_before_utc <= now <= cert.not_valid_after_utc]
    if valid:
        return max(valid, key=lambda cert: cert.not_valid_after_utc)
    cert = max(matching, key=lambda cert: cert.not_valid_after_utc)
    if cert.not_valid_after_utc < now:
        raise Refusal(
            "expired",
            Text(
                N_("The certificate has expired (valid until {date}): it cannot be used. Ask the CA for a new one."),
                {"date": f"{cert.not_valid_after_utc:%Y-%m-%d}"},
            ),
            field="certificate",
        )
    raise Refusal(
        "not-yet-valid",
        Text(
            N_("The certificate is valid only from {date}: check this computer's clock, or import it then."),
            {"date": f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"},
        ),
        field="certificate",
    )


def common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def read_certificate_file(path: Path) -> bytes:
    """The bytes of the CA's answer: a regular file of at most MAX_CERTIFICATE_FILE; else a refusal (Stop)."""
    try:
        return read_small_file(path.expanduser(), MAX_CERTIFICATE_FILE)
    except (OSError, UnfitFile) as error:
        reason = (error.strerror if isinstance(error, OSError) else None) or str(error)
        raise Refusal(
            "unreadable",
            Text(N_("The certificate file {path} cannot be read: {error}."), {"path": str(path), "error": reason}),
            field="certificate",
        ) from None


NO_CERTIFICATE = N_(
    "No certificate could be read from this file. A certificate in PEM or DER, or a PKCS#7 chain (.p7b), is expected."
)


def certificate_file_problem(path: Path) -> Text | None:
    """Why `path` cannot be imported (unreadable, unfit, no certificate in it), or None: checked before the token
    is touched. Which certificate is the right one is known only once the new key is read."""
    try:
        read_certificates(read_certificate_file(path))
    except Stop as stop:
        return stop.texts[0]
    except CertificateFileError:
        return Text(NO_CERTIFICATE)
    return None


def training_certificate(csr_pem: str, *, term_days: int, ca: TrainingCA) -> bytes:
    """The training CA's certificate for the request, followed by the CA's own (a chain file, PEM)."""
    cert = ca.sign_request(x509.load_pem_x509_csr(csr_pem.encode("ascii")), term_days=term_days)
    return cert.public_bytes(serialization.Encoding.PEM) + ca.certificate.public_bytes(serialization.Encoding.PEM)
