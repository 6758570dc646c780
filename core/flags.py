"""CK_TOKEN_INFO and CK_SLOT_INFO flag bits, and their names as the snapshot shows them."""

from __future__ import annotations

from enum import IntFlag


class TokenFlag(IntFlag):
    RNG = 0x1
    WRITE_PROTECTED = 0x2
    LOGIN_REQUIRED = 0x4
    USER_PIN_INITIALIZED = 0x8
    RESTORE_KEY_NOT_NEEDED = 0x20
    CLOCK_ON_TOKEN = 0x40
    PROTECTED_AUTHENTICATION_PATH = 0x100
    DUAL_CRYPTO_OPERATIONS = 0x200
    TOKEN_INITIALIZED = 0x400
    SECONDARY_AUTHENTICATION = 0x800
    USER_PIN_COUNT_LOW = 0x10000
    USER_PIN_FINAL_TRY = 0x20000
    USER_PIN_LOCKED = 0x40000
    USER_PIN_TO_BE_CHANGED = 0x80000
    SO_PIN_COUNT_LOW = 0x100000
    SO_PIN_FINAL_TRY = 0x200000
    SO_PIN_LOCKED = 0x400000
    SO_PIN_TO_BE_CHANGED = 0x800000
    ERROR_STATE = 0x1000000


class ExtendedFlag(IntFlag):
    """The flags of the Rutoken-family CK_TOKEN_INFO_EXTENDED (rtpkcs11t.h): the user PIN's change policy, and
    whether each PIN is still the factory default, which the token tells without a login."""

    ADMIN_CHANGE_USER_PIN = 0x1
    USER_CHANGE_USER_PIN = 0x2
    ADMIN_PIN_NOT_DEFAULT = 0x4
    USER_PIN_NOT_DEFAULT = 0x8


class SlotFlag(IntFlag):
    TOKEN_PRESENT = 0x1
    REMOVABLE_DEVICE = 0x2
    HW_SLOT = 0x4


def _bits(kind: type[IntFlag]) -> tuple[tuple[int, str], ...]:
    return tuple((member.value, member.name.lower().replace("_", "-")) for member in kind)  # type: ignore[union-attr]


# Plain ints: decoding runs for every token of every scan, and enum arithmetic is slow.
_NAMES = {TokenFlag: _bits(TokenFlag), SlotFlag: _bits(SlotFlag), ExtendedFlag: _bits(ExtendedFlag)}


def flag_name(flag: IntFlag) -> str:
    return flag.name.lower().replace("_", "-")  # type: ignore[union-attr]


def flag_names(flags: int, kind: type[IntFlag]) -> tuple[str, ...]:
    """Names of the set bits, lower-case with dashes (`user-pin-count-low`); unknown bits as hex."""
    bits = _NAMES[kind]
    names = [name for value, name in bits if flags & value]
    unknown = flags & ~sum(value for value, _name in bits)
    if unknown:
        names.append(f"0x{unknown:x}")
    return tuple(names)
