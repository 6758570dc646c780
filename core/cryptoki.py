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
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from core import ckr
from core.ckr import (
    CKR_ARGUMENTS_BAD,
    CKR_BUFFER_TOO_SMALL,
    CKR_CRYPTOKI_ALREADY_INITIALIZED,
    CKR_FUNCTION_NOT_SUPPORTED,
    CKR_NO_EVENT,
    CKR_OK,
)
from core.cryptoki_structs import (
    CK_ATTRIBUTE,
    CK_C_INITIALIZE_ARGS,
    CK_FUNCTION_LIST,
    CK_INFO,
    CK_SLOT_INFO,
    CK_TOKEN_INFO,
    CK_TOKEN_INFO_EXTENDED,
    CK_ULONG,
)

CK_RV = CK_ULONG
Function = Callable[..., int]  # a Cryptoki entry point through ctypes: it answers a CK_RV
CK_UNAVAILABLE_INFORMATION = ctypes.c_ulong(-1).value
_PARTIAL_OK = (CKR_OK, 0x11, 0x12)  # CKR_ATTRIBUTE_SENSITIVE, _TYPE_INVALID: the others are still filled in
# Attributes and objects are read one by one; a hostile token must not make us allocate without bound.
MAX_ATTRIBUTE_BYTES = 1 << 20
MAX_OBJECTS = 10_000

CKU_SO = 0
CKU_USER = 1

CKF_DONT_BLOCK = 0x1
CKF_RW_SESSION = 0x2
CKF_SERIAL_SESSION = 0x4

_EXTENDED_SIZES = (
    ctypes.sizeof(CK_TOKEN_INFO_EXTENDED),
    CK_TOKEN_INFO_EXTENDED.ulTokenClass.offset + ctypes.sizeof(CK_ULONG),
)


class CryptokiError(Exception):
    """A Cryptoki call returned something other than CKR_OK."""

    def __init__(self, function: str, rv: int) -> None:
        super().__init__(f"{function}: {ckr.name(rv)}")
        self.function = function
        self.rv = rv

    @property
    def kind(self) -> ckr.Kind:
        return ckr.kind(self.rv)


def _text(raw: bytes) -> str:
    """Blank-padded CK_UTF8CHAR field to str; a few modules pad with NULs instead of spaces."""
    return raw.decode("utf-8", errors="replace").rstrip(" \x00")


def _count(value: int) -> int | None:
    return None if value == CK_UNAVAILABLE_INFORMATION else value


# The C structures' contents as named tuples: immutable like the snapshots' dataclasses, and a fifth of their cost
# to define (each dataclass compiles its methods at import, on the path of every `scan`).


class TokenInfo(NamedTuple):
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


class ExtendedTokenInfo(NamedTuple):
    """The part of the Rutoken-family extension the helpdesk uses: exact PIN retry counters."""

    user_tries_left: int
    user_max_tries: int
    so_tries_left: int
    so_max_tries: int
    flags: int


class LibraryInfo(NamedTuple):
    """CK_INFO."""

    manufacturer: str
    description: str
    library_version: tuple[int, int]
    cryptoki_version: tuple[int, int]


class SlotInfo(NamedTuple):
    """CK_SLOT_INFO."""

    description: str
    manufacturer: str
    flags: int


class Cryptoki:
    """Raw entry points of one loaded PKCS#11 module.

    `on_call`, when given, is told the name of every entry point just before it is called: the isolated scan
    reports it to its parent, which can then say which call hung or crashed.
    """

    def __init__(self, path: str, on_call: Callable[[str], None] | None = None) -> None:
        self.path = path
        self._on_call = on_call
        self._dll = ctypes.CDLL(path)
        get_list = self._dll.C_GetFunctionList
        get_list.restype = CK_RV
        get_list.argtypes = (ctypes.POINTER(ctypes.POINTER(CK_FUNCTION_LIST)),)
        table = ctypes.POINTER(CK_FUNCTION_LIST)()
        if on_call:
            on_call("C_GetFunctionList")
        rv = get_list(ctypes.byref(table))
        if rv != CKR_OK:
            raise CryptokiError("C_GetFunctionList", rv)
        if not table:  # a hostile or broken library: CKR_OK and no list
            raise CryptokiError("C_GetFunctionList", ckr.CKR_GENERAL_ERROR)
        self._table = table.contents
        self._functions: dict[str, Function] = {}
        self._extended = self._vendor("C_EX_GetTokenInfoExtended", ctypes.c_void_p)

    def initialize(self, reserved: bytes | None = None) -> bool:
        """C_Initialize on this function list. True if it was already initialised (through python-pkcs11,
        which got the same list), False if this call started it: p11-kit's proxy hands out a new, separate list
        on every C_GetFunctionList, and each needs its own C_Initialize. `reserved` is pReserved of the
        initialisation arguments, which NSS's softoken needs (its configuration string)."""
        # No locking asked for (flags 0, no mutex functions), as python-pkcs11 does: every caller here is one
        # thread, or holds Module.lock. Asking for OS locking made SoftHSM2 2.5× slower per call (measured).
        function = self._function("C_Initialize", ctypes.c_void_p)
        self._note("C_Initialize")
        if reserved is None:
            rv = function(None)
        else:
            keep = ctypes.create_string_buffer(reserved)
            args = CK_C_INITIALIZE_ARGS(flags=0, pReserved=ctypes.cast(keep, ctypes.c_void_p))
            rv = function(ctypes.byref(args))
        if rv == CKR_CRYPTOKI_ALREADY_INITIALIZED:
            return True
        if rv != CKR_OK:
            raise CryptokiError("C_Initialize", rv)
        return False

    def finalize(self) -> None:
        self._call("C_Finalize", (ctypes.c_void_p,), None)

    def info(self) -> LibraryInfo:
        info = CK_INFO()
        self._call("C_GetInfo", (ctypes.POINTER(CK_INFO),), ctypes.byref(info))
        return LibraryInfo(
            manufacturer=_text(info.manufacturerID),
            description=_text(info.libraryDescription),
            library_version=(info.libraryVersion.major, info.libraryVersion.minor),
            cryptoki_version=(info.cryptokiVersion.major, info.cryptokiVersion.minor),
        )

    def slot_list(self, *, token_present: bool = False) -> list[int]:
        """C_GetSlotList, asked twice as PKCS#11 wants (count, then ids), retried if the list grew between."""
        function = self._function("C_GetSlotList", ctypes.c_ubyte, ctypes.POINTER(CK_ULONG), ctypes.POINTER(CK_ULONG))
        for _attempt in range(5):
            count = CK_ULONG()
            self._note("C_GetSlotList")
            rv = function(int(token_present), None, ctypes.byref(count))
            if rv != CKR_OK:
                raise CryptokiError("C_GetSlotList", rv)
            size = min(count.value, 4096)
            slots = (CK_ULONG * max(size, 1))()
            count = CK_ULONG(size)
            self._note("C_GetSlotList")
            rv = function(int(token_present), slots, ctypes.byref(count))
            if rv == CKR_BUFFER_TOO_SMALL:
                continue
            if rv != CKR_OK:
                raise CryptokiError("C_GetSlotList", rv)
            return list(slots[: min(count.value, size)])
        raise CryptokiError("C_GetSlotList", CKR_BUFFER_TOO_SMALL)

    def slot_info(self, slot_id: int) -> SlotInfo:
        info = CK_SLOT_INFO()
        self._call("C_GetSlotInfo", (CK_ULONG, ctypes.POINTER(CK_SLOT_INFO)), slot_id, ctypes.byref(info))
        return SlotInfo(_text(info.slotDescription), _text(info.manufacturerID), info.flags)

    def find_objects(self, session_handle: int) -> list[int]:
        """Every object the session can see (no template), at most MAX_OBJECTS."""
        self._call("C_FindObjectsInit", (CK_ULONG, ctypes.c_void_p, CK_ULONG), session_handle, None, 0)
        handles: list[int] = []
        try:
            batch = (CK_ULONG * 64)()
            count = CK_ULONG()
            while len(handles) < MAX_OBJECTS:
                self._call(
                    "C_FindObjects",
                    (CK_ULONG, ctypes.POINTER(CK_ULONG), CK_ULONG, ctypes.POINTER(CK_ULONG)),
                    session_handle,
                    batch,
                    64,
                    ctypes.byref(count),
                )
                if count.value == 0:
                    break
                handles += batch[: min(count.value, 64)]
        finally:
            self._call("C_FindObjectsFinal", (CK_ULONG,), session_handle)
        return handles

    def attribute(self, session_handle: int, handle: int, attribute_type: int) -> bytes | None:
        """One attribute's value, or None where the object has none, hides it, or the token will not say.

        Asked one at a time: a token answering CKR_ATTRIBUTE_SENSITIVE or _TYPE_INVALID for one attribute then
        costs us that attribute, not the object."""
        function = self._function("C_GetAttributeValue", CK_ULONG, CK_ULONG, ctypes.POINTER(CK_ATTRIBUTE), CK_ULONG)
        template = CK_ATTRIBUTE(attribute_type, None, 0)
        self._note("C_GetAttributeValue")
        rv = function(session_handle, handle, ctypes.byref(template), 1)
        if rv != CKR_OK:
            if ckr.kind(rv) is ckr.Kind.TOKEN_GONE:
                raise CryptokiError("C_GetAttributeValue", rv)
            return None
        length = template.ulValueLen
        if length == CK_UNAVAILABLE_INFORMATION or length > MAX_ATTRIBUTE_BYTES:
            return None
        buffer = ctypes.create_string_buffer(max(length, 1))
        template = CK_ATTRIBUTE(attribute_type, ctypes.cast(buffer, ctypes.c_void_p), length)
        self._note("C_GetAttributeValue")
        rv = function(session_handle, handle, ctypes.byref(template), 1)
        if rv != CKR_OK:
            if ckr.kind(rv) is ckr.Kind.TOKEN_GONE:
                raise CryptokiError("C_GetAttributeValue", rv)
            return None
        return buffer.raw[: min(template.ulValueLen, length)]

    def attributes(self, session_handle: int, handle: int, types: Sequence[int]) -> dict[int, bytes | None]:
        """Several attributes in one template: two calls (lengths, then values) instead of two per attribute.

        PKCS#11 has the library fill every attribute it can and mark the others unavailable, answering
        CKR_ATTRIBUTE_SENSITIVE or _TYPE_INVALID; a library that does anything else (or lies about a length) is
        asked one attribute at a time instead, so one odd attribute never costs the object."""
        function = self._function("C_GetAttributeValue", CK_ULONG, CK_ULONG, ctypes.POINTER(CK_ATTRIBUTE), CK_ULONG)
        template = (CK_ATTRIBUTE * len(types))(*(CK_ATTRIBUTE(attribute_type, None, 0) for attribute_type in types))
        self._note("C_GetAttributeValue")
        rv = function(session_handle, handle, template, len(types))
        if ckr.kind(rv) is ckr.Kind.TOKEN_GONE:
            raise CryptokiError("C_GetAttributeValue", rv)
        if rv not in _PARTIAL_OK:
            return self._one_by_one(session_handle, handle, types)
        lengths = [item.ulValueLen for item in template]
        buffers: dict[int, ctypes.Array[ctypes.c_char]] = {}
        for index, length in enumerate(lengths):
            available = length != CK_UNAVAILABLE_INFORMATION and length <= MAX_ATTRIBUTE_BYTES
            buffers[index] = ctypes.create_string_buffer(max(length, 1) if available else 1)
            template[index].pValue = ctypes.cast(buffers[index], ctypes.c_void_p) if available else None
            template[index].ulValueLen = length if available else 0
        self._note("C_GetAttributeValue")
        rv = function(session_handle, handle, template, len(types))
        if ckr.kind(rv) is ckr.Kind.TOKEN_GONE:
            raise CryptokiError("C_GetAttributeValue", rv)
        if rv not in _PARTIAL_OK:
            return self._one_by_one(session_handle, handle, types)
        values: dict[int, bytes | None] = {}
        for index, attribute_type in enumerate(types):
            asked, got = lengths[index], template[index].ulValueLen
            if template[index].pValue is None or got == CK_UNAVAILABLE_INFORMATION or got > asked:
                values[attribute_type] = None
            else:
                values[attribute_type] = buffers[index].raw[:got]
        return values

    def _one_by_one(self, session_handle: int, handle: int, types: Sequence[int]) -> dict[int, bytes | None]:
        return {attribute_type: self.attribute(session_handle, handle, attribute_type) for attribute_type in types}

    def _note(self, name: str) -> None:
        if self._on_call is not None:
            self._on_call(name)

    def _function(self, name: str, *argtypes: Any) -> Function:
        function = self._functions.get(name)
        if function is None:
            address = getattr(self._table, name)
            if not address:
                raise CryptokiError(name, CKR_FUNCTION_NOT_SUPPORTED)
            function = self._functions[name] = ctypes.CFUNCTYPE(CK_RV, *argtypes)(address)
        return function

    def _vendor(self, name: str, *argtypes: Any) -> Function | None:
        try:
            symbol = getattr(self._dll, name)
        except AttributeError:
            return None
        symbol.restype = CK_RV
        symbol.argtypes = (CK_ULONG, *argtypes)
        vendor: Function = symbol
        return vendor

    def _call(self, name: str, argtypes: tuple[object, ...], *args: object) -> None:
        function = self._function(name, *argtypes)
        self._note(name)
        rv = function(*args)
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
            self._note("C_EX_GetTokenInfoExtended")
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
        function = self._function("C_WaitForSlotEvent", CK_ULONG, ctypes.POINTER(CK_ULONG), ctypes.c_void_p)
        self._note("C_WaitForSlotEvent")
        rv = function(CKF_DONT_BLOCK, ctypes.byref(slot), None)
        if rv == CKR_NO_EVENT:
            return None
        if rv != CKR_OK:
            raise CryptokiError("C_WaitForSlotEvent", rv)
        return slot.value
