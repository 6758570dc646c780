"""The few Cryptoki calls python-pkcs11 does not wrap, over the module it has already loaded.

python-pkcs11 0.10 has no C_InitToken, returns only part of CK_TOKEN_INFO, cannot log in on a session it
already opened, and its C_WaitForSlotEvent wrapper breaks when an event arrives. Rather than shell out to
other tools, this module asks the same shared library for its CK_FUNCTION_LIST with ctypes: dlopen() of a
path python-pkcs11 has loaded returns the same handle, so the calls land on the same initialised library,
and python-pkcs11's session handles are valid here.

Vendor extensions (the Rutoken family's C_EX_GetTokenInfoExtended, which KAZTOKEN inherits) are looked up
by symbol and are optional.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

CK_ULONG = ctypes.c_ulong
CK_RV = CK_ULONG
CK_UNAVAILABLE_INFORMATION = ctypes.c_ulong(-1).value

CKR_OK = 0x0
CKR_ARGUMENTS_BAD = 0x7
CKR_FUNCTION_NOT_SUPPORTED = 0x54
CKR_NO_EVENT = 0x8

CKU_SO = 0
CKU_USER = 1

CKF_DONT_BLOCK = 0x1
CKF_RW_SESSION = 0x2
CKF_SERIAL_SESSION = 0x4

# Order of CK_FUNCTION_LIST (PKCS#11 v2.40 §5.1): the index of each entry point after `version`.
_FUNCTIONS = [
    "C_Initialize",
    "C_Finalize",
    "C_GetInfo",
    "C_GetFunctionList",
    "C_GetSlotList",
    "C_GetSlotInfo",
    "C_GetTokenInfo",
    "C_GetMechanismList",
    "C_GetMechanismInfo",
    "C_InitToken",
    "C_InitPIN",
    "C_SetPIN",
    "C_OpenSession",
    "C_CloseSession",
    "C_CloseAllSessions",
    "C_GetSessionInfo",
    "C_GetOperationState",
    "C_SetOperationState",
    "C_Login",
    "C_Logout",
    "C_CreateObject",
    "C_CopyObject",
    "C_DestroyObject",
    "C_GetObjectSize",
    "C_GetAttributeValue",
    "C_SetAttributeValue",
    "C_FindObjectsInit",
    "C_FindObjects",
    "C_FindObjectsFinal",
    "C_EncryptInit",
    "C_Encrypt",
    "C_EncryptUpdate",
    "C_EncryptFinal",
    "C_DecryptInit",
    "C_Decrypt",
    "C_DecryptUpdate",
    "C_DecryptFinal",
    "C_DigestInit",
    "C_Digest",
    "C_DigestUpdate",
    "C_DigestKey",
    "C_DigestFinal",
    "C_SignInit",
    "C_Sign",
    "C_SignUpdate",
    "C_SignFinal",
    "C_SignRecoverInit",
    "C_SignRecover",
    "C_VerifyInit",
    "C_Verify",
    "C_VerifyUpdate",
    "C_VerifyFinal",
    "C_VerifyRecoverInit",
    "C_VerifyRecover",
    "C_DigestEncryptUpdate",
    "C_DecryptDigestUpdate",
    "C_SignEncryptUpdate",
    "C_DecryptVerifyUpdate",
    "C_GenerateKey",
    "C_GenerateKeyPair",
    "C_WrapKey",
    "C_UnwrapKey",
    "C_DeriveKey",
    "C_SeedRandom",
    "C_GenerateRandom",
    "C_GetFunctionStatus",
    "C_CancelFunction",
    "C_WaitForSlotEvent",
]


class CK_VERSION(ctypes.Structure):
    _fields_ = (("major", ctypes.c_ubyte), ("minor", ctypes.c_ubyte))


class CK_TOKEN_INFO(ctypes.Structure):
    _fields_ = (
        ("label", ctypes.c_char * 32),
        ("manufacturerID", ctypes.c_char * 32),
        ("model", ctypes.c_char * 16),
        ("serialNumber", ctypes.c_char * 16),
        ("flags", CK_ULONG),
        ("ulMaxSessionCount", CK_ULONG),
        ("ulSessionCount", CK_ULONG),
        ("ulMaxRwSessionCount", CK_ULONG),
        ("ulRwSessionCount", CK_ULONG),
        ("ulMaxPinLen", CK_ULONG),
        ("ulMinPinLen", CK_ULONG),
        ("ulTotalPublicMemory", CK_ULONG),
        ("ulFreePublicMemory", CK_ULONG),
        ("ulTotalPrivateMemory", CK_ULONG),
        ("ulFreePrivateMemory", CK_ULONG),
        ("hardwareVersion", CK_VERSION),
        ("firmwareVersion", CK_VERSION),
        ("utcTime", ctypes.c_char * 16),
    )


class CK_FUNCTION_LIST(ctypes.Structure):
    _fields_ = (("version", CK_VERSION), *((name, ctypes.c_void_p) for name in _FUNCTIONS))


# Rutoken-family extended token info (rtpkcs11t.h). The caller states the structure size; older libraries
# know a shorter structure, so the call is retried with the size that ends at ulTokenClass.
class CK_TOKEN_INFO_EXTENDED(ctypes.Structure):
    _fields_ = (
        ("ulSizeofThisStructure", CK_ULONG),
        ("ulTokenType", CK_ULONG),
        ("ulProtocolNumber", CK_ULONG),
        ("ulMicrocodeNumber", CK_ULONG),
        ("ulOrderNumber", CK_ULONG),
        ("flags", CK_ULONG),
        ("ulMaxAdminPinLen", CK_ULONG),
        ("ulMinAdminPinLen", CK_ULONG),
        ("ulMaxUserPinLen", CK_ULONG),
        ("ulMinUserPinLen", CK_ULONG),
        ("ulMaxAdminRetryCount", CK_ULONG),
        ("ulAdminRetryCountLeft", CK_ULONG),
        ("ulMaxUserRetryCount", CK_ULONG),
        ("ulUserRetryCountLeft", CK_ULONG),
        ("serialNumber", ctypes.c_ubyte * 8),
        ("ulTotalMemory", CK_ULONG),
        ("ulFreeMemory", CK_ULONG),
        ("ATR", ctypes.c_ubyte * 64),
        ("ulATRLen", CK_ULONG),
        ("ulTokenClass", CK_ULONG),
        ("ulBatteryVoltage", CK_ULONG),
        ("ulBodyColor", CK_ULONG),
        ("ulFirmwareChecksum", CK_ULONG),
        ("ulBatteryPercentage", CK_ULONG),
        ("ulBatteryFlags", CK_ULONG),
    )


_EXTENDED_SIZES = (
    ctypes.sizeof(CK_TOKEN_INFO_EXTENDED),
    CK_TOKEN_INFO_EXTENDED.ulTokenClass.offset + ctypes.sizeof(CK_ULONG),
)


class CryptokiError(Exception):
    """A Cryptoki call returned something other than CKR_OK."""

    def __init__(self, function: str, rv: int) -> None:
        super().__init__(f"{function} returned 0x{rv:08X}")
        self.function = function
        self.rv = rv


def _text(raw: bytes) -> str:
    """Blank-padded CK_UTF8CHAR field to str; a few modules pad with NULs instead of spaces."""
    return raw.decode("utf-8", errors="replace").rstrip(" \x00")


def _count(value: int) -> int | None:
    return None if value == CK_UNAVAILABLE_INFORMATION else value


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """CK_TOKEN_INFO, whole: what python-pkcs11's Token leaves out included."""

    label: str
    manufacturer: str
    model: str
    serial: str
    flags: int
    max_sessions: int | None
    sessions: int | None
    max_rw_sessions: int | None
    rw_sessions: int | None
    max_pin_len: int | None
    min_pin_len: int | None
    total_public_memory: int | None
    free_public_memory: int | None
    total_private_memory: int | None
    free_private_memory: int | None
    hardware_version: tuple[int, int]
    firmware_version: tuple[int, int]


@dataclass(frozen=True, slots=True)
class ExtendedTokenInfo:
    """The part of the Rutoken-family extension the helpdesk uses: exact PIN retry counters."""

    user_tries_left: int
    user_max_tries: int
    so_tries_left: int
    so_max_tries: int
    flags: int


class Cryptoki:
    """Raw entry points of one loaded PKCS#11 module."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._dll = ctypes.CDLL(path)
        get_list = self._dll.C_GetFunctionList
        get_list.restype = CK_RV
        get_list.argtypes = (ctypes.POINTER(ctypes.POINTER(CK_FUNCTION_LIST)),)
        table = ctypes.POINTER(CK_FUNCTION_LIST)()
        rv = get_list(ctypes.byref(table))
        if rv != CKR_OK:
            raise CryptokiError("C_GetFunctionList", rv)
        self._table = table.contents
        self._functions: dict[str, ctypes._CFuncPtr] = {}
        self._extended = self._vendor("C_EX_GetTokenInfoExtended", ctypes.c_void_p)

    def _function(self, name: str, *argtypes: object) -> ctypes._CFuncPtr:
        function = self._functions.get(name)
        if function is None:
            address = getattr(self._table, name)
            if not address:
                raise CryptokiError(name, CKR_FUNCTION_NOT_SUPPORTED)
            function = self._functions[name] = ctypes.CFUNCTYPE(CK_RV, *argtypes)(address)
        return function

    def _vendor(self, name: str, *argtypes: object) -> ctypes._CFuncPtr | None:
        try:
            symbol = getattr(self._dll, name)
        except AttributeError:
            return None
        symbol.restype = CK_RV
        symbol.argtypes = (CK_ULONG, *argtypes)
        return symbol

    def _call(self, name: str, argtypes: tuple[object, ...], *args: object) -> None:
        rv = self._function(name, *argtypes)(*args)
        if rv != CKR_OK:
            raise CryptokiError(name, rv)

    def token_info(self, slot_id: int) -> TokenInfo:
        info = CK_TOKEN_INFO()
        self._call("C_GetTokenInfo", (CK_ULONG, ctypes.POINTER(CK_TOKEN_INFO)), slot_id, ctypes.byref(info))
        return TokenInfo(
            label=_text(info.label),
            manufacturer=_text(info.manufacturerID),
            model=_text(info.model),
            serial=_text(info.serialNumber),
            flags=info.flags,
            max_sessions=_count(info.ulMaxSessionCount),
            sessions=_count(info.ulSessionCount),
            max_rw_sessions=_count(info.ulMaxRwSessionCount),
            rw_sessions=_count(info.ulRwSessionCount),
            max_pin_len=_count(info.ulMaxPinLen),
            min_pin_len=_count(info.ulMinPinLen),
            total_public_memory=_count(info.ulTotalPublicMemory),
            free_public_memory=_count(info.ulFreePublicMemory),
            total_private_memory=_count(info.ulTotalPrivateMemory),
            free_private_memory=_count(info.ulFreePrivateMemory),
            hardware_version=(info.hardwareVersion.major, info.hardwareVersion.minor),
            firmware_version=(info.firmwareVersion.major, info.firmwareVersion.minor),
        )

    @property
    def has_extended_info(self) -> bool:
        return self._extended is not None

    def extended_token_info(self, slot_id: int) -> ExtendedTokenInfo | None:
        """Exact retry counters from the vendor extension, or None where the module has none."""
        if self._extended is None:
            return None
        info = CK_TOKEN_INFO_EXTENDED()
        for size in _EXTENDED_SIZES:
            info.ulSizeofThisStructure = size
            rv = self._extended(slot_id, ctypes.byref(info))
            if rv == CKR_OK:
                return ExtendedTokenInfo(
                    user_tries_left=info.ulUserRetryCountLeft,
                    user_max_tries=info.ulMaxUserRetryCount,
                    so_tries_left=info.ulAdminRetryCountLeft,
                    so_max_tries=info.ulMaxAdminRetryCount,
                    flags=info.flags,
                )
            if rv != CKR_ARGUMENTS_BAD:
                raise CryptokiError("C_EX_GetTokenInfoExtended", rv)
        return None

    def init_token(self, slot_id: int, so_pin: str, label: str) -> None:
        """C_InitToken. The label is blank-padded to 32 bytes, as PKCS#11 requires (not NUL-padded)."""
        raw_label = label.encode("utf-8")
        if len(raw_label) > 32:
            raise ValueError("token label longer than 32 bytes")
        pin = so_pin.encode("utf-8")
        self._call(
            "C_InitToken",
            (CK_ULONG, ctypes.c_char_p, CK_ULONG, ctypes.c_char_p),
            slot_id,
            pin,
            len(pin),
            raw_label.ljust(32, b" "),
        )

    def open_session(self, slot_id: int, *, rw: bool = False) -> int:
        flags = CKF_SERIAL_SESSION | (CKF_RW_SESSION if rw else 0)
        handle = CK_ULONG()
        self._call(
            "C_OpenSession",
            (CK_ULONG, CK_ULONG, ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(CK_ULONG)),
            slot_id,
            flags,
            None,
            None,
            ctypes.byref(handle),
        )
        return handle.value

    def init_pin(self, session_handle: int, pin: str) -> None:
        """C_InitPIN: the SO sets the user PIN (first time, or to unblock it)."""
        raw = pin.encode("utf-8")
        self._call("C_InitPIN", (CK_ULONG, ctypes.c_char_p, CK_ULONG), session_handle, raw, len(raw))

    def set_pin(self, session_handle: int, old: str, new: str) -> None:
        """C_SetPIN of whoever is logged in on the session."""
        old_raw, new_raw = old.encode("utf-8"), new.encode("utf-8")
        self._call(
            "C_SetPIN",
            (CK_ULONG, ctypes.c_char_p, CK_ULONG, ctypes.c_char_p, CK_ULONG),
            session_handle,
            old_raw,
            len(old_raw),
            new_raw,
            len(new_raw),
        )

    def login(self, session_handle: int, user_type: int, pin: str) -> None:
        """C_Login on a session of ours, so a failed login leaves no session behind (python-pkcs11's does)."""
        raw = pin.encode("utf-8")
        self._call("C_Login", (CK_ULONG, CK_ULONG, ctypes.c_char_p, CK_ULONG), session_handle, user_type, raw, len(raw))

    def logout(self, session_handle: int) -> None:
        self._call("C_Logout", (CK_ULONG,), session_handle)

    def close_session(self, session_handle: int) -> None:
        self._call("C_CloseSession", (CK_ULONG,), session_handle)

    def poll_slot_event(self) -> int | None:
        """Non-blocking C_WaitForSlotEvent: the slot id of a pending event, None when there is none.

        Raises CryptokiError(CKR_FUNCTION_NOT_SUPPORTED) where the module has no slot events (SoftHSM2):
        the caller then polls the slot list.
        """
        slot = CK_ULONG()
        rv = self._function("C_WaitForSlotEvent", CK_ULONG, ctypes.POINTER(CK_ULONG), ctypes.c_void_p)(
            CKF_DONT_BLOCK, ctypes.byref(slot), None
        )
        if rv == CKR_NO_EVENT:
            return None
        if rv != CKR_OK:
            raise CryptokiError("C_WaitForSlotEvent", rv)
        return slot.value
