"""PKCS#10 certificate requests signed by a key that never leaves the token.

The ASN.1 is built with asn1crypto (CertificationRequestInfo, CertificationRequest) around a subject Name made
by `cryptography` (asn1crypto's `Name.build` would reorder the fields, so the Name is loaded from DER), a public
key read from the token, and a signature the token makes. The result is loaded back with `cryptography` and its
signature checked before anyone sees it: a request that does not verify is never saved or sent.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from asn1crypto import algos
from asn1crypto import csr as asn1_csr
from asn1crypto import keys as asn1_keys
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from pkcs11 import DEFAULT, Attribute, KeyType, Mechanism
from pkcs11.util.ec import encode_ec_public_key, encode_ecdsa_signature, encode_named_curve_parameters
from pkcs11.util.rsa import encode_rsa_public_key

from core.i18n import N_, _


class KeyKind(StrEnum):
    """The key pairs a re-enrolment can make; the value is what the CLI's --key-type takes."""

    RSA2048 = "rsa2048"
    EC_P256 = "ec-p256"

    @property
    def label(self) -> str:  # not `title`: that is str's own method, which a StrEnum must keep
        return _(KIND_TITLES[self])

    @property
    def key_type(self) -> KeyType:
        return KeyType.RSA if self is KeyKind.RSA2048 else KeyType.EC

    @property
    def bits(self) -> int:
        return 2048 if self is KeyKind.RSA2048 else 256


KIND_TITLES = {KeyKind.RSA2048: N_("RSA 2048"), KeyKind.EC_P256: N_("EC P-256")}

P256_PARAMETERS = encode_named_curve_parameters("secp256r1")


class SubjectError(ValueError):
    """A typed subject that cannot be used: a message id and its parameters; str() translates."""

    def __init__(self, message: str, **params: Any) -> None:
        super().__init__(message)
        self.message = message
        self.params = params

    def __str__(self) -> str:
        return _(self.message).format(**self.params) if self.params else _(self.message)


# The C= part of a typed subject (not one inside an escaped comma): its value, up to the next part.
_COUNTRY = re.compile(r"(?:^|(?<!\\),)\s*C\s*=\s*((?:[^,\\]|\\.)*)", re.IGNORECASE)


def parse_subject(text: str) -> x509.Name:
    """A subject typed as an RFC 4514 string ("CN=Иванов Иван,O=ТОО Ромашка,C=KZ"). It needs a common name."""
    text = text.strip()
    if not text:
        raise SubjectError(N_("Type the subject, e.g. CN=Ivanov Ivan,O=Company,C=KZ."))
    country = _COUNTRY.search(text)
    if country and len(country.group(1).strip()) != 2:  # cryptography's own error would say "not in the form"
        raise SubjectError(N_("The country is two letters (C=KZ), not «{value}»."), value=country.group(1).strip())
    try:
        name = x509.Name.from_rfc4514_string(text)
    except ValueError:
        raise SubjectError(
            N_("The subject is not in the form CN=…,O=…,C=… (commas between the parts, \\, for a comma in a value).")
        ) from None
    if not name.get_attributes_for_oid(NameOID.COMMON_NAME):
        raise SubjectError(N_("The subject needs a common name (CN=…)."))
    try:
        name.public_bytes()  # cryptography checks value lengths and the country code only when encoding
    except ValueError as error:
        raise SubjectError(N_("The subject cannot be encoded: {error}."), error=str(error)) from None
    return name


def mechanism_available(mechanisms: set[Any], info: Callable[[Any], Any], mechanism: Mechanism, bits: int) -> bool:
    """Whether the token offers `mechanism` for keys of `bits` (a token that cannot say its sizes is believed)."""
    if mechanism not in mechanisms:
        return False
    try:
        details = info(mechanism)
    except Exception:
        return True
    low, high = getattr(details, "min_key_length", 0), getattr(details, "max_key_length", 0)
    # EC sizes are in bits; a few modules give bytes for EC (32 for P-256): accept either reading.
    return not high or low <= bits <= high or low <= bits // 8 <= high


def supported_kinds(slot: Any) -> tuple[KeyKind, ...]:
    """The key kinds this token can generate and sign a request with (python-pkcs11 Slot)."""
    mechanisms = set(slot.get_mechanisms())
    kinds = []
    if mechanism_available(mechanisms, slot.get_mechanism_info, Mechanism.RSA_PKCS_KEY_PAIR_GEN, 2048) and (
        Mechanism.SHA256_RSA_PKCS in mechanisms or Mechanism.RSA_PKCS in mechanisms
    ):
        kinds.append(KeyKind.RSA2048)
    if mechanism_available(mechanisms, slot.get_mechanism_info, Mechanism.EC_KEY_PAIR_GEN, 256) and (
        Mechanism.ECDSA in mechanisms
    ):
        kinds.append(KeyKind.EC_P256)
    return tuple(kinds)


def public_key_info(public_key: Any) -> bytes:
    """SubjectPublicKeyInfo DER of a python-pkcs11 public key object."""
    if public_key.key_type == KeyType.RSA:
        rsa_key = asn1_keys.RSAPublicKey.load(encode_rsa_public_key(public_key))
        info: bytes = asn1_keys.PublicKeyInfo({"algorithm": {"algorithm": "rsa"}, "public_key": rsa_key}).dump()
        return info
    if public_key.key_type == KeyType.EC:
        der: bytes = encode_ec_public_key(public_key)  # python-pkcs11 is untyped
        return der
    raise ValueError(f"unsupported key type {public_key.key_type!r}")


def same_public_key(spki_a: bytes, spki_b: bytes) -> bool:
    """Two SubjectPublicKeyInfo encodings of one key (normalised: EC parameters may be spelt two ways)."""

    def normal(der: bytes) -> bytes:
        key = serialization.load_der_public_key(der)
        return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)

    try:
        return normal(spki_a) == normal(spki_b)
    except (ValueError, TypeError):
        return False


@dataclass(frozen=True, slots=True)
class Signer:
    """How to have the token sign: the signature algorithm to name in the request, and the signing call."""

    algorithm: str  # asn1crypto's name
    sign: Callable[[bytes], bytes]


def token_signer(private_key: Any, mechanisms: set[Any]) -> Signer:
    """Signing with a python-pkcs11 private key: SHA-256 with RSA PKCS#1 v1.5, or ECDSA over SHA-256."""
    if private_key.key_type == KeyType.RSA:
        if Mechanism.SHA256_RSA_PKCS in mechanisms or not mechanisms:
            return Signer("sha256_rsa", lambda data: bytes(private_key.sign(data, mechanism=Mechanism.SHA256_RSA_PKCS)))

        def raw_rsa(data: bytes) -> bytes:
            # Only plain RSA_PKCS: the DigestInfo is made here, the token pads and signs it.
            info = algos.DigestInfo(
                {"digest_algorithm": {"algorithm": "sha256"}, "digest": hashlib.sha256(data).digest()}
            )
            return bytes(private_key.sign(info.dump(), mechanism=Mechanism.RSA_PKCS))

        return Signer("sha256_rsa", raw_rsa)
    if private_key.key_type == KeyType.EC:

        def ecdsa(data: bytes) -> bytes:
            # Raw ECDSA over a digest made here: tokens that lack ECDSA_SHA256 still do this; PKCS#11 gives r||s.
            raw = bytes(private_key.sign(hashlib.sha256(data).digest(), mechanism=Mechanism.ECDSA))
            return encode_ecdsa_signature(raw)

        return Signer("sha256_ecdsa", ecdsa)
    raise ValueError(f"unsupported key type {private_key.key_type!r}")


def build_request(subject: x509.Name, spki_der: bytes, signer: Signer) -> x509.CertificateSigningRequest:
    """A PKCS#10 request for the key `spki_der`, signed by `signer`; raises ValueError if it does not verify."""
    info = asn1_csr.CertificationRequestInfo(
        {
            "version": "v1",
            "subject": asn1_x509.Name.load(subject.public_bytes()),
            "subject_pk_info": asn1_keys.PublicKeyInfo.load(spki_der),
            "attributes": [],
        }
    )
    signature = signer.sign(info.dump())
    request = asn1_csr.CertificationRequest(
        {
            "certification_request_info": info,
            "signature_algorithm": {"algorithm": signer.algorithm},
            "signature": signature,
        }
    )
    loaded = x509.load_der_x509_csr(request.dump())
    if not loaded.is_signature_valid:
        raise ValueError("the token's signature on the request does not verify")
    return loaded


def request_pem(request: x509.CertificateSigningRequest) -> str:
    return request.public_bytes(serialization.Encoding.PEM).decode("ascii")


def key_templates(kind: KeyKind) -> tuple[dict[Attribute, Any], dict[Attribute, Any]]:
    """(public, private) extra attributes: the private key sensitive and never extractable, for signing.

    Whether the pair may also encrypt is left to the token (DEFAULT drops python-pkcs11's CKA_ENCRYPT=FALSE and
    CKA_DECRYPT=FALSE): tpm2-pkcs11 makes every RSA key a TPM sign-and-decrypt key and refuses a template that
    says otherwise (CKR_GENERAL_ERROR, "attr mismatch"), where pkcs11-tool's template, silent on both, works.
    What a signature may be used for is the certificate's key usage anyway.
    """
    public: dict[Attribute, Any] = {
        Attribute.PRIVATE: False,  # seen without a login, as the scan needs
        Attribute.ENCRYPT: DEFAULT,
    }
    if kind is KeyKind.EC_P256:
        public[Attribute.EC_PARAMS] = P256_PARAMETERS
    private: dict[Attribute, Any] = {
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: False,
        Attribute.DECRYPT: DEFAULT,
    }
    return public, private
