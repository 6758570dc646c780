"""Certificates anyone could have written on a customer's token: malformed ones built with asn1crypto and
cryptography, read by parse_certificate, diagnosed, and put on real SoftHSM2 tokens for the real `scan` command.

Whatever the bytes, the helpdesk gets an answer in its own words, the rest of the token is still reported and
nothing from the parser (debug text, warnings) reaches the screen."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import unicodedata
import warnings
from datetime import UTC, datetime, timedelta

import pytest
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core import certificates
from core.certificates import CertificateInfo, parse_certificate
from core.diagnostics import certificate_findings, diagnose_token
from core.findings import Action, Severity
from core.snapshot import KeyInfo, PinState, PinStatus, TokenSnapshot
from tests.tokens import SOFTHSM_MODULE, USER_PIN, SoftHSM

NOW = datetime.now(UTC)
_KEY = ec.generate_private_key(ec.SECP256R1())
UNKNOWN_OID = "1.3.6.1.4.1.99999.1"


def build(
    *,
    common_name: str = "Иванов Иван",
    serial: int = 0x1234,
    critical_unknown: bool = False,
    blob: bytes | None = None,
) -> bytes:
    """A well-formed certificate (DER) valid for a year, with the extensions asked for."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test KISC CA")]))
        .public_key(_KEY.public_key())
        .serial_number(serial)
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, True, False, False, False, False, False, False, False), critical=True)
    )
    if critical_unknown:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier(UNKNOWN_OID), b"\x05\x00"), True
        )
    if blob is not None:
        oid = x509.ObjectIdentifier("1.3.6.1.4.1.99999.2")
        builder = builder.add_extension(x509.UnrecognizedExtension(oid, blob), critical=False)
    return builder.sign(_KEY, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


GOOD = build()


def mutate_tbs(der: bytes, change) -> bytes:
    """The certificate with its signed body changed by asn1crypto: what cryptography's builder refuses to make."""
    cert = asn1_x509.Certificate.load(der)
    tbs = cert["tbs_certificate"]
    change(tbs)
    return asn1_x509.Certificate(
        {
            "tbs_certificate": tbs,
            "signature_algorithm": cert["signature_algorithm"],
            "signature_value": cert["signature_value"],
        }
    ).dump(force=True)


def _version_4(tbs) -> None:
    tbs["version"] = 3  # X.509 counts from 0: 3 is a fourth version, which does not exist


def _duplicate_extension(tbs) -> None:
    extensions = list(tbs["extensions"])
    tbs["extensions"] = asn1_x509.Extensions([*extensions, extensions[0]])


def _negative_serial(tbs) -> None:
    tbs["serial_number"] = -0x1234


def _bad_date(der: bytes) -> bytes:
    """The expiry's UTCTime made month 13, same length, so only the date is wrong."""
    times = list(re.finditer(rb"\x17\x0d(\d{12})Z", der))
    expiry = times[1]
    return der[: expiry.start(1)] + b"991332235959" + der[expiry.end(1) :]


VERSION_4 = mutate_tbs(GOOD, _version_4)
DUPLICATE_EXTENSION = mutate_tbs(GOOD, _duplicate_extension)
NEGATIVE_SERIAL = mutate_tbs(GOOD, _negative_serial)
CRITICAL_UNKNOWN = build(critical_unknown=True)
RANDOM = random.Random(12).randbytes(600)

# bytes → what the helpdesk reads after "could not be read:"
UNREADABLE = {
    "random": (RANDOM, "it is not a certificate"),
    "empty": (b"", "the object holds no data"),
    "truncated": (GOOD[: len(GOOD) // 2], "it is damaged: part of it is missing (cut short)"),
    "extra data": (GOOD + b"\x00\x00", "it is damaged: there is extra data after its end"),
    "version 4": (VERSION_4, "it uses a format programs do not accept (version 4)"),
    "duplicated extension": (DUPLICATE_EXTENSION, "an extension appears twice in it (basicConstraints)"),
    "bad date": (_bad_date(GOOD), "it is damaged: its validity dates are not valid dates"),
    "pem": (
        x509.load_der_x509_certificate(GOOD).public_bytes(serialization.Encoding.PEM),
        "it is stored as text (PEM) instead of the binary form (DER) programs read from a token",
    ),
    "huge": (build(blob=b"\x04\x83\x01\x86\xa0" + bytes(100_000)), "it is far too large to be a certificate"),
    "sequence of nothing": (b"\x30\x03\x02\x01\x00", "it is not a certificate"),
}

PARSER_WORDS = re.compile(r"ParseError|kind:|Tag|asn1|Short|Unexpected|\{|\}")


def parse(der: bytes) -> CertificateInfo:
    return parse_certificate(der, cka_id="0a", label="cert-0a", has_key=True, now=NOW)


def control_characters(text: str) -> list[str]:
    return [char for char in text if unicodedata.category(char) in ("Cc", "Cf")]


# --- parse_certificate ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", UNREADABLE)
def test_unreadable_certificate_is_described_in_the_helpdesks_words(case: str, recwarn) -> None:
    der, words = UNREADABLE[case]
    info = parse(der)
    assert info.error is not None and info.error.startswith(words), info.error
    assert not PARSER_WORDS.search(info.error)
    assert (info.subject, info.not_after, info.fingerprint_sha256) == ("", None, "")
    assert info.name == "cert-0a"  # the object's label names it when its CN cannot be read
    (finding,) = certificate_findings(info, NOW)
    assert finding.code == "certificate-unreadable" and finding.severity is Severity.WARNING
    assert words in finding.explanation and "cert-0a" in finding.explanation
    assert not recwarn.list


def test_unknown_critical_extension_is_read_and_named() -> None:
    info = parse(CRITICAL_UNKNOWN)
    assert info.error is None and info.common_name == "Иванов Иван"
    assert info.unknown_critical_extensions == (UNKNOWN_OID,)
    assert parse(GOOD).unknown_critical_extensions == ()  # basicConstraints and keyUsage are known
    (finding,) = certificate_findings(info, NOW)
    assert finding.code == "certificate-unknown-critical-extension"
    assert finding.severity is Severity.WARNING and finding.action is Action.RE_ENROL
    assert finding.title == "Programs will refuse this certificate (Иванов Иван)"
    assert UNKNOWN_OID in finding.explanation


def test_negative_serial_is_read_without_a_warning_and_mentioned(recwarn, capfd) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # a warning the parser gave would be caught here, not lost
        info = parse(NEGATIVE_SERIAL)
    assert caught == [] and not recwarn.list
    assert capfd.readouterr().err == ""
    assert info.error is None and info.serial == "-1234" and not info.serial_positive
    assert parse(GOOD).serial_positive
    (finding,) = certificate_findings(info, NOW)
    assert finding.code == "certificate-serial-invalid" and finding.severity is Severity.WARNING


def test_warning_filters_are_left_as_they_were() -> None:
    before = list(warnings.filters)
    parse(NEGATIVE_SERIAL)
    assert warnings.filters == before


# --- Property: total on any bytes -----------------------------------------------------------------------------


def check_total(der: bytes) -> None:
    info = parse(der)  # must not raise
    if info.problem is not None:
        text = str(info.problem)
        assert text and not control_characters(text) and not PARSER_WORDS.search(text), text
        assert info.not_after is None
    else:
        assert info.not_before is not None and info.not_after is not None and info.fingerprint_sha256
    for finding in certificate_findings(info, NOW):  # and the diagnosis is total too
        assert not control_characters(finding.title)
        assert finding.explanation


PROPERTY = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(st.binary(max_size=3000))
def test_any_bytes_give_an_answer(der: bytes) -> None:
    check_total(der)


@st.composite
def mutated(draw) -> bytes:
    """A valid certificate with a few bytes changed, cut, inserted or removed: damage that looks nearly right."""
    der = bytearray(draw(st.sampled_from([GOOD, CRITICAL_UNKNOWN, NEGATIVE_SERIAL])))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(der) - 1))
        kind = draw(st.sampled_from(["set", "cut", "insert", "delete"]))
        if kind == "set":
            der[at] = draw(st.integers(0, 255))
        elif kind == "cut":
            del der[at:]
        elif kind == "insert":
            der[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif len(der) > 1:
            del der[at]
        if not der:
            break
    return bytes(der)


@PROPERTY
@given(mutated())
def test_mutated_certificates_give_an_answer(der: bytes) -> None:
    check_total(der)


def test_a_parser_surprise_is_still_an_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever a future cryptography raises, parse_certificate answers: the certificate is damaged."""

    def surprise(der: bytes) -> x509.Certificate:
        raise RuntimeError("something new")

    monkeypatch.setattr(x509, "load_der_x509_certificate", surprise)  # imported at the parse
    assert parse(GOOD).error == certificates.DAMAGED


# --- Several pairs under one CKA_ID (pure diagnosis) ----------------------------------------------------------


def token(certs: list[CertificateInfo], keys: list[KeyInfo]) -> TokenSnapshot:
    return TokenSnapshot(
        module_path="/m.so",
        slot_id=1,
        slot_description="",
        slot_manufacturer="",
        slot_flags=("token-present",),
        token_present=True,
        taken_at=NOW,
        initialised=True,
        label="X",
        user_pin=PinState(PinStatus.OK),
        so_pin=PinState(PinStatus.OK),
        certificates=tuple(certs),
        keys=tuple(keys),
    )


def cert(cka_id: str, *, has_key: bool = True) -> CertificateInfo:
    return parse_certificate(GOOD, cka_id=cka_id, label=f"cert-{cka_id}", has_key=has_key, now=NOW)


def key(cka_id: str, key_class: str = "public") -> KeyInfo:
    return KeyInfo(cka_id, f"key-{cka_id}", key_class, "ec", None, True)


def shared(snapshot: TokenSnapshot) -> list[str]:
    return [f.explanation.split(" Programs")[0] for f in diagnose_token(snapshot) if f.code == "duplicate-id"]


def test_two_key_pairs_under_one_id() -> None:
    snapshot = token([cert("01")], [key("01"), key("01"), key("01", "private"), key("01", "private")])
    (finding,) = [f for f in diagnose_token(snapshot) if f.code == "duplicate-id"]
    assert finding.severity is Severity.WARNING and finding.action is Action.RE_ENROL
    assert finding.title == "Several keys or certificates share one ID (01)"
    assert shared(snapshot) == ["There are several key pairs under this ID."]
    # Without a login only public halves show; a token that shows private ones counts them as well.
    assert shared(token([cert("01")], [key("01", "private"), key("01", "private")])) == [
        "There are several key pairs under this ID."
    ]


def test_two_certificates_for_one_key() -> None:
    assert shared(token([cert("01"), cert("01")], [key("01"), key("01", "private")])) == [
        "There are several certificates for one key under this ID."
    ]
    assert shared(token([cert("01"), cert("01")], [key("01"), key("01")])) == [
        "There are several key pairs and several certificates under this ID."
    ]


def test_one_pair_per_id_is_fine() -> None:
    # A public and a private half are one pair; certificates without a key are registration-unfinished's.
    assert shared(token([cert("01"), cert("02")], [key("01"), key("01", "private"), key("02")])) == []
    orphans = token([cert("05", has_key=False), cert("05", has_key=False)], [])
    assert shared(orphans) == [] and "registration-unfinished" in [f.code for f in diagnose_token(orphans)]


# --- On real tokens, through the real `scan` command ------------------------------------------------------------


def write_ec_pair(hsm: SoftHSM, serial: str, cka_id: str) -> None:
    hsm.tool(serial, "--login", "--pin", USER_PIN, "--keypairgen", "--key-type", "EC:prime256v1", "--id", cka_id)


def scan_command(hsm: SoftHSM, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tui.cli", "scan", *args, "--module", SOFTHSM_MODULE],
        capture_output=True,
        text=True,
        env={**hsm.env, "PYTHONWARNINGS": "default"},  # a warning would be printed, not hidden by a default filter
        timeout=120,
    )


HOSTILE_ON_TOKEN = {
    "02": VERSION_4,
    "03": DUPLICATE_EXTENSION,
    "04": RANDOM,
    "05": GOOD[:300],
    "06": CRITICAL_UNKNOWN,
    "07": NEGATIVE_SERIAL,
}


def test_hostile_certificates_on_a_token_are_findings_and_the_rest_is_reported(softhsm: SoftHSM, tmp_path) -> None:
    serial = softhsm.init_token("HOSTILE")
    softhsm.profile(serial, "01")  # the customer's good certificate, next to the hostile ones
    for cka_id, der in HOSTILE_ON_TOKEN.items():
        write_ec_pair(softhsm, serial, cka_id)  # each with its key: no "registration unfinished" to hide behind
        softhsm.write_raw_certificate(serial, der, cka_id)

    out = scan_command(softhsm, "--json")
    assert out.stderr == ""
    assert out.returncode == 0  # warnings only: nothing here stops the customer signing with 01
    (document,) = [t for t in json.loads(out.stdout)["tokens"] if t["serial"] == serial]
    certs = {c["cka_id"]: c for c in document["certificates"]}
    assert sorted(certs) == ["01", "02", "03", "04", "05", "06", "07"]
    assert certs["01"]["common_name"] == "Иванов Иван" and certs["01"]["error"] is None
    assert certs["06"]["common_name"] == "Иванов Иван" and certs["07"]["serial"] == "-1234"
    assert certs["02"]["error"] == "it uses a format programs do not accept (version 4)"
    assert certs["03"]["error"] == "an extension appears twice in it (basicConstraints)"
    assert certs["04"]["error"] == "it is not a certificate"
    assert certs["05"]["error"] == "it is damaged: part of it is missing (cut short)"
    findings = document["findings"]
    assert sorted(f["code"] for f in findings) == [
        "certificate-serial-invalid",
        "certificate-unknown-critical-extension",
        "certificate-unreadable",
        "certificate-unreadable",
        "certificate-unreadable",
        "certificate-unreadable",
    ]
    assert all(f["severity"] == "warning" for f in findings)
    assert not any(PARSER_WORDS.search(f["explanation"]) for f in findings if f["code"] == "certificate-unreadable")
    assert "Programs will refuse this certificate" in json.dumps(findings, ensure_ascii=False)

    report = tmp_path / "ticket.md"
    text = scan_command(softhsm, "--explain", "--report", str(report))
    assert text.stderr.splitlines() == [f"Report written to {report}"] and text.returncode == 0
    for output in (text.stdout, report.read_text()):
        assert "ParseError" not in output and "it uses a format programs do not accept (version 4)" in output
        assert "Иванов Иван" in output


def test_console_and_report_show_the_problem_in_words() -> None:
    from core.report import certificate_rows
    from tui.render import certificate_summary

    info = parse(VERSION_4)
    assert (
        certificate_summary(info).plain == "Certificate unreadable: it uses a format programs do not accept (version 4)"
    )
    assert dict(certificate_rows(info))["Error"] == "it uses a format programs do not accept (version 4)"


def test_two_pairs_and_two_certificates_under_one_id_on_a_token(softhsm: SoftHSM) -> None:
    from tests.tokens import issue_certificate

    serial = softhsm.init_token("TWINS")
    write_ec_pair(softhsm, serial, "01")
    write_ec_pair(softhsm, serial, "01")  # pkcs11-tool lets a second pair take the same CKA_ID
    softhsm.write_certificate(serial, issue_certificate(_KEY.public_key(), common_name="A", days_valid=300), "01")
    write_ec_pair(softhsm, serial, "02")
    for name in ("old", "renewed"):
        softhsm.write_certificate(serial, issue_certificate(_KEY.public_key(), common_name=name, days_valid=300), "02")

    out = scan_command(softhsm, "--json")
    assert out.stderr == "" and out.returncode == 0
    (document,) = [t for t in json.loads(out.stdout)["tokens"] if t["serial"] == serial]
    assert sorted(c["common_name"] for c in document["certificates"]) == ["A", "old", "renewed"]
    duplicates = [f for f in document["findings"] if f["code"] == "duplicate-id"]
    assert [f["title"] for f in duplicates] == [
        "Several keys or certificates share one ID (01)",
        "Several keys or certificates share one ID (02)",
    ]
    assert duplicates[0]["explanation"].startswith("There are several key pairs under this ID.")
    assert duplicates[1]["explanation"].startswith("There are several certificates for one key under this ID.")
    assert {f["action"] for f in duplicates} == {"re-enrol"}
