"""Token snapshots: an immutable record of one slot and its token, read without ever logging in.

Only public objects are visible without a login, so keys are matched to certificates through their public
halves (and any private key a token chooses to show). Reading spends no PIN try.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pkcs11 import Attribute, KeyType, ObjectClass
from pkcs11.exceptions import PKCS11Error

from core.certificates import CertificateInfo, parse_certificate
from core.cryptoki import CryptokiError, ExtendedTokenInfo, TokenInfo
from core.flags import SlotFlag, TokenFlag, flag_name, flag_names
from core.modules import Module

# Errors that mean "the token is not there (any more)": it was pulled out between two calls.
# CKR_SLOT_ID_INVALID, CKR_DEVICE_REMOVED, CKR_SESSION_HANDLE_INVALID, CKR_TOKEN_NOT_PRESENT
_GONE_RVS = {0x3, 0x32, 0xB3, 0xE0}


class PinStatus(StrEnum):
    OK = "ok"
    COUNT_LOW = "count-low"
    FINAL_TRY = "final-try"
    LOCKED = "locked"
    NOT_INITIALISED = "not-initialised"
    TO_BE_CHANGED = "to-be-changed"


@dataclass(frozen=True, slots=True)
class PinState:
    status: PinStatus
    tries_left: int | None = None  # exact, from a vendor extension; None where the module cannot say
    max_tries: int | None = None
    to_be_changed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": str(self.status),
            "tries_left": self.tries_left,
            "max_tries": self.max_tries,
            "to_be_changed": self.to_be_changed,
        }


@dataclass(frozen=True, slots=True)
class KeyInfo:
    cka_id: str
    label: str
    key_class: str  # "public" or "private"
    key_type: str  # "rsa", "ec", ...
    bits: int | None
    has_certificate: bool


@dataclass(frozen=True, slots=True)
class TokenSnapshot:
    module_path: str
    slot_id: int
    slot_description: str
    slot_manufacturer: str
    slot_flags: tuple[str, ...]
    token_present: bool
    taken_at: datetime
    initialised: bool = False
    label: str = ""
    serial: str = ""
    manufacturer: str = ""
    model: str = ""
    hardware_version: str = ""
    firmware_version: str = ""
    flags: tuple[str, ...] = ()
    user_pin: PinState = PinState(PinStatus.NOT_INITIALISED)
    so_pin: PinState = PinState(PinStatus.NOT_INITIALISED)
    min_pin_length: int | None = None
    max_pin_length: int | None = None
    free_public_memory: int | None = None
    total_public_memory: int | None = None
    certificates: tuple[CertificateInfo, ...] = ()
    keys: tuple[KeyInfo, ...] = ()
    read_error: str | None = None  # set when the token answered its info but its objects could not be read
    token_error: str | None = None  # set when a token is present but C_GetTokenInfo failed (core.pcsc)

    @property
    def key(self) -> str:
        """Identifies the token across rescans: the serial where there is one, else module and slot."""
        return f"{self.module_path}#{self.serial or f'slot-{self.slot_id}'}"

    @property
    def display_label(self) -> str:
        """The label the way the customer's applet shows it."""
        return self.label.strip() or "<no label>"

    def has_flag(self, flag: TokenFlag) -> bool:
        return flag_name(flag) in self.flags

    def to_dict(self) -> dict[str, Any]:
        return {
            "module": self.module_path,
            "slot_id": self.slot_id,
            "slot_description": self.slot_description,
            "slot_manufacturer": self.slot_manufacturer,
            "slot_flags": list(self.slot_flags),
            "token_present": self.token_present,
            "initialised": self.initialised,
            "label": self.label,
            "serial": self.serial,
            "manufacturer": self.manufacturer,
            "model": self.model,
            "hardware_version": self.hardware_version,
            "firmware_version": self.firmware_version,
            "flags": list(self.flags),
            "user_pin": self.user_pin.to_dict(),
            "so_pin": self.so_pin.to_dict(),
            "min_pin_length": self.min_pin_length,
            "max_pin_length": self.max_pin_length,
            "free_public_memory": self.free_public_memory,
            "total_public_memory": self.total_public_memory,
            "certificates": [_certificate_dict(cert) for cert in self.certificates],
            "keys": [
                {
                    "cka_id": key.cka_id,
                    "label": key.label,
                    "class": key.key_class,
                    "type": key.key_type,
                    "bits": key.bits,
                    "has_certificate": key.has_certificate,
                }
                for key in self.keys
            ],
            "read_error": self.read_error,
            "token_error": self.token_error,
            "taken_at": self.taken_at.isoformat(),
        }


def _certificate_dict(cert: CertificateInfo) -> dict[str, Any]:
    return {
        "cka_id": cert.cka_id,
        "label": cert.label,
        "subject": cert.subject,
        "common_name": cert.common_name,
        "issuer": cert.issuer,
        "serial": cert.serial,
        "not_before": cert.not_before.isoformat() if cert.not_before else None,
        "not_after": cert.not_after.isoformat() if cert.not_after else None,
        "days_left": cert.days_left,
        "key_usage": list(cert.key_usage),
        "extended_key_usage": list(cert.extended_key_usage),
        "fingerprint_sha256": cert.fingerprint_sha256,
        "has_key": cert.has_key,
        "error": cert.error,
    }


_PIN_BITS = {
    role: tuple(int(TokenFlag[f"{role}_PIN_{name}"]) for name in ("LOCKED", "FINAL_TRY", "COUNT_LOW", "TO_BE_CHANGED"))
    for role in ("SO", "USER")
}
_INITIALIZED = int(TokenFlag.TOKEN_INITIALIZED)
_USER_PIN_INITIALIZED = int(TokenFlag.USER_PIN_INITIALIZED)


def pin_state(flags: int, *, so: bool, tries_left: int | None = None, max_tries: int | None = None) -> PinState:
    """The PIN's state from the token flags. Exact counters, where a vendor extension gives them, win."""
    locked, final, low, change = _PIN_BITS["SO" if so else "USER"]
    to_be_changed = bool(flags & change)
    if not flags & _INITIALIZED or (not so and not flags & _USER_PIN_INITIALIZED):
        return PinState(PinStatus.NOT_INITIALISED, tries_left, max_tries, to_be_changed)
    if tries_left is not None and max_tries:
        if tries_left == 0:
            return PinState(PinStatus.LOCKED, tries_left, max_tries, to_be_changed)
        if tries_left == 1:
            return PinState(PinStatus.FINAL_TRY, tries_left, max_tries, to_be_changed)
        if tries_left < max_tries:
            return PinState(PinStatus.COUNT_LOW, tries_left, max_tries, to_be_changed)
    if flags & locked:
        status = PinStatus.LOCKED
    elif flags & final:
        status = PinStatus.FINAL_TRY
    elif flags & low:
        status = PinStatus.COUNT_LOW
    elif to_be_changed:
        status = PinStatus.TO_BE_CHANGED
    else:
        status = PinStatus.OK
    return PinState(status, tries_left, max_tries, to_be_changed)


@dataclass(slots=True)
class _Objects:
    certificates: list[CertificateInfo] = field(default_factory=list)
    keys: list[KeyInfo] = field(default_factory=list)


_KEY_TYPES = {KeyType.RSA: "rsa", KeyType.EC: "ec", KeyType.DSA: "dsa", KeyType.DH: "dh"}


def _read_objects(module: Module, slot: Any, now: datetime) -> _Objects:
    token = slot.get_token()
    session = token.open()
    raw_certs, raw_keys = [], []
    try:
        # One search for everything visible: each search costs three calls, and python-pkcs11 already reads
        # every object's class while building it.
        for obj in session.get_objects():
            if obj.object_class == ObjectClass.CERTIFICATE:
                raw_certs.append(obj.get_attributes([Attribute.ID, Attribute.LABEL, Attribute.VALUE]))
            elif obj.object_class in (ObjectClass.PUBLIC_KEY, ObjectClass.PRIVATE_KEY):
                public = obj.object_class == ObjectClass.PUBLIC_KEY
                wanted = [Attribute.ID, Attribute.LABEL]
                if public and obj.key_type == KeyType.RSA:
                    wanted.append(Attribute.MODULUS_BITS)
                attrs = obj.get_attributes(wanted)
                attrs[Attribute.KEY_TYPE] = obj.key_type
                raw_keys.append(("public" if public else "private", attrs, attrs.get(Attribute.MODULUS_BITS)))
    finally:
        with contextlib.suppress(PKCS11Error):  # the token went away; the session went with it
            session.close()
    key_ids = {bytes(attrs[Attribute.ID] or b"") for _, attrs, _ in raw_keys}
    cert_ids = {bytes(attrs[Attribute.ID] or b"") for attrs in raw_certs}
    objects = _Objects()
    for attrs in raw_certs:
        cka_id = bytes(attrs[Attribute.ID] or b"")
        objects.certificates.append(
            parse_certificate(
                bytes(attrs[Attribute.VALUE] or b""),
                cka_id=cka_id.hex(),
                label=attrs[Attribute.LABEL] or "",
                has_key=cka_id in key_ids,
                now=now,
            )
        )
    for name, attrs, bits in raw_keys:
        cka_id = bytes(attrs[Attribute.ID] or b"")
        objects.keys.append(
            KeyInfo(
                cka_id=cka_id.hex(),
                label=attrs[Attribute.LABEL] or "",
                key_class=name,
                key_type=_KEY_TYPES.get(attrs[Attribute.KEY_TYPE], str(attrs[Attribute.KEY_TYPE])),
                bits=bits,
                has_certificate=cka_id in cert_ids,
            )
        )
    return objects


class TokenGone(Exception):
    """The token was pulled out while it was being read."""


def is_gone(error: BaseException) -> bool:
    from pkcs11.exceptions import DeviceRemoved, SessionHandleInvalid, SlotIDInvalid, TokenNotPresent

    if isinstance(error, DeviceRemoved | TokenNotPresent | SlotIDInvalid | SessionHandleInvalid):
        return True
    return isinstance(error, CryptokiError) and error.rv in _GONE_RVS


def read_snapshot(module: Module, slot: Any, now: datetime | None = None) -> TokenSnapshot:
    """Snapshot of one slot (a python-pkcs11 Slot of `module`). Raises TokenGone if it vanished meanwhile.

    The caller holds `module.lock`.
    """
    now = now or datetime.now(UTC)
    slot_flags = int(slot.flags)
    base = TokenSnapshot(
        module_path=module.path,
        slot_id=int(slot.slot_id),
        slot_description=slot.slot_description,
        slot_manufacturer=slot.manufacturer_id,
        slot_flags=flag_names(slot_flags, SlotFlag),
        token_present=bool(slot_flags & SlotFlag.TOKEN_PRESENT),
        taken_at=now,
    )
    if not base.token_present:
        return base
    try:
        info: TokenInfo = module.raw.token_info(base.slot_id)
        extended: ExtendedTokenInfo | None = None
        if module.raw.has_extended_info:
            try:
                extended = module.raw.extended_token_info(base.slot_id)
            except CryptokiError:
                extended = None  # the extension is a bonus; the standard flags still tell the state
    except (CryptokiError, PKCS11Error) as error:
        if is_gone(error):
            raise TokenGone(str(error)) from error
        # Something is in the reader that the library cannot read: the slot is still reported.
        return replace(base, token_error=str(error) or type(error).__name__)
    flags = info.flags
    initialised = bool(flags & _INITIALIZED)
    fields: dict[str, Any] = {
        "initialised": initialised,
        "label": info.label,
        "serial": info.serial,
        "manufacturer": info.manufacturer,
        "model": info.model,
        "hardware_version": "{}.{}".format(*info.hardware_version),
        "firmware_version": "{}.{}".format(*info.firmware_version),
        "flags": flag_names(flags, TokenFlag),
        "user_pin": pin_state(
            flags,
            so=False,
            tries_left=extended.user_tries_left if extended else None,
            max_tries=extended.user_max_tries if extended else None,
        ),
        "so_pin": pin_state(
            flags,
            so=True,
            tries_left=extended.so_tries_left if extended else None,
            max_tries=extended.so_max_tries if extended else None,
        ),
        "min_pin_length": info.min_pin_len,
        "max_pin_length": info.max_pin_len,
        "free_public_memory": info.free_public_memory,
        "total_public_memory": info.total_public_memory,
    }
    if initialised:
        try:
            objects = _read_objects(module, slot, now)
            fields["certificates"] = tuple(objects.certificates)
            fields["keys"] = tuple(objects.keys)
        except (PKCS11Error, CryptokiError) as error:
            if is_gone(error):
                raise TokenGone(str(error)) from error
            fields["read_error"] = str(error) or type(error).__name__
    return replace(base, **fields)
