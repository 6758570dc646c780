"""Every CK_RV by its name, classified once, and explained in the helpdesk's words.

A library's answer reaches people in three ways: as a stable name in `scan --json` and the audit
(`CKR_PIN_LOCKED`), as a kind the code decides on (the token is gone, the PIN is wrong, …), and as a sentence
with a remedy in the user's language. All three come from here, for the ctypes layer's `CryptokiError` and for
python-pkcs11's exceptions alike, so no screen ever shows `returned 0x000000A0`.
"""

from __future__ import annotations

from enum import StrEnum

from core.i18n import N_, Text

# PKCS#11 v2.40 §11.1 (and 3.0's additions a module may answer with).
NAMES: dict[int, str] = {
    0x000: "CKR_OK",
    0x001: "CKR_CANCEL",
    0x002: "CKR_HOST_MEMORY",
    0x003: "CKR_SLOT_ID_INVALID",
    0x005: "CKR_GENERAL_ERROR",
    0x006: "CKR_FUNCTION_FAILED",
    0x007: "CKR_ARGUMENTS_BAD",
    0x008: "CKR_NO_EVENT",
    0x009: "CKR_NEED_TO_CREATE_THREADS",
    0x00A: "CKR_CANT_LOCK",
    0x010: "CKR_ATTRIBUTE_READ_ONLY",
    0x011: "CKR_ATTRIBUTE_SENSITIVE",
    0x012: "CKR_ATTRIBUTE_TYPE_INVALID",
    0x013: "CKR_ATTRIBUTE_VALUE_INVALID",
    0x01B: "CKR_ACTION_PROHIBITED",
    0x020: "CKR_DATA_INVALID",
    0x021: "CKR_DATA_LEN_RANGE",
    0x030: "CKR_DEVICE_ERROR",
    0x031: "CKR_DEVICE_MEMORY",
    0x032: "CKR_DEVICE_REMOVED",
    0x040: "CKR_ENCRYPTED_DATA_INVALID",
    0x041: "CKR_ENCRYPTED_DATA_LEN_RANGE",
    0x050: "CKR_FUNCTION_CANCELED",
    0x051: "CKR_FUNCTION_NOT_PARALLEL",
    0x054: "CKR_FUNCTION_NOT_SUPPORTED",
    0x060: "CKR_KEY_HANDLE_INVALID",
    0x062: "CKR_KEY_SIZE_RANGE",
    0x063: "CKR_KEY_TYPE_INCONSISTENT",
    0x068: "CKR_KEY_FUNCTION_NOT_PERMITTED",
    0x070: "CKR_MECHANISM_INVALID",
    0x071: "CKR_MECHANISM_PARAM_INVALID",
    0x082: "CKR_OBJECT_HANDLE_INVALID",
    0x090: "CKR_OPERATION_ACTIVE",
    0x091: "CKR_OPERATION_NOT_INITIALIZED",
    0x0A0: "CKR_PIN_INCORRECT",
    0x0A1: "CKR_PIN_INVALID",
    0x0A2: "CKR_PIN_LEN_RANGE",
    0x0A3: "CKR_PIN_EXPIRED",
    0x0A4: "CKR_PIN_LOCKED",
    0x0A5: "CKR_PIN_TOO_WEAK",
    0x0B0: "CKR_SESSION_CLOSED",
    0x0B1: "CKR_SESSION_COUNT",
    0x0B3: "CKR_SESSION_HANDLE_INVALID",
    0x0B4: "CKR_SESSION_PARALLEL_NOT_SUPPORTED",
    0x0B5: "CKR_SESSION_READ_ONLY",
    0x0B6: "CKR_SESSION_EXISTS",
    0x0B7: "CKR_SESSION_READ_ONLY_EXISTS",
    0x0B8: "CKR_SESSION_READ_WRITE_SO_EXISTS",
    0x0C0: "CKR_SIGNATURE_INVALID",
    0x0C1: "CKR_SIGNATURE_LEN_RANGE",
    0x0D0: "CKR_TEMPLATE_INCOMPLETE",
    0x0D1: "CKR_TEMPLATE_INCONSISTENT",
    0x0E0: "CKR_TOKEN_NOT_PRESENT",
    0x0E1: "CKR_TOKEN_NOT_RECOGNIZED",
    0x0E2: "CKR_TOKEN_WRITE_PROTECTED",
    0x100: "CKR_USER_ALREADY_LOGGED_IN",
    0x101: "CKR_USER_NOT_LOGGED_IN",
    0x102: "CKR_USER_PIN_NOT_INITIALIZED",
    0x103: "CKR_USER_TYPE_INVALID",
    0x104: "CKR_USER_ANOTHER_ALREADY_LOGGED_IN",
    0x105: "CKR_USER_TOO_MANY_TYPES",
    0x150: "CKR_BUFFER_TOO_SMALL",
    0x160: "CKR_SAVED_STATE_INVALID",
    0x170: "CKR_INFORMATION_SENSITIVE",
    0x180: "CKR_STATE_UNSAVEABLE",
    0x190: "CKR_CRYPTOKI_NOT_INITIALIZED",
    0x191: "CKR_CRYPTOKI_ALREADY_INITIALIZED",
    0x1A0: "CKR_MUTEX_BAD",
    0x1A1: "CKR_MUTEX_NOT_LOCKED",
    0x200: "CKR_FUNCTION_REJECTED",
    0x1B0: "CKR_NEW_PIN_MODE",
    0x1B1: "CKR_NEXT_OTP",
}

CKR_OK = 0x0
CKR_GENERAL_ERROR = 0x5
CKR_ARGUMENTS_BAD = 0x7
CKR_NO_EVENT = 0x8
CKR_DEVICE_ERROR = 0x30
CKR_DEVICE_REMOVED = 0x32
CKR_FUNCTION_NOT_SUPPORTED = 0x54
CKR_PIN_INCORRECT = 0xA0
CKR_PIN_INVALID = 0xA1
CKR_PIN_LEN_RANGE = 0xA2
CKR_PIN_EXPIRED = 0xA3
CKR_PIN_LOCKED = 0xA4
CKR_SESSION_HANDLE_INVALID = 0xB3
CKR_SESSION_EXISTS = 0xB6
CKR_SESSION_READ_ONLY_EXISTS = 0xB7
CKR_TOKEN_NOT_PRESENT = 0xE0
CKR_TOKEN_NOT_RECOGNIZED = 0xE1
CKR_USER_ALREADY_LOGGED_IN = 0x100
CKR_USER_PIN_NOT_INITIALIZED = 0x102
CKR_USER_ANOTHER_ALREADY_LOGGED_IN = 0x104
CKR_BUFFER_TOO_SMALL = 0x150
CKR_CRYPTOKI_NOT_INITIALIZED = 0x190
CKR_CRYPTOKI_ALREADY_INITIALIZED = 0x191
CKR_VENDOR_DEFINED = 0x80000000


def name(rv: int) -> str:
    """`CKR_PIN_LOCKED`; a vendor's or unknown value keeps its number, so nothing prints as None."""
    if rv in NAMES:
        return NAMES[rv]
    if rv & CKR_VENDOR_DEFINED:
        return f"CKR_VENDOR_DEFINED+0x{rv & ~CKR_VENDOR_DEFINED:X}"
    return f"CKR_0x{rv:08X}"


class Kind(StrEnum):
    """What a CK_RV means for the helpdesk: one decision per kind, made here."""

    TOKEN_GONE = "token-gone"  # pulled out between two calls
    TOKEN_NOT_RECOGNISED = "token-not-recognised"
    PIN_INCORRECT = "pin-incorrect"
    PIN_LOCKED = "pin-locked"
    PIN_REJECTED = "pin-rejected"  # the token cannot hold such a PIN (length, characters, too weak)
    PIN_EXPIRED = "pin-expired"
    PIN_NOT_SET = "pin-not-set"
    BUSY = "busy"  # another program has the token open or logged in
    WRITE_PROTECTED = "write-protected"
    NOT_SUPPORTED = "not-supported"
    DEVICE_ERROR = "device-error"
    NOT_INITIALISED = "library-not-initialised"
    BAD_ARGUMENTS = "bad-arguments"
    MEMORY = "memory"
    OTHER = "other"


_KINDS: dict[int, Kind] = {
    0x003: Kind.TOKEN_GONE,
    0x032: Kind.TOKEN_GONE,
    0x0B0: Kind.TOKEN_GONE,
    0x0B3: Kind.TOKEN_GONE,
    0x0E0: Kind.TOKEN_GONE,
    0x0E1: Kind.TOKEN_NOT_RECOGNISED,
    0x0A0: Kind.PIN_INCORRECT,
    0x0A4: Kind.PIN_LOCKED,
    0x0A1: Kind.PIN_REJECTED,
    0x0A2: Kind.PIN_REJECTED,
    0x0A5: Kind.PIN_REJECTED,
    0x0A3: Kind.PIN_EXPIRED,
    0x102: Kind.PIN_NOT_SET,
    0x0B6: Kind.BUSY,
    0x0B7: Kind.BUSY,
    0x0B8: Kind.BUSY,
    0x100: Kind.BUSY,
    0x104: Kind.BUSY,
    0x0E2: Kind.WRITE_PROTECTED,
    0x0B5: Kind.WRITE_PROTECTED,
    0x054: Kind.NOT_SUPPORTED,
    0x070: Kind.NOT_SUPPORTED,
    0x200: Kind.NOT_SUPPORTED,
    0x01B: Kind.NOT_SUPPORTED,
    0x030: Kind.DEVICE_ERROR,
    0x005: Kind.DEVICE_ERROR,
    0x006: Kind.DEVICE_ERROR,
    0x190: Kind.NOT_INITIALISED,
    0x007: Kind.BAD_ARGUMENTS,
    0x002: Kind.MEMORY,
    0x031: Kind.MEMORY,
}


def kind(rv: int) -> Kind:
    return _KINDS.get(rv, Kind.OTHER)


_EXPLANATIONS: dict[Kind, str] = {
    Kind.TOKEN_GONE: N_("The token was pulled out (or the reader lost it): plug it in again and retry."),
    Kind.TOKEN_NOT_RECOGNISED: N_(
        "Something is in the reader but the driver cannot read it: a token of another kind, or a damaged one."
    ),
    Kind.PIN_INCORRECT: N_("The PIN is wrong."),
    Kind.PIN_LOCKED: N_("The PIN is locked: the token refuses it, even the right one."),
    Kind.PIN_REJECTED: N_("The token cannot hold such a PIN (its length or characters): choose another."),
    Kind.PIN_EXPIRED: N_("The token wants this PIN changed before anything else: change it first (c)."),
    Kind.PIN_NOT_SET: N_("The token has no user PIN yet: personalise it first (p)."),
    Kind.BUSY: N_("Another program has the token open or logged in (the signing applet?): close it, then retry."),
    Kind.WRITE_PROTECTED: N_("The token is write-protected: it cannot be changed."),
    Kind.NOT_SUPPORTED: N_("This token or its driver cannot do that."),
    Kind.DEVICE_ERROR: N_(
        "The token or its driver failed: pull it out, plug it in again and retry; if it persists, try another USB port."
    ),
    Kind.NOT_INITIALISED: N_("The driver was not started: restart the console."),
    Kind.BAD_ARGUMENTS: N_("The driver refused how it was called: it may need settings of its own."),
    Kind.MEMORY: N_("The token or the computer is out of memory."),
    Kind.OTHER: N_("The token's driver answered with an error."),
}


def explain(rv: int) -> Text:
    """The helpdesk's sentence for this answer, with the name kept for the ticket."""
    return Text(N_("{explanation} ({code})"), {"explanation": Text(_EXPLANATIONS[kind(rv)]), "code": name(rv)})


# python-pkcs11 names its exceptions after the CKR (PinIncorrect, SlotIDInvalid): compare without case and "_".
_BY_FOLDED = {name.removeprefix("CKR_").replace("_", "").lower(): rv for rv, name in NAMES.items()} | {
    # the ones python-pkcs11 names otherwise
    "anotheruseralreadyloggedin": 0x104,
    "tokennotrecognised": 0x0E1,
    "functioncancelled": 0x050,
}


def rv_of(error: BaseException) -> int | None:
    """The CK_RV behind an exception of either layer: ours carries it, python-pkcs11's is named after it."""
    rv = getattr(error, "rv", None)
    if isinstance(rv, int):
        return rv
    from pkcs11.exceptions import PKCS11Error

    if isinstance(error, PKCS11Error):
        return _BY_FOLDED.get(type(error).__name__.lower())
    return None


def kind_of(error: BaseException) -> Kind:
    rv = rv_of(error)
    return Kind.OTHER if rv is None else kind(rv)


def describe(error: BaseException) -> str:
    """A short, stable description for logs and `--json`: the CKR name and the call where known."""
    rv = rv_of(error)
    function = getattr(error, "function", None)
    code = name(rv) if rv is not None else type(error).__name__
    return f"{function}: {code}" if function else code
