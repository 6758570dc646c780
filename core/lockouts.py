"""PINs a token refused as locked while its flags said nothing: remembered for as long as this process runs.

A TPM in dictionary-attack lockout (tpm2-pkcs11) answers C_Login with CKR_PIN_LOCKED, even for the right PIN,
while its token flags stay silent; the next scan would say "PIN ok" again. So the action that met the refusal
records it here, and every snapshot read afterwards (core.snapshot) shows that PIN as locked for now, until a
login of the same role is answered again (accepted, or refused as a wrong PIN: either way the token compared it,
so the lockout is over).

A token is keyed by module, slot, serial and label: tpm2-pkcs11 gives every token the same serial. Nothing
secret is kept, only which role's PIN was refused.
"""

from __future__ import annotations

import threading

TokenKey = tuple[str, int, str, str]

_refused: dict[TokenKey, set[str]] = {}
_lock = threading.Lock()  # the console's scan worker reads while an action screen's worker writes


def token_key(module_path: str, slot_id: int, serial: str, label: str) -> TokenKey:
    return (module_path, int(slot_id), serial, label)


def remember(key: TokenKey, role: str) -> None:
    """A login of `role` ("user" or "admin") was refused as locked while the flags did not say so."""
    with _lock:
        _refused.setdefault(key, set()).add(str(role))


def forget(key: TokenKey, role: str) -> None:
    """The token answered a login of `role` again: whatever lockout there was is over."""
    with _lock:
        roles = _refused.get(key)
        if roles is not None:
            roles.discard(str(role))
            if not roles:
                del _refused[key]


def locked_roles(key: TokenKey) -> frozenset[str]:
    with _lock:
        return frozenset(_refused.get(key, ()))


def clear() -> None:
    """Forget every lockout (a test's fresh start)."""
    with _lock:
        _refused.clear()
