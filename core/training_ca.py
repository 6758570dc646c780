"""The training CA: a local certification authority that stands in for the KISC CA in the lab.

It is made with `cryptography` the first time it is needed (an RSA key and a self-signed CA certificate,
stored in one directory, the key readable by its owner only) and reused afterwards. It issues certificates
for the bank's two terms («ЭЦП на 1 год», «ЭЦП на 3 года»), for a bare public key with any validity window
(the lab needs expired, expiring and not-yet-valid ones) or for a PKCS#10 request (re-enrolment).

Every certificate it issues says it is for training in its subject: the common name ends in "(TRAINING)" and
the organisation is TRAINING, so nobody takes one for a real KISC certificate.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from pathlib import Path

import platformdirs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from core.config import APP_NAME
from core.i18n import N_

TRAINING = "TRAINING"
TRAINING_SUFFIX = " (TRAINING)"
CA_COMMON_NAME = "KAZTOKEN Helpdesk Training CA (TRAINING)"
CA_TERM_DAYS = 20 * 365
KEY_FILE = "ca-key.pem"
CERT_FILE = "ca-cert.pem"
_CN_MAX = 64  # ub-common-name (RFC 5280)

IssuablePublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


class Term(IntEnum):
    """The certificate terms the bank offers, in days."""

    ONE_YEAR = 365  # «ЭЦП на 1 год (kaztoken)»
    THREE_YEARS = 3 * 365  # «ЭЦП на 3 года (kaztoken)»


TERM_TITLES = {
    Term.ONE_YEAR: N_("1 year («ЭЦП на 1 год»)"),
    Term.THREE_YEARS: N_("3 years («ЭЦП на 3 года»)"),
}


def default_directory() -> Path:
    """Where the training CA lives when no lab directory is given: under platformdirs' user data dir."""
    return platformdirs.user_data_path(APP_NAME) / "training-ca"


def training_name(name: x509.Name | str) -> x509.Name:
    """`name` (or a bare common name) marked as training: CN ending in "(TRAINING)", O=TRAINING added.

    Other attributes keep their order; a common name too long for the suffix is shortened to fit.
    """
    if isinstance(name, str):
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name or TRAINING)])
    attributes: list[x509.NameAttribute[str | bytes]] = []
    has_cn = has_org = False
    for attribute in name:
        value = attribute.value
        if attribute.oid == NameOID.COMMON_NAME and isinstance(value, str):
            has_cn = True
            if not value.endswith(TRAINING_SUFFIX):
                value = value[: _CN_MAX - len(TRAINING_SUFFIX)].rstrip() + TRAINING_SUFFIX
            attribute = x509.NameAttribute(NameOID.COMMON_NAME, value)
        elif attribute.oid == NameOID.ORGANIZATION_NAME and value == TRAINING:
            has_org = True
        attributes.append(attribute)
    if not has_cn:
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, TRAINING + TRAINING_SUFFIX))
    if not has_org:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, TRAINING))
    return x509.Name(attributes)


def is_training_certificate(cert: x509.Certificate) -> bool:
    """True for a certificate this CA (any instance of it) issued: its subject says TRAINING."""
    orgs = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    return TRAINING in orgs


class TrainingCAError(Exception):
    """The CA's files could not be read or written, or a request was refused."""


@dataclass(frozen=True, slots=True)
class TrainingCA:
    directory: Path
    key: rsa.RSAPrivateKey
    certificate: x509.Certificate

    @classmethod
    def open(cls, directory: Path | None = None) -> TrainingCA:
        """The CA stored in `directory` (default: default_directory()), created there the first time."""
        directory = directory or default_directory()
        key_path, cert_path = directory / KEY_FILE, directory / CERT_FILE
        if key_path.exists() and cert_path.exists():
            try:
                key = serialization.load_pem_private_key(
                    key_path.read_bytes(), password=None, unsafe_skip_rsa_key_validation=True
                )
                cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            except (OSError, ValueError, TypeError) as error:
                raise TrainingCAError(f"the training CA in {directory} cannot be read: {error}") from error
            if not isinstance(key, rsa.RSAPrivateKey):
                raise TrainingCAError(f"the training CA key in {directory} is not an RSA key")
            return cls(directory, key, cert)
        return cls._create(directory)

    @classmethod
    def _create(cls, directory: Path) -> TrainingCA:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.COUNTRY_NAME, "KZ"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, TRAINING),
                x509.NameAttribute(NameOID.COMMON_NAME, CA_COMMON_NAME),
            ]
        )
        now = datetime.now(UTC)
        public = key.public_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=CA_TERM_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(key, hashes.SHA256())
        )
        try:
            directory.mkdir(parents=True, exist_ok=True)
            # The certificate first: a key without it is treated as absent and both are made again.
            _write_atomic(directory / CERT_FILE, cert.public_bytes(serialization.Encoding.PEM), 0o644)
            key_pem = key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            _write_atomic(directory / KEY_FILE, key_pem, 0o600)
        except OSError as error:
            raise TrainingCAError(f"the training CA cannot be written to {directory}: {error.strerror}") from error
        return cls(directory, key, cert)

    @property
    def certificate_path(self) -> Path:
        return self.directory / CERT_FILE

    def issue(
        self,
        public_key: IssuablePublicKey,
        subject: x509.Name | str,
        *,
        term_days: int = Term.ONE_YEAR,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
    ) -> x509.Certificate:
        """A signing certificate for `public_key`. Valid from `not_before` (default: now, less a minute for
        clocks a little behind) for `term_days`, unless `not_after` is given. The subject is marked training."""
        start = not_before or datetime.now(UTC) - timedelta(minutes=1)
        end = not_after or start + timedelta(days=int(term_days))
        if end <= start:
            raise TrainingCAError("a certificate must end after it starts")
        ca_public = self.certificate.public_key()
        assert isinstance(ca_public, rsa.RSAPublicKey)
        return (
            x509.CertificateBuilder()
            .subject_name(training_name(subject))
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                # digitalSignature + nonRepudiation: a signing certificate, as the KISC CA issues them.
                x509.KeyUsage(True, True, False, False, False, False, False, False, False),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_public), critical=False)
            .sign(self.key, hashes.SHA256())
        )

    def sign_request(
        self, request: x509.CertificateSigningRequest, *, term_days: int = Term.ONE_YEAR, now: datetime | None = None
    ) -> x509.Certificate:
        """Issue for a PKCS#10 request (re-enrolment): its signature must verify; its subject, marked training,
        becomes the certificate's."""
        if not request.is_signature_valid:
            raise TrainingCAError("the certificate request's signature does not verify")
        public_key = request.public_key()
        if not isinstance(public_key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
            raise TrainingCAError(f"the training CA does not issue for {type(public_key).__name__} keys")
        start = (now or datetime.now(UTC)) - timedelta(minutes=1)
        return self.issue(public_key, request.subject, term_days=term_days, not_before=start)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(handle, mode)
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
