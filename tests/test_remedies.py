"""The remedy that fits the stack: the choice is a pure function of the library's name, maker and CKR code;
and what a real PC/SC library (Debian's ykcs11) is told when the smart-card service is down."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.ckr import CKR_ARGUMENTS_BAD, CKR_DEVICE_ERROR
from core.remedies import (
    REMEDY_ARGUMENTS,
    REMEDY_NSS,
    REMEDY_OPENCRYPTOKI,
    REMEDY_PCSC,
    REMEDY_REINSTALL,
    remedy_for,
)


@pytest.mark.parametrize(
    ("path", "manufacturer", "rv", "remedy"),
    [
        ("/usr/lib/x86_64-linux-gnu/pkcs11/libopencryptoki.so", "", None, REMEDY_OPENCRYPTOKI),
        ("/usr/lib/x86_64-linux-gnu/pkcs11/PKCS11_API.so", "", 0x5, REMEDY_OPENCRYPTOKI),
        ("/usr/lib/x86_64-linux-gnu/libsoftokn3.so", "", CKR_ARGUMENTS_BAD, REMEDY_NSS),
        ("/opt/firefox/libsoftokn3.so", "", None, REMEDY_NSS),
        ("/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so", "OpenSC Project", CKR_DEVICE_ERROR, REMEDY_PCSC),
        ("/usr/lib/x86_64-linux-gnu/libykcs11.so.2", "Yubico (www.yubico.com)", CKR_DEVICE_ERROR, REMEDY_PCSC),
        ("/usr/lib/librtpkcs11ecp.so", "", None, REMEDY_PCSC),
        ("/opt/vendor/libfoo.so", "", CKR_ARGUMENTS_BAD, REMEDY_ARGUMENTS),
        ("/usr/lib/softhsm/libsofthsm2.so", "SoftHSM", 0x5, REMEDY_REINSTALL),
        ("/opt/vendor/libfoo.so", "", None, REMEDY_REINSTALL),
    ],
)
def test_remedy_fits_the_stack(path: str, manufacturer: str, rv: int | None, remedy: str) -> None:
    assert remedy_for(path, manufacturer, rv) == remedy


def test_only_opencryptoki_is_told_about_pkcsslotd() -> None:
    remedies = {REMEDY_ARGUMENTS, REMEDY_NSS, REMEDY_PCSC, REMEDY_REINSTALL}
    assert "pkcsslotd" in REMEDY_OPENCRYPTOKI and not any("pkcsslotd" in remedy for remedy in remedies)
    assert "pcscd" in REMEDY_PCSC and "initialisation arguments" in REMEDY_NSS


# --- on real stacks -------------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parent.parent
YKCS11 = Path("/usr/lib/x86_64-linux-gnu/libykcs11.so.2")


@pytest.mark.skipif(not YKCS11.exists(), reason="Debian's ykcs11 is not installed")
def test_pcsc_library_without_the_smart_card_service_is_told_to_start_it(tmp_path: Path) -> None:
    """Yubico's ykcs11 answers C_GetSlotList with CKR_DEVICE_ERROR when pcscd cannot be reached. pcsc-lite's
    client takes the service's socket from PCSCLITE_CSOCK_NAME: one that does not exist is a service that is
    down, for this command only (a pcscd other tests run stays untouched)."""
    env = {**os.environ, "PCSCLITE_CSOCK_NAME": str(tmp_path / "no-pcscd.comm")}
    done = subprocess.run(
        [sys.executable, "-m", "tui.cli", "scan", "--json", "--module", str(YKCS11)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    (module,) = json.loads(done.stdout)["modules"]
    assert module["loaded"] and "CKR_DEVICE_ERROR" in module["error"]
    assert module["remedy"] == REMEDY_PCSC and "pcscd" in module["remedy"]
    assert "pkcsslotd" not in done.stdout and "None" not in done.stdout
