"""Admin PINs remembered in the OS keyring, by token serial, so branch staff need not retype the branch's one.

Off unless the settings say `remember_admin_pins = true`. Only the OS keyring is used: when there is none
(a headless SSH box), the PIN is not remembered and the caller says so. Never a plain-file fallback.
"""

from __future__ import annotations

import contextlib

import keyring
import keyring.errors
from keyring.backends import fail

from core.i18n import _

SERVICE = "kaztoken-helpdesk admin PIN"


class KeyringUnavailable(Exception):
    """No usable keyring backend; the message says so in the user's language (and never holds the PIN)."""


def _backend() -> keyring.backend.KeyringBackend:
    backend = keyring.get_keyring()
    # keyring picks its "fail" backend (or a chainer with nothing behind it) when no OS keyring is reachable.
    if isinstance(backend, fail.Keyring) or getattr(backend, "priority", 1) <= 0:
        raise KeyringUnavailable(
            _(
                "No keyring is available on this machine (over SSH there is usually none): the admin PIN is not "
                "remembered. It is never written to a file."
            )
        )
    return backend


def available() -> bool:
    try:
        _backend()
    except KeyringUnavailable:
        return False
    return True


def recall(serial: str) -> str | None:
    """The remembered admin PIN of this token, or None (also when there is no keyring)."""
    try:
        return _backend().get_password(SERVICE, serial)
    except (KeyringUnavailable, keyring.errors.KeyringError):
        return None


def remember(serial: str, pin: str) -> None:
    try:
        _backend().set_password(SERVICE, serial, pin)
    except keyring.errors.KeyringError as error:
        # The backend's own message can quote what it was given: never pass it on.
        raise KeyringUnavailable(
            _("The keyring refused to store the admin PIN ({kind}).").format(kind=type(error).__name__)
        ) from None


def forget(serial: str) -> None:
    with contextlib.suppress(KeyringUnavailable, keyring.errors.KeyringError):
        _backend().delete_password(SERVICE, serial)
