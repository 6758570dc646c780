"""Real SoftHSM2 tokens for tests, put into chosen states with the independent tools (softhsm2-util,
OpenSC's pkcs11-tool) and certificates made with `cryptography`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

SOFTHSM_MODULE = next(
    (
        p
        for p in ("/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so")
        if os.path.exists(p)
    ),
    "/usr/lib/softhsm/libsofthsm2.so",
)
USER_PIN = "12345678"
SO_PIN = "87654321"


def run(*args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, capture_output=True, text=True, check=check, timeout=120)


@dataclass
class SoftHSM:
    """One SoftHSM2 token directory with its own SOFTHSM2_CONF."""

    root: Path

    def __post_init__(self) -> None:
        self.tokens = self.root / "tokens"
        self.tokens.mkdir(parents=True, exist_ok=True)
        self.conf = self.root / "softhsm2.conf"
        self.conf.write_text(f"directories.tokendir = {self.tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SOFTHSM2_CONF": str(self.conf)}

    def init_token(self, label: str, so_pin: str = SO_PIN, pin: str = USER_PIN) -> str:
        """A new initialised token; returns its serial."""
        out = run(
            "softhsm2-util", "--init-token", "--free", "--label", label, "--so-pin", so_pin, "--pin", pin, env=self.env
        ).stdout
        slot = int(re.search(r"reassigned to slot (\d+)", out).group(1))
        return self.serial_of_slot(slot)

    def _slots(self) -> dict[int, str]:
        out = run("softhsm2-util", "--show-slots", env=self.env).stdout
        parts = re.split(r"^Slot (\d+)$", out, flags=re.M)
        return {int(slot): block for slot, block in zip(parts[1::2], parts[2::2], strict=True)}

    def serial_of_slot(self, slot: int) -> str:
        return re.search(r"Serial number:\s+(\S+)", self._slots()[slot]).group(1)

    def tool(self, serial: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """OpenSC's pkcs11-tool on the token with this serial."""
        return run(
            "pkcs11-tool",
            "--module",
            SOFTHSM_MODULE,
            "--slot",
            str(self.slot_of(serial)),
            *args,
            env=self.env,
            check=check,
        )

    def slot_of(self, serial: str) -> int:
        return next(slot for slot, block in self._slots().items() if re.search(rf"Serial number:\s+{serial}\b", block))

    def token_flags(self, serial: str) -> str:
        """The token flags line as pkcs11-tool prints it: the independent view of the token's state."""
        out = run("pkcs11-tool", "--module", SOFTHSM_MODULE, "-L", env=self.env).stdout
        for block in re.split(r"^Slot ", out, flags=re.M)[1:]:
            if re.search(rf"serial num\s+:\s+{serial}\b", block):
                return re.search(r"token flags\s+:\s+(.*)", block).group(1)
        raise LookupError(serial)

    def generate_key(self, serial: str, cka_id: str, pin: str = USER_PIN) -> None:
        self.tool(
            serial,
            "--login",
            "--pin",
            pin,
            "--keypairgen",
            "--key-type",
            "rsa:2048",
            "--id",
            cka_id,
            "--label",
            f"key-{cka_id}",
        )

    def public_key(self, serial: str, cka_id: str):
        result = subprocess.run(
            [
                "pkcs11-tool",
                "--module",
                SOFTHSM_MODULE,
                "--slot",
                str(self.slot_of(serial)),
                "--read-object",
                "--type",
                "pubkey",
                "--id",
                cka_id,
            ],
            env=self.env,
            capture_output=True,
            check=True,
            timeout=60,
        )
        return serialization.load_der_public_key(result.stdout)

    def write_certificate(self, serial: str, cert: x509.Certificate, cka_id: str, pin: str = USER_PIN) -> None:
        path = self.root / f"cert-{serial}-{cka_id}.der"
        path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
        self.tool(
            serial,
            "--login",
            "--pin",
            pin,
            "--write-object",
            str(path),
            "--type",
            "cert",
            "--id",
            cka_id,
            "--label",
            f"cert-{cka_id}",
        )

    def write_raw_certificate(self, serial: str, der: bytes, cka_id: str, pin: str = USER_PIN) -> None:
        """A CKO_CERTIFICATE holding any bytes: pkcs11-tool refuses to write a value it cannot parse, so this
        goes through python-pkcs11 in a process of its own."""
        script = (
            "import sys, pkcs11\n"
            "from pkcs11 import Attribute, ObjectClass, CertificateType\n"
            "lib = pkcs11.lib(sys.argv[1])\n"
            "tok = lib.get_token(token_serial=sys.argv[2].encode())\n"
            "with tok.open(rw=True, user_pin=sys.argv[3]) as s:\n"
            "    s.create_object({Attribute.CLASS: ObjectClass.CERTIFICATE, Attribute.TOKEN: True,\n"
            "        Attribute.CERTIFICATE_TYPE: CertificateType.X_509, Attribute.ID: bytes.fromhex(sys.argv[4]),\n"
            "        Attribute.SUBJECT: b'\\x30\\x00', Attribute.LABEL: 'damaged',\n"
            "        Attribute.VALUE: bytes.fromhex(sys.argv[5])})\n"
        )
        run(sys.executable, "-c", script, SOFTHSM_MODULE, serial, pin, cka_id, der.hex(), env=self.env)

    def fail_login(self, serial: str, so: bool = False) -> None:
        # An SO login needs a read-write session, which -O does not open: ask for a PIN change instead.
        args = (
            ["--login", "--login-type", "so", "--so-pin", "00000000", "--change-pin", "--new-pin", "11111111"]
            if so
            else ["--login", "--pin", "00000000", "-O"]
        )
        self.tool(serial, *args, check=False)

    def profile(
        self,
        serial: str,
        cka_id: str = "01",
        *,
        days_valid: int = 365,
        starts_in_days: int = -1,
        common_name: str = "Иванов Иван",
    ) -> x509.Certificate:
        """A complete signing profile: key pair on the token and a certificate for it with this validity."""
        self.generate_key(serial, cka_id)
        cert = issue_certificate(
            self.public_key(serial, cka_id),
            common_name=common_name,
            days_valid=days_valid,
            starts_in_days=starts_in_days,
        )
        self.write_certificate(serial, cert, cka_id)
        return cert


_CA_KEY = None


def issue_certificate(public_key, *, common_name: str, days_valid: int, starts_in_days: int = -1) -> x509.Certificate:
    """A certificate for `public_key`, signed by a test CA, valid from now+starts_in_days for days_valid days."""
    global _CA_KEY
    _CA_KEY = _CA_KEY or rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.now(UTC)
    start = now + timedelta(days=starts_in_days)
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test KISC CA")])
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=days_valid))
        .add_extension(x509.KeyUsage(True, True, False, False, False, False, False, False, False), critical=True)
        .sign(_CA_KEY, hashes.SHA256())
    )
