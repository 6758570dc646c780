"""Token snapshots: an immutable record of one slot and its token, read without ever logging in.

Only public objects are visible without a login, so keys are matched to certificates through their public
halves (and any private key a token chooses to show). Reading spends no PIN try.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import sys
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from core import ckr, lockouts
from core.certificates import CertificateInfo, RawCertificate
from core.cryptoki import Cryptoki, CryptokiError, ExtendedTokenInfo, TokenInfo
from core.flags import ExtendedFlag, SlotFlag, TokenFlag, flag_name, flag_names

if TYPE_CHECKING:
    from core.modules import Module


class PinStatus(StrEnum):
    OK = "ok"
    COUNT_LOW = "count-low"
    FINAL_TRY = "final-try"
    LOCKED = "locked"
    LOCKED_FOR_NOW = "locked-for-now"  # a login was refused as locked while the flags are silent (core.lockouts)
    NOT_INITIALISED = "not-initialised"
    TO_BE_CHANGED = "to-be-changed"


@dataclass(frozen=True, slots=True)
class PinState:
    """One PIN's state as the token's flags (and a vendor extension's counters, where there is one) say it."""

    status: PinStatus
    tries_left: int | None = None  # exact, from a vendor extension; None where the module cannot say
    max_tries: int | None = None
    to_be_changed: bool = False
    default: bool | None = None  # still the factory PIN, from a vendor extension; None where the module cannot say

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": str(self.status),
            "tries_left": self.tries_left,
            "max_tries": self.max_tries,
            "to_be_changed": self.to_be_changed,
            "default": self.default,
        }


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """A key object seen without a login: which kind, its CKA_ID, and whether a certificate has the same id."""

    cka_id: str
    label: str
    key_class: str  # "public" or "private"
    key_type: str  # "rsa", "ec", ...
    bits: int | None
    has_certificate: bool


_REMOVABLE = flag_name(SlotFlag.REMOVABLE_DEVICE)


@dataclass(frozen=True, slots=True)
class TokenSnapshot:
    """One slot and its token as one read saw them: what every finding, screen and report is made from."""

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
    extended_flags: tuple[str, ...] | None = None  # the vendor extension's flags; None where the module has none
    user_pin: PinState = PinState(PinStatus.NOT_INITIALISED)
    so_pin: PinState = PinState(PinStatus.NOT_INITIALISED)
    min_pin_length: int | None = None
    max_pin_length: int | None = None
    free_public_memory: int | None = None
    total_public_memory: int | None = None
    certificates: tuple[CertificateInfo, ...] = ()
    keys: tuple[KeyInfo, ...] = ()
    read_error: str | None = None  # set when the token answered its info but its objects could not be read
    token_error: str | None = None  # the CKR name when a token is present but C_GetTokenInfo failed
    other_objects: int = 0
    unreadable_objects: int = 0
    kaztoken: bool = True  # from a KAZTOKEN-family library (or the lab's stand-ins); else another device

    @property
    def device_name(self) -> str:
        """What to call the device: «KAZTOKEN» as the customer's applet does, else what the token says it is."""
        if self.kaztoken:
            return "KAZTOKEN"
        return " ".join(part for part in (self.manufacturer, self.model) if part) or "PKCS#11"

    @property
    def token_id(self) -> str:
        """Names this token across rescans and commands (`scan --json`, `--token ID`): library, slot and serial,
        because a serial alone is not unique (tpm2-pkcs11 gives every token 0000000000000000)."""
        return token_id(self.module_path, self.slot_id, self.serial)

    @property
    def key(self) -> str:
        return self.token_id

    @property
    def in_reader(self) -> bool:
        """The slot takes removable tokens (CKF_REMOVABLE_DEVICE): a reader, not a software module's slot."""
        return _REMOVABLE in self.slot_flags

    @property
    def display_label(self) -> str:
        """The label the way the customer's applet shows it."""
        return self.label.strip() or "<no label>"

    @property
    def lockout_key(self) -> lockouts.TokenKey:
        """Module, slot, serial and label: what core.lockouts tells tokens apart by (tpm2 serials are all equal)."""
        return lockouts.token_key(self.module_path, self.slot_id, self.serial, self.label)

    def has_flag(self, flag: TokenFlag) -> bool:
        return flag_name(flag) in self.flags

    def to_dict(self) -> dict[str, Any]:
        return {
            "token_id": self.token_id,
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
            "extended_flags": None if self.extended_flags is None else list(self.extended_flags),
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
            "other_objects": self.other_objects,
            "unreadable_objects": self.unreadable_objects,
            "kaztoken": self.kaztoken,
            "device": self.device_name,
            "taken_at": self.taken_at.isoformat(),
        }


@functools.lru_cache(maxsize=4096)  # asked at every render and sort of the console
def token_id(module_path: str, slot_id: int, serial: str) -> str:
    import hashlib  # here: loading OpenSSL's libcrypto costs 3 ms, and a library's host process never needs it

    digest = hashlib.sha256(f"{_real_path(module_path)}\0{slot_id}\0{serial}".encode(errors="replace"))
    return digest.hexdigest()[:12]


@functools.lru_cache(maxsize=64)  # once per library, not once per token: realpath costs a system call per part
def _real_path(module_path: str) -> str:
    return os.path.realpath(module_path)


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


def _is_default(extended_flags: int | None, not_default: ExtendedFlag) -> bool | None:
    return None if extended_flags is None else not extended_flags & not_default


def pin_state(
    flags: int,
    *,
    so: bool,
    tries_left: int | None = None,
    max_tries: int | None = None,
    default: bool | None = None,
) -> PinState:
    """The PIN's state from the token flags. Exact counters, where a vendor extension gives them, win."""
    locked, final, low, change = _PIN_BITS["SO" if so else "USER"]
    to_be_changed = bool(flags & change)
    if not flags & _INITIALIZED or (not so and not flags & _USER_PIN_INITIALIZED):
        return PinState(PinStatus.NOT_INITIALISED, tries_left, max_tries, to_be_changed, default)
    if tries_left is not None and max_tries:
        if tries_left == 0:
            return PinState(PinStatus.LOCKED, tries_left, max_tries, to_be_changed, default)
        if tries_left == 1:
            return PinState(PinStatus.FINAL_TRY, tries_left, max_tries, to_be_changed, default)
        if tries_left < max_tries:
            return PinState(PinStatus.COUNT_LOW, tries_left, max_tries, to_be_changed, default)
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
    return PinState(status, tries_left, max_tries, to_be_changed, default)


class _Objects:
    """What one token's objects are, gathered while they are read (a plain class: nothing outside sees it)."""

    __slots__ = ("certificates", "keys", "other", "unreadable")

    def __init__(self) -> None:
        self.certificates: list[CertificateInfo] = []  # or RawCertificate: see _read_objects
        self.keys: list[KeyInfo] = []
        self.other = 0  # data objects, secret keys, vendor-defined classes (p11-kit's trust objects, …)
        self.unreadable = 0


# Attribute types and values (PKCS#11 v2.40 §4): read with the ctypes layer, so an object class or key type no
# enum knows (vendor-defined: p11-kit, gnome-keyring, cackey) is just "another object", never an exception.
CKA_CLASS, CKA_LABEL, CKA_VALUE, CKA_ID, CKA_KEY_TYPE, CKA_MODULUS_BITS = 0x0, 0x3, 0x11, 0x102, 0x100, 0x121
CKO_CERTIFICATE, CKO_PUBLIC_KEY, CKO_PRIVATE_KEY = 1, 2, 3
_KEY_TYPES = {0: "rsa", 1: "dsa", 2: "dh", 3: "ec"}
_ULONG = ctypes.sizeof(ctypes.c_ulong)


def _ulong(value: bytes | None) -> int | None:
    return int.from_bytes(value, sys.byteorder) if value is not None and len(value) == _ULONG else None


def _label(value: bytes | None) -> str:
    return (value or b"").decode("utf-8", errors="replace")


def _read_objects(raw: Cryptoki, slot_id: int, now: datetime, *, parse: bool) -> _Objects:
    """Every object visible without a login, each read on its own: one unreadable object is counted, and the
    rest of the token is still reported. Without `parse`, certificates stay RawCertificate (for the parent)."""
    session = raw.open_session(slot_id)
    raw_certs: list[tuple[bytes, str, bytes]] = []
    raw_keys: list[tuple[str, bytes, str, int | None, int | None]] = []
    objects = _Objects()
    try:
        for handle in raw.find_objects(session):
            try:
                # One template for what every kind of object may have; the value only for certificates.
                values = raw.attributes(session, handle, (CKA_CLASS, CKA_ID, CKA_LABEL, CKA_KEY_TYPE, CKA_MODULUS_BITS))
                object_class = _ulong(values[CKA_CLASS])
                if object_class == CKO_CERTIFICATE:
                    value = raw.attribute(session, handle, CKA_VALUE)
                    raw_certs.append((values[CKA_ID] or b"", _label(values[CKA_LABEL]), value or b""))
                elif object_class in (CKO_PUBLIC_KEY, CKO_PRIVATE_KEY):
                    key_type = _ulong(values[CKA_KEY_TYPE])
                    public = object_class == CKO_PUBLIC_KEY
                    bits = _ulong(values[CKA_MODULUS_BITS]) if public and key_type == 0 else None
                    name = "public" if public else "private"
                    raw_keys.append((name, values[CKA_ID] or b"", _label(values[CKA_LABEL]), key_type, bits))
                elif object_class is None:
                    objects.unreadable += 1
                else:
                    objects.other += 1
            except CryptokiError as error:
                if is_gone(error):
                    raise
                objects.unreadable += 1
    finally:
        with contextlib.suppress(CryptokiError):  # the token went away; the session went with it
            raw.close_session(session)
    key_ids = {cka_id for _, cka_id, _, _, _ in raw_keys}
    cert_ids = {cka_id for cka_id, _, _ in raw_certs}
    for cka_id, label, value in raw_certs:
        found = RawCertificate(cka_id=cka_id.hex(), label=label, has_key=cka_id in key_ids, der=value)
        objects.certificates.append(found.parsed(now) if parse else found)  # type: ignore[arg-type]
    for name, cka_id, label, key_type, bits in raw_keys:
        objects.keys.append(
            KeyInfo(
                cka_id=cka_id.hex(),
                label=label,
                key_class=name,
                key_type=_KEY_TYPES.get(key_type, "other") if key_type is not None else "unknown",
                bits=bits,
                has_certificate=cka_id in cert_ids,
            )
        )
    return objects


class TokenGone(Exception):
    """The token was pulled out while it was being read."""


def is_gone(error: BaseException) -> bool:
    return ckr.kind_of(error) is ckr.Kind.TOKEN_GONE


def read_snapshot(module: Module, slot: Any, now: datetime | None = None) -> TokenSnapshot:
    """Snapshot of one slot (a python-pkcs11 Slot, or its id) of a module loaded in this process. The caller
    holds `module.lock`. Raises TokenGone if it vanished meanwhile."""
    slot_id = slot if isinstance(slot, int) else int(slot.slot_id)
    return with_lockouts(read_slot(module.raw, module.path, slot_id, now))


def read_slot(
    raw: Cryptoki,
    module_path: str,
    slot_id: int,
    now: datetime | None = None,
    *,
    with_objects: bool = True,
    parse: bool = True,
) -> TokenSnapshot:
    """Snapshot of one slot through the ctypes layer alone. Raises TokenGone if the token vanished meanwhile;
    any other failure of the library is kept in the snapshot (`token_error`, `read_error`), never raised.
    Without `parse` its certificates are RawCertificate, for `with_parsed_certificates` in another process."""
    now = now or datetime.now(UTC)
    try:
        slot_info = raw.slot_info(slot_id)
    except CryptokiError as error:
        if is_gone(error):
            raise TokenGone(str(error)) from error
        raise
    slot: dict[str, Any] = {
        "module_path": module_path,
        "slot_id": slot_id,
        "slot_description": slot_info.description,
        "slot_manufacturer": slot_info.manufacturer,
        "slot_flags": flag_names(slot_info.flags, SlotFlag),
        "token_present": bool(slot_info.flags & SlotFlag.TOKEN_PRESENT),
        "taken_at": now,
    }
    if not slot["token_present"]:
        return TokenSnapshot(**slot)
    try:
        info: TokenInfo = raw.token_info(slot_id)
    except CryptokiError as error:
        if is_gone(error):
            raise TokenGone(str(error)) from error
        # Present but unreadable: OpenSC's answer for a card it does not know (CKR_TOKEN_NOT_RECOGNIZED).
        return TokenSnapshot(**slot, token_error=ckr.name(error.rv))
    extended: ExtendedTokenInfo | None = None
    if raw.has_extended_info:
        try:
            extended = raw.extended_token_info(slot_id)
        except CryptokiError:
            extended = None  # the extension is a bonus; the standard flags still tell the state
    flags = info.flags
    initialised = bool(flags & _INITIALIZED)
    extended_flags = extended.flags if extended else None
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
            default=_is_default(extended_flags, ExtendedFlag.USER_PIN_NOT_DEFAULT),
        ),
        "so_pin": pin_state(
            flags,
            so=True,
            tries_left=extended.so_tries_left if extended else None,
            max_tries=extended.so_max_tries if extended else None,
            default=_is_default(extended_flags, ExtendedFlag.ADMIN_PIN_NOT_DEFAULT),
        ),
        "extended_flags": None if extended_flags is None else flag_names(extended_flags, ExtendedFlag),
        "min_pin_length": info.min_pin_len,
        "max_pin_length": info.max_pin_len,
        "free_public_memory": info.free_public_memory,
        "total_public_memory": info.total_public_memory,
    }
    if initialised and with_objects:
        try:
            objects = _read_objects(raw, slot_id, now, parse=parse)
            fields["certificates"] = tuple(objects.certificates)
            fields["keys"] = tuple(objects.keys)
            fields["other_objects"] = objects.other
            fields["unreadable_objects"] = objects.unreadable
        except CryptokiError as error:
            if is_gone(error):
                raise TokenGone(str(error)) from error
            fields["read_error"] = ckr.describe(error)
    return TokenSnapshot(**slot, **fields)  # built once: a poll reads every slot's head each second


def without_objects(snapshot: TokenSnapshot) -> TokenSnapshot:
    """The snapshot as `read_slot(..., with_objects=False)` gives it: what a poll compares to see a change."""
    return replace(snapshot, certificates=(), keys=(), other_objects=0, unreadable_objects=0, read_error=None)


def with_parsed_certificates(snapshot: TokenSnapshot) -> TokenSnapshot:
    """The snapshot with its RawCertificate parsed (as of the read: days left count from `taken_at`)."""
    if not any(isinstance(cert, RawCertificate) for cert in snapshot.certificates):
        return snapshot
    parsed = tuple(
        cert.parsed(snapshot.taken_at) if isinstance(cert, RawCertificate) else cert for cert in snapshot.certificates
    )
    return replace(snapshot, certificates=parsed)


def with_lockouts(snapshot: TokenSnapshot) -> TokenSnapshot:
    """A PIN a login found locked while the flags say nothing shows as locked for now (core.lockouts). Applied
    in this process, where the logins happen: to its own reads (`read_snapshot`) and to the scan's, which come
    from child processes that do not share this memory (core.scan)."""
    roles = lockouts.locked_roles(snapshot.lockout_key)
    if not roles:
        return snapshot
    changes: dict[str, Any] = {
        name: replace(pin, status=PinStatus.LOCKED_FOR_NOW)
        for name, pin, role in (("user_pin", snapshot.user_pin, "user"), ("so_pin", snapshot.so_pin, "admin"))
        if role in roles and pin.status is not PinStatus.LOCKED
    }
    return replace(snapshot, **changes)
