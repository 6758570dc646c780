"""The remedy that fits the stack: the choice is a pure function of the library's name, maker and CKR code."""

from __future__ import annotations

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
