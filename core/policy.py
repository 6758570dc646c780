"""The bank's rules for a new PIN and for a token name («Персонализация токена»), checked as the user types.

Each rule is checked separately so a screen can tick them one by one; `problems()` gives the failed ones.
Messages never contain the PIN itself.
"""

from __future__ import annotations

import itertools
import string
from dataclasses import dataclass

from core.i18n import N_, _

MIN_PIN_LENGTH = 8
RUN_LENGTH = 3  # "123", "678", "abc": three characters in a row, each one after the previous
LABEL_BYTES = 32  # CK_TOKEN_INFO.label
LABEL_CHARACTERS = frozenset(string.ascii_letters + string.digits + "-_")


@dataclass(frozen=True, slots=True)
class Check:
    rule: str
    ok: bool
    message: str  # a message id; `text` translates it

    @property
    def text(self) -> str:
        return _(self.message)


def _has_run(text: str) -> bool:
    lowered = text.lower()
    for start in range(len(lowered) - RUN_LENGTH + 1):
        window = lowered[start : start + RUN_LENGTH]
        if all(ch.isascii() and ch.isalnum() for ch in window) and all(
            ord(b) - ord(a) == 1 for a, b in itertools.pairwise(window)
        ):
            return True
    return False


def pin_checks(pin: str, repeat: str | None = None, *, max_length: int | None = None) -> list[Check]:
    """Every rule for a new user or admin PIN, passed or not. `repeat` adds the "typed twice" rule."""
    ascii_only = all(ch.isascii() and ch.isprintable() for ch in pin)
    checks = [
        Check("length", len(pin) >= MIN_PIN_LENGTH, N_("at least 8 characters")),
        Check("ascii", ascii_only, N_("Latin letters, digits and signs only")),
        Check("upper", any(ch in string.ascii_uppercase for ch in pin), N_("an upper-case Latin letter")),
        Check("lower", any(ch in string.ascii_lowercase for ch in pin), N_("a lower-case Latin letter")),
        Check("no-run", not _has_run(pin), N_("no runs like 123 or abc")),
    ]
    if max_length is not None:
        checks.append(Check("max-length", len(pin.encode()) <= max_length, N_("no longer than the token allows")))
    if repeat is not None:
        checks.append(Check("match", bool(pin) and pin == repeat, N_("both entries match")))
    return checks


def label_checks(label: str) -> list[Check]:
    return [
        Check("not-empty", bool(label), N_("a token name is needed")),
        Check("characters", all(ch in LABEL_CHARACTERS for ch in label), N_("Latin letters, digits, - and _ only")),
        Check("length", len(label.encode()) <= LABEL_BYTES, N_("at most 32 characters")),
    ]


def problems(checks: list[Check]) -> list[Check]:
    return [check for check in checks if not check.ok]
