"""Re-enrolment (core/enrol/, core/csr.py and the `re-enrol` command) on real SoftHSM2 tokens.

Every result is checked independently: the request with `openssl req -verify`, the certificate read back with
OpenSC's pkcs11-tool and parsed, a signature made by the new key (pkcs11-tool) verified against the certificate,
the old pair listed by pkcs11-tool until step 5 and gone after it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

from core import audit, enrol
from core.actions import Outcome
from core.csr import KeyKind
from core.enrol import Stage
from core.modules import Module
from core.scan import Workstation
from core.training_ca import TRAINING, Term
from tests.tokens import SOFTHSM_MODULE, USER_PIN, SoftHSM

WRONG_PIN = "Wr0ngPin"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def modules(softhsm: SoftHSM) -> Iterator[list[Module]]:
    workstation = Workstation([SOFTHSM_MODULE])
    yield workstation.modules
    workstation.close()


@pytest.fixture
def token(softhsm: SoftHSM) -> str:
    """A token with a complete old profile (key pair and certificate, id 01)."""
    serial = softhsm.init_token("IVANOV")
    softhsm.profile(serial, "01", common_name="Иванов Иван")
    return serial


# --- helpers ----------------------------------------------------------------------------------------------------

_CA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_CA_NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test KISC CA")])


def ca_certificate() -> x509.Certificate:
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_CA_NAME)
        .issuer_name(_CA_NAME)
        .public_key(_CA_KEY.public_key())
        .serial_number(1)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(_CA_KEY, hashes.SHA256())
    )


def issue(public_key, subject: x509.Name, *, start_days: int = -1, days: int = 365) -> x509.Certificate:
    """What the bank's CA does with a request: a certificate for its key (here with any validity)."""
    start = datetime.now(UTC) + timedelta(days=start_days)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(_CA_NAME)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(_CA_KEY, hashes.SHA256())
    )


def request_of(serial: str) -> x509.CertificateSigningRequest:
    pending = enrol.load_pending(serial)
    assert pending is not None and pending.csr_pem
    return x509.load_pem_x509_csr(pending.csr_pem.encode())


def openssl_verifies(pem: str, tmp_path: Path) -> bool:
    path = tmp_path / "check.csr.pem"
    path.write_text(pem)
    done = subprocess.run(["openssl", "req", "-verify", "-in", str(path), "-noout"], capture_output=True, text=True)
    return done.returncode == 0 and "verify OK" in (done.stderr + done.stdout)


def object_ids(softhsm: SoftHSM, serial: str, kind: str) -> set[str]:
    """CKA_IDs of the token's objects of one type (cert, privkey, pubkey) as pkcs11-tool lists them."""
    out = softhsm.tool(serial, "--login", "--pin", USER_PIN, "--list-objects", "--type", kind).stdout
    return set(re.findall(r"^\s*ID:\s*([0-9a-f]+)", out, flags=re.M))


def certificate_on_token(softhsm: SoftHSM, serial: str, cka_id: str) -> x509.Certificate:
    done = subprocess.run(
        [
            "pkcs11-tool",
            "--module",
            SOFTHSM_MODULE,
            "--slot",
            str(softhsm.slot_of(serial)),
            "--read-object",
            "--type",
            "cert",
            "--id",
            cka_id,
        ],
        env=softhsm.env,
        capture_output=True,
        check=True,
        timeout=60,
    )
    return x509.load_der_x509_certificate(done.stdout)


def signature_verifies(softhsm: SoftHSM, serial: str, cka_id: str, cert: x509.Certificate, tmp_path: Path) -> None:
    """A signature made on the token with the new private key verifies against the certificate's public key."""
    message = b"payment order 42"
    public = cert.public_key()
    is_rsa = isinstance(public, rsa.RSAPublicKey)
    data = tmp_path / "data.bin"
    # SoftHSM2 has no ECDSA-SHA256: the digest is made here and the token signs it with raw ECDSA.
    data.write_bytes(message if is_rsa else hashlib.sha256(message).digest())
    signature = tmp_path / "data.sig"
    mechanism = "SHA256-RSA-PKCS" if is_rsa else "ECDSA"
    extra = [] if is_rsa else ["--signature-format", "openssl"]
    softhsm.tool(
        serial,
        "--login",
        "--pin",
        USER_PIN,
        "--sign",
        "--id",
        cka_id,
        "-m",
        mechanism,
        *extra,
        "--input-file",
        str(data),
        "--output-file",
        str(signature),
    )
    if isinstance(public, rsa.RSAPublicKey):
        public.verify(signature.read_bytes(), message, padding.PKCS1v15(), hashes.SHA256())
    else:
        assert isinstance(public, ec.EllipticCurvePublicKey)
        public.verify(signature.read_bytes(), message, ec.ECDSA(hashes.SHA256()))


def findings(serial: str) -> dict[str, tuple]:
    """A fresh scan (a new process's view): finding code → its ids."""
    result = Workstation([SOFTHSM_MODULE]).scan()
    token = next(t for t in result.tokens if t.snapshot.serial == serial)
    return {finding.code: tuple(finding.params.get("ids", ())) for finding in token.findings}


def reasons(serial: str) -> list[tuple[str, str]]:
    return [(entry.reason or "", entry.outcome) for entry in reversed(audit.read()) if entry.serial == serial]


# --- the whole loop through core --------------------------------------------------------------------------------


def test_full_loop_rsa(softhsm: SoftHSM, modules: list[Module], token: str, tmp_path: Path) -> None:
    wrong = enrol.inspect(modules, token, pin=WRONG_PIN)
    assert wrong.outcome is Outcome.WRONG_PIN and wrong.field == "pin"

    first = enrol.inspect(modules, token, pin=USER_PIN)
    assert first.ok, first.message
    assert {KeyKind.RSA2048, KeyKind.EC_P256} <= set(first.key_kinds)
    assert {(key.cka_id, key.key_class) for key in first.contents.keys} == {("01", "public"), ("01", "private")}
    assert enrol.default_subject(first.contents) == "CN=Иванов Иван"
    assert first.pending is None

    generated = enrol.generate_key(modules, token, pin=USER_PIN)
    assert generated.ok, generated.message
    new_id = generated.pending.cka_id
    assert generated.pending.stage is Stage.KEY and len(new_id) == 40
    attributes = softhsm.tool(token, "--login", "--pin", USER_PIN, "--list-objects", "--type", "privkey").stdout
    block = next(part for part in attributes.split("Private Key Object") if new_id in part)
    assert re.search(r"Access:\s+sensitive, always sensitive, never extractable", block), block
    # Signing it must do; decrypting is left to the token (tpm2-pkcs11 refuses a key pair that may not decrypt).
    assert re.search(r"Usage:.*\bsign\b", block), block
    assert findings(token)["registration-unfinished"] == (new_id,)

    made = enrol.make_request(modules, token, pin=USER_PIN, subject=enrol.default_subject(first.contents))
    assert made.ok, made.message
    assert made.pending.stage is Stage.REQUEST
    assert openssl_verifies(made.csr_pem, tmp_path)
    request = request_of(token)
    assert request.subject.rfc4514_string() == "CN=Иванов Иван"

    cert = issue(request.public_key(), request.subject)
    cert_file = tmp_path / "issued.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    imported = enrol.import_certificate(modules, token, pin=USER_PIN, source=cert_file)
    assert imported.ok, imported.message
    assert imported.pending.stage is Stage.CERTIFICATE
    assert imported.certificate.cka_id == new_id and imported.certificate.name == "Иванов Иван"
    assert {cert.cka_id for cert in imported.contents.certificates} == {"01", new_id}

    on_token = certificate_on_token(softhsm, token, new_id)
    assert on_token == cert
    signature_verifies(softhsm, token, new_id, on_token, tmp_path)
    assert "registration-unfinished" not in findings(token)

    # The old pair stays until step 5 is confirmed.
    assert object_ids(softhsm, token, "cert") == {"01", new_id}
    refused = enrol.remove_old(modules, token, pin=USER_PIN, confirmed=False)
    assert refused.outcome is Outcome.REFUSED
    assert object_ids(softhsm, token, "privkey") == {"01", new_id}

    removed = enrol.remove_old(modules, token, pin=USER_PIN, confirmed=True)
    assert removed.ok, removed.message
    assert len(removed.removed) == 3 and "Иванов Иван" in removed.removed[0]
    assert {key.cka_id for key in removed.contents.keys} == {new_id}
    assert object_ids(softhsm, token, "cert") == {new_id}
    assert object_ids(softhsm, token, "privkey") == {new_id}
    assert object_ids(softhsm, token, "pubkey") == {new_id}
    assert removed.pending is None and not enrol.pending_path(token).exists()
    signature_verifies(softhsm, token, new_id, on_token, tmp_path)

    assert reasons(token) == [
        ("login:wrong-pin", "wrong-pin"),
        ("login", "done"),
        ("keygen", "done"),
        ("csr", "done"),
        ("import", "done"),
        ("remove-old:not-confirmed", "refused"),
        ("remove-old", "done"),
    ]
    assert USER_PIN not in audit.audit_path().read_text()
    assert not list(enrol.pending_dir().glob("*"))


def test_ec_key_and_the_training_ca(softhsm: SoftHSM, modules: list[Module], token: str, tmp_path: Path) -> None:
    generated = enrol.generate_key(modules, token, pin=USER_PIN, kind=KeyKind.EC_P256)
    assert generated.ok, generated.message
    new_id = generated.pending.cka_id
    made = enrol.make_request(modules, token, pin=USER_PIN, subject="CN=Петров Пётр,O=ТОО Ромашка,C=KZ")
    assert made.ok, made.message
    assert openssl_verifies(made.csr_pem, tmp_path)
    assert isinstance(request_of(token).public_key(), ec.EllipticCurvePublicKey)

    issued = enrol.issue_with_training_ca(
        modules, token, pin=USER_PIN, term_days=Term.THREE_YEARS, directory=tmp_path / "ca"
    )
    assert issued.ok, issued.message
    cert = certificate_on_token(softhsm, token, new_id)
    orgs = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    assert TRAINING in orgs
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Петров Пётр (TRAINING)"
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == 3 * 365
    signature_verifies(softhsm, token, new_id, cert, tmp_path)


# --- interruptions and resuming ---------------------------------------------------------------------------------


def test_interrupted_after_keygen_resumes_at_the_request(softhsm: SoftHSM, token: str, tmp_path: Path) -> None:
    first = Workstation([SOFTHSM_MODULE])
    new_id = enrol.generate_key(first.modules, token, pin=USER_PIN).pending.cka_id
    first.close()  # the console is closed

    assert findings(token)["registration-unfinished"] == (new_id,)
    again = Workstation([SOFTHSM_MODULE])
    try:
        look = enrol.inspect(again.modules, token, pin=USER_PIN)
        assert look.pending.stage is Stage.KEY and look.pending.cka_id == new_id
        assert "step 3" in str(look.notes[0])
        made = enrol.make_request(again.modules, token, pin=USER_PIN, subject="CN=Иванов Иван")
        assert made.ok and request_of(token).public_key() == softhsm.public_key(token, new_id)
        # A second key pair is not started over the pending one.
        refused = enrol.generate_key(again.modules, token, pin=USER_PIN)
        assert refused.outcome is Outcome.REFUSED
        assert object_ids(softhsm, token, "privkey") == {"01", new_id}
    finally:
        again.close()


def test_interrupted_after_the_request_resumes_at_the_import(softhsm: SoftHSM, token: str, tmp_path: Path) -> None:
    first = Workstation([SOFTHSM_MODULE])
    enrol.generate_key(first.modules, token, pin=USER_PIN)
    pem = enrol.make_request(first.modules, token, pin=USER_PIN, subject="CN=Иванов Иван").csr_pem
    first.close()

    assert "registration-unfinished" in findings(token)
    again = Workstation([SOFTHSM_MODULE])
    try:
        look = enrol.inspect(again.modules, token, pin=USER_PIN)
        assert look.pending.stage is Stage.REQUEST and look.csr_pem == pem
        request = request_of(token)
        der = issue(request.public_key(), request.subject).public_bytes(serialization.Encoding.DER)
        imported = enrol.import_certificate(again.modules, token, pin=USER_PIN, source=der)
        assert imported.ok, imported.message
    finally:
        again.close()
    assert "registration-unfinished" not in findings(token)


def test_interrupted_generation_and_a_formatted_token_drop_the_pending_state(
    softhsm: SoftHSM, modules: list[Module], token: str
) -> None:
    now = datetime.now(UTC).isoformat(timespec="seconds")
    # The console died during C_GenerateKeyPair, before the token made the key.
    enrol.save_pending(enrol.Pending(token, "ab" * 20, KeyKind.RSA2048, Stage.GENERATING, now, now))
    look = enrol.inspect(modules, token, pin=USER_PIN)
    assert look.ok and look.pending is None and "did not finish" in str(look.notes[0])
    assert not enrol.pending_path(token).exists()

    # The key was made, then the token was wiped of it (formatted, or cleaned by hand).
    new_id = enrol.generate_key(modules, token, pin=USER_PIN).pending.cka_id
    for kind in ("privkey", "pubkey"):
        softhsm.tool(token, "--login", "--pin", USER_PIN, "--delete-object", "--type", kind, "--id", new_id)
    refused = enrol.make_request(modules, token, pin=USER_PIN, subject="CN=X")
    assert refused.outcome is Outcome.REFUSED and "no longer on the token" in str(refused.notes[0])
    assert refused.pending is None and not enrol.pending_path(token).exists()


# --- bad input --------------------------------------------------------------------------------------------------


@pytest.fixture
def requested(modules: list[Module], token: str) -> x509.CertificateSigningRequest:
    """A token at step 4: new key pair and request made."""
    assert enrol.generate_key(modules, token, pin=USER_PIN).ok
    assert enrol.make_request(modules, token, pin=USER_PIN, subject="CN=Иванов Иван").ok
    return request_of(token)


def _import(modules: list[Module], serial: str, data: bytes) -> enrol.EnrolResult:
    return enrol.import_certificate(modules, serial, pin=USER_PIN, source=data)


def test_bad_certificates_are_refused_and_nothing_is_written(
    softhsm: SoftHSM, modules: list[Module], token: str, requested: x509.CertificateSigningRequest, tmp_path: Path
) -> None:
    pem = serialization.Encoding.PEM
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    cases = {
        "another-key": issue(other_key, requested.subject).public_bytes(pem),
        "expired": issue(requested.public_key(), requested.subject, start_days=-400, days=365).public_bytes(pem),
        "not-yet-valid": issue(requested.public_key(), requested.subject, start_days=5).public_bytes(pem),
        "unreadable": b"\x00\x01 this is not a certificate",
        "no-leaf": ca_certificate().public_bytes(pem) + issue(other_key, requested.subject).public_bytes(pem),
    }
    for code, data in cases.items():
        result = _import(modules, token, data)
        assert result.outcome is Outcome.REFUSED, (code, result.message)
        assert result.field == "certificate"
        assert audit.read(limit=1)[0].reason == f"import:{code}"
    assert "another key" in _import(modules, token, cases["another-key"]).message
    assert "expired" in _import(modules, token, cases["expired"]).message
    assert "missing" in _import(modules, token, cases["no-leaf"]).message
    missing = enrol.import_certificate(modules, token, pin=USER_PIN, source=tmp_path / "nope.pem")
    assert missing.outcome is Outcome.REFUSED and "cannot be read" in missing.message
    pending = enrol.load_pending(token)
    assert pending.stage is Stage.REQUEST
    assert object_ids(softhsm, token, "cert") == {"01"}

    # A PKCS#7 chain (DER) holding the CA and the leaf: the leaf is picked.
    chain = pkcs7.serialize_certificates(
        [ca_certificate(), issue(requested.public_key(), requested.subject)], serialization.Encoding.DER
    )
    assert _import(modules, token, chain).ok
    assert object_ids(softhsm, token, "cert") == {"01", pending.cka_id}


def test_bad_subject_and_wrong_stage(modules: list[Module], token: str) -> None:
    assert enrol.make_request(modules, token, pin=USER_PIN, subject="CN=X").outcome is Outcome.REFUSED  # no key yet
    assert enrol.generate_key(modules, token, pin=USER_PIN).ok
    for subject in ("", "not a subject", "O=No Common Name"):
        result = enrol.make_request(modules, token, pin=USER_PIN, subject=subject)
        assert result.outcome is Outcome.POLICY and result.field == "subject", subject
    assert enrol.load_pending(token).stage is Stage.KEY
    assert enrol.remove_old(modules, token, pin=USER_PIN, confirmed=True).outcome is Outcome.REFUSED


# --- the command line -------------------------------------------------------------------------------------------


def cli(softhsm: SoftHSM, *args: str, stdin: str = USER_PIN + "\n") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tui.enrol_command", "--module", SOFTHSM_MODULE, "re-enrol", "--pin-stdin", *args],
        input=stdin,
        env=softhsm.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        start_new_session=True,  # no controlling terminal: nothing can be asked there
    )


def test_cli_steps(softhsm: SoftHSM, token: str, tmp_path: Path) -> None:
    csr = tmp_path / "req.pem"
    made = cli(softhsm, "--serial", token, "--csr-out", str(csr), "--key-type", "ec-p256")
    assert made.returncode == 0, made.stdout + made.stderr
    assert openssl_verifies(csr.read_text(), tmp_path)
    assert "Иванов Иван" in made.stdout and "--import" in made.stdout
    request = x509.load_pem_x509_csr(csr.read_bytes())
    new_id = enrol.load_pending(token).cka_id

    garbage = tmp_path / "garbage.cer"
    garbage.write_bytes(b"garbage")
    garbage_import = cli(softhsm, "--serial", token, "--import", str(garbage))
    assert garbage_import.returncode == 2 and "No certificate could be read" in garbage_import.stderr  # no login
    cert_file = tmp_path / "issued.cer"
    cert_file.write_bytes(issue(request.public_key(), request.subject).public_bytes(serialization.Encoding.DER))
    imported = cli(softhsm, "--serial", token, "--import", str(cert_file))
    assert imported.returncode == 0, imported.stdout + imported.stderr
    assert object_ids(softhsm, token, "cert") == {"01", new_id}

    unconfirmed = cli(softhsm, "--serial", token, "--remove-old")  # no --yes and no terminal to ask on
    assert unconfirmed.returncode == 2 and "--yes" in unconfirmed.stderr
    assert object_ids(softhsm, token, "cert") == {"01", new_id}
    removed = cli(softhsm, "--serial", token, "--remove-old", "--yes")
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert object_ids(softhsm, token, "cert") == {new_id}
    assert object_ids(softhsm, token, "privkey") == {new_id}
    for output in (made, imported, removed):
        assert USER_PIN not in output.stdout + output.stderr


def test_cli_training_ca_loop_and_usage_errors(softhsm: SoftHSM, token: str, tmp_path: Path) -> None:
    assert cli(softhsm, "--serial", token, stdin=WRONG_PIN + "\n").returncode == 1
    assert cli(softhsm, "--serial", token, stdin="").returncode == 2
    assert cli(softhsm, "--serial", token, "--csr-out", "x", "--subject", "nonsense").returncode == 2
    assert cli(softhsm, "--serial", token, "--import", str(tmp_path / "missing.pem")).returncode == 2
    assert cli(softhsm, "--serial", token, "--term", "3y").returncode == 2
    assert not enrol.pending_path(token).exists()

    loop = cli(
        softhsm,
        "--serial",
        token,
        "--training-ca",
        "--term",
        "3y",
        "--training-ca-dir",
        str(tmp_path / "ca"),
        "--remove-old",
        "--yes",
    )
    assert loop.returncode == 0, loop.stdout + loop.stderr
    ids = object_ids(softhsm, token, "cert")
    assert len(ids) == 1 and "01" not in ids
    cert = certificate_on_token(softhsm, token, ids.pop())
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == 3 * 365
    records = [json.loads(line) for line in audit.audit_path().read_text().splitlines()]
    steps = [record["reason"] for record in records if record["record"] == "outcome"]  # each attempt's end
    assert steps[-6:] == ["login", "keygen", "csr", "import", "login", "remove-old"]


def test_cli_parser_fits_under_the_main_command() -> None:
    """tui/cli.py may pass its shared `token` parent (--serial, --pin-stdin): no clash, same options."""
    from tui import enrol_command

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--module", action="append", default=argparse.SUPPRESS)
    token_parent = argparse.ArgumentParser(add_help=False)
    token_parent.add_argument("--serial", required=True)
    token_parent.add_argument("--pin-stdin", action="store_true")
    for parents in ([common], [common, token_parent]):
        parser = argparse.ArgumentParser()
        enrol_command.add_parser(parser.add_subparsers(dest="command"), parents)
        args = parser.parse_args(["re-enrol", "--serial", "S", "--pin-stdin", "--training-ca", "--term", "3y"])
        assert (args.serial, args.pin_stdin, args.training_ca, args.term) == ("S", True, True, "3y")
    assert tuple(str(kind) for kind in KeyKind) == enrol_command.KEY_TYPES
    assert enrol_command.TERMS == {"1y": Term.ONE_YEAR, "3y": Term.THREE_YEARS}
