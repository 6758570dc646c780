"""One way to open, log in to, log out of and close a PKCS#11 session; to initialise a token and set its PINs; and
the object templates written to a token. Used by the actions (core.frame, core.actions), re-enrolment
(core.enrol) and the training lab (core.lab).

PIN calls go through the ctypes layer (core.cryptoki): python-pkcs11's own login leaks its session when the PIN
is refused. Every session opened here is closed again, also on a refused PIN or a token pulled out, so a wrong
PIN entered all day leaves none behind. Objects (key generation, certificates) need python-pkcs11's session
object: `objects_logged_in` opens one without a PIN and logs it in through core.cryptoki; python-pkcs11's
errors raised in it reach the caller as `CryptokiError` with the same CK_RV (`translated`), so callers meet one
error type, classified by core.ckr. python-pkcs11 is touched here and in the scan's reading of the token only.

Each call and the CKR name it answered goes to the log (core.logs); a PIN, a label or any other argument never.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import pkcs11
from asn1crypto.core import Integer
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pkcs11 import Attribute, CertificateType, ObjectClass
from pkcs11.exceptions import PKCS11Error

from core import ckr
from core.cryptoki import CKU_SO, CKU_USER, Cryptoki, CryptokiError
from core.logs import logger

if TYPE_CHECKING:
    from pkcs11._pkcs11 import lib as Library  # the class behind the factory function pkcs11.lib

log = logger(__name__)

# What a refused login becomes for the caller: the outcome a person sees (core.frame), or the error itself.
Refused = Callable[[CryptokiError], BaseException]
Template = dict[Attribute, Any]

_T = TypeVar("_T")

_USER_TYPES = {CKU_SO: "CKU_SO", CKU_USER: "CKU_USER"}


def _noted(call: str, error: BaseException | None = None, user_type: int | None = None) -> None:
    who = f" {_USER_TYPES.get(user_type, 'vendor user type')}" if user_type is not None else ""
    rv = ckr.rv_of(error) if error is not None else ckr.CKR_OK
    answer = ckr.name(rv) if rv is not None else type(error).__name__
    log.info("%s%s -> %s", call, who, answer)


def _logged(call: str, work: Callable[[], _T], user_type: int | None = None) -> _T:
    try:
        result = work()
    except (CryptokiError, PKCS11Error) as error:
        _noted(call, error, user_type)
        raise
    _noted(call, None, user_type)
    return result


# --- sessions through core.cryptoki ------------------------------------------------------------------------------


@contextlib.contextmanager
def opened(raw: Cryptoki, slot_id: int) -> Iterator[int]:
    """A read-write session's handle, always closed again."""
    handle = _logged("C_OpenSession", lambda: raw.open_session(slot_id, rw=True))
    try:
        yield handle
    finally:
        close(raw, handle)


def close(raw: Cryptoki, handle: int) -> None:
    """C_CloseSession, whatever it answers (the token may be gone: its sessions are then gone too)."""
    with contextlib.suppress(CryptokiError):
        _logged("C_CloseSession", lambda: raw.close_session(handle))


def login(raw: Cryptoki, handle: int, user_type: int, pin: str) -> None:
    _logged("C_Login", lambda: raw.login(handle, user_type, pin), user_type)


def logout(raw: Cryptoki, handle: int) -> None:
    """C_Logout, whatever it answers: the session is closed next either way."""
    with contextlib.suppress(CryptokiError):
        _logged("C_Logout", lambda: raw.logout(handle))


def _login_or_refuse(raw: Cryptoki, handle: int, user_type: int, pin: str, refused: Refused | None) -> None:
    try:
        login(raw, handle, user_type, pin)
    except CryptokiError as error:
        if refused is None:
            raise
        raise refused(error) from None


@contextlib.contextmanager
def logged_in(
    raw: Cryptoki, slot_id: int, user_type: int, pin: str, *, refused: Refused | None = None
) -> Iterator[int]:
    """A read-write session logged in as `user_type`, always logged out and closed (also on a refused PIN,
    which `refused` turns into what the caller raises)."""
    with opened(raw, slot_id) as handle:
        _login_or_refuse(raw, handle, user_type, pin, refused)
        try:
            yield handle
        finally:
            logout(raw, handle)


def attempt_login(raw: Cryptoki, slot_id: int, user_type: int, pin: str) -> CryptokiError | None:
    """One login on a session of its own, logged out and closed again: None when the PIN was accepted, else the
    token's refusal. Raises only when no session could be opened."""
    with opened(raw, slot_id) as handle:
        try:
            login(raw, handle, user_type, pin)
        except CryptokiError as error:
            return error
        logout(raw, handle)
    return None


def init_token(raw: Cryptoki, slot_id: int, so_pin: str, label: str) -> None:
    _logged("C_InitToken", lambda: raw.init_token(slot_id, so_pin, label))


def init_pin(raw: Cryptoki, handle: int, pin: str) -> None:
    _logged("C_InitPIN", lambda: raw.init_pin(handle, pin))


def set_pin(raw: Cryptoki, handle: int, old: str, new: str) -> None:
    _logged("C_SetPIN", lambda: raw.set_pin(handle, old, new))


# --- python-pkcs11, for objects ---------------------------------------------------------------------------------


@contextlib.contextmanager
def translated() -> Iterator[None]:
    """python-pkcs11's errors as `CryptokiError` with the same CK_RV, so callers have one error path. One that
    names no CK_RV (python-pkcs11's own argument checks, NoSuchKey) passes as it is."""
    try:
        yield
    except PKCS11Error as error:
        rv = ckr.rv_of(error)
        if rv is None:
            raise
        raise CryptokiError(f"python-pkcs11 {type(error).__name__}", rv) from error


def load(path: str) -> Library:
    """python-pkcs11's object for the library at `path`, initialised (it is one object per path and process)."""
    with translated():
        return _logged("C_Initialize", lambda: pkcs11.lib(path))


def finalize(lib: Library) -> None:
    """C_Finalize, whatever it answers (a library already finalised, a daemon gone)."""
    with contextlib.suppress(PKCS11Error):
        _logged("C_Finalize", lib.finalize)


def loaded(path: str) -> Library | None:
    """python-pkcs11's object for `path` when this process has already loaded it, without loading it.

    python-pkcs11 keeps its library objects in the private dict `pkcs11._loaded` and has no public way to ask
    this: `pkcs11.lib(path)` would load and initialise it. The lab needs to know, to finalise a library it holds
    before another process resets the token under it (openCryptoki's daemon does not stop while it is held) or
    before it initialises the simulator on another directory. The one place that reads `_loaded`."""
    found: Library | None = pkcs11._loaded.get(path)
    return found


def finalize_if_loaded(path: str) -> None:
    """Let go of the library at `path` if this process has it initialised."""
    found = loaded(path)
    if found is not None and found.initialized:
        finalize(found)


def slot_ids(lib: Library, *, token_present: bool = False) -> list[int]:
    """The library's slot ids, in its own order."""
    with translated():
        return [int(slot.slot_id) for slot in lib.get_slots(token_present=token_present)]


def slot_of(lib: Library, slot_id: int) -> pkcs11.Slot:
    """python-pkcs11's slot with a token in it; CKR_TOKEN_NOT_PRESENT when there is none (it was pulled out)."""
    with translated():
        for slot in lib.get_slots(token_present=True):
            if int(slot.slot_id) == slot_id:
                return slot
    raise CryptokiError("C_GetSlotList", ckr.CKR_TOKEN_NOT_PRESENT)


@contextlib.contextmanager
def objects_logged_in(
    lib: Library, raw: Cryptoki, slot_id: int, user_type: int, pin: str, *, refused: Refused | None = None
) -> Iterator[pkcs11.Session]:
    """A python-pkcs11 read-write session logged in as `user_type`, always logged out and closed.

    Opened without a PIN and logged in through core.cryptoki (python-pkcs11's own login leaks the session when
    the PIN is refused); closed with C_CloseSession only, as it was opened without a PIN. python-pkcs11's errors
    inside reach the caller translated (`translated`)."""
    with translated():
        session = slot_of(lib, slot_id).get_token().open(rw=True)
    _noted("C_OpenSession")
    try:
        _login_or_refuse(raw, handle_of(session), user_type, pin, refused)
        try:
            with translated():
                yield session
        finally:
            logout(raw, handle_of(session))
    finally:
        with contextlib.suppress(PKCS11Error):
            _logged("C_CloseSession", session.close)


def handle_of(session: pkcs11.Session) -> int:
    """The CK_SESSION_HANDLE under python-pkcs11's session: its Cython class has it, its type stubs do not."""
    return int(session.handle)  # type: ignore[attr-defined]


# --- object templates --------------------------------------------------------------------------------------------


def certificate_template(cert: x509.Certificate, cka_id: bytes, label: str) -> Template:
    """An X.509 certificate object. SoftHSM2 refuses one without CKA_SUBJECT; the rest is what the bank's applet
    looks for."""
    return {
        Attribute.CLASS: ObjectClass.CERTIFICATE,
        Attribute.CERTIFICATE_TYPE: CertificateType.X_509,
        Attribute.TOKEN: True,
        Attribute.PRIVATE: False,
        Attribute.ID: cka_id,
        Attribute.LABEL: label,
        Attribute.SUBJECT: cert.subject.public_bytes(),
        Attribute.ISSUER: cert.issuer.public_bytes(),
        Attribute.SERIAL_NUMBER: Integer(cert.serial_number).dump(),
        Attribute.VALUE: cert.public_bytes(serialization.Encoding.DER),
    }
