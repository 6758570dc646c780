"""What to do when a PKCS#11 library will not start or list its slots: the remedy that fits its stack.

A helpdesk reads the remedy as an instruction, so it must fit the library: openCryptoki's daemon only for
openCryptoki, NSS's initialisation arguments only for NSS's softoken, the smart-card service for libraries
that reach their tokens through PC/SC. The stack is told from the library's file name and, once it is
loaded, its manufacturer; both come from outside, so they only choose among fixed texts.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import PurePath

from core.ckr import CKR_ARGUMENTS_BAD
from core.i18n import N_


class Stack(StrEnum):
    OPENCRYPTOKI = "opencryptoki"
    NSS = "nss"
    PCSC = "pcsc"
    OTHER = "other"


# Marks in a library's file name or manufacturer (lower case). openCryptoki's manufacturer is just "IBM";
# PKCS11_API.so is its Debian alias.
_OPENCRYPTOKI = ("opencryptoki", "pkcs11_api.so")
_NSS = ("softokn", "libnssckbi", "mozilla foundation")
# Libraries that talk to their tokens through pcscd: OpenSC, Yubico's ykcs11, CoolKey, CACKey, SafeNet
# eToken and IDPrime, the Rutoken family (KAZTOKEN's).
_PCSC: tuple[str, ...] = (
    "opensc",
    "ykcs11",
    "yubico",
    "coolkey",
    "cackey",
    "etoken",
    "idprime",
    "rtpkcs11",
    "rutoken",
    "aktiv",
)
_PCSC += ("kztpkcs11", "kaztoken")


def stack_of(path: str, manufacturer: str = "") -> Stack:
    text = f"{PurePath(path).name} {manufacturer}".lower()
    for stack, marks in ((Stack.OPENCRYPTOKI, _OPENCRYPTOKI), (Stack.NSS, _NSS), (Stack.PCSC, _PCSC)):
        if any(mark in text for mark in marks):
            return stack
    return Stack.OTHER


REMEDY_OPENCRYPTOKI = N_(
    "openCryptoki works only while its slot daemon runs: start pkcsslotd (as root: systemctl start pkcsslotd), "
    "then scan again."
)
REMEDY_NSS = N_(
    "This is NSS's software token (Firefox's and Thunderbird's certificate store): it starts only with "
    "initialisation arguments naming its database directory, which a plain PKCS#11 program does not pass "
    "(it answers CKR_ARGUMENTS_BAD). Register it with p11-kit: a file in /etc/pkcs11/modules with 'module:' and "
    "this library's full path, and 'x-init-reserved: configdir=sql:DIRECTORY' (the profile's NSS database); "
    "then scan without --module (or with --module p11-kit-proxy.so). Or use NSS's own tools (certutil, modutil)."
)
REMEDY_ARGUMENTS = N_(
    "The library needs initialisation arguments this console does not pass (it answers CKR_ARGUMENTS_BAD): "
    "register it with p11-kit, with the arguments in 'x-init-reserved:' of its module file, and scan without "
    "--module."
)
REMEDY_PCSC = N_(
    "The library reaches tokens through the smart-card service: start it (as root: systemctl start pcscd), then "
    "scan again; if it is running, reinstall the driver."
)
REMEDY_REINSTALL = N_("The library is installed but refuses to work: reinstall the driver.")


def remedy_for(path: str, manufacturer: str = "", rv: int | None = None) -> str:
    """The remedy (a message id) for a library that failed to start (`rv`: C_Initialize's code) or to list its
    slots (`rv` None: only the stack decides)."""
    stack = stack_of(path, manufacturer)
    if stack is Stack.OPENCRYPTOKI:
        return REMEDY_OPENCRYPTOKI
    if stack is Stack.NSS:
        return REMEDY_NSS
    if rv == CKR_ARGUMENTS_BAD:
        return REMEDY_ARGUMENTS
    if stack is Stack.PCSC:
        return REMEDY_PCSC
    return REMEDY_REINSTALL
