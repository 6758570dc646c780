"""The bank's rules for a new PIN and for a token name («Персонализация токена»), checked as the user types.

Each rule is checked separately so a screen can tick them one by one; `problems()` gives the failed ones.
Messages never contain the PIN itself.

A PIN typed to be presented to the token (the current user or admin PIN) is judged too, before anything is sent:
`current_pin_fits` says only yes or no, and the refusal names neither the rule nor anything about the PIN (no
length, no character, no position), only what a PIN for this token looks like.
"""

from __future__ import annotations

import itertools
import string
from dataclasses import dataclass

from core.i18n import N_, Text, _

# The factory defaults from the bank's guide (DOMAIN.md): a formatted token is given the user one, so the
# customer's applet works as from new; a token still on either is a risk.
FACTORY_USER_PIN = "12345678"
FACTORY_ADMIN_PIN = "87654321"
MIN_PIN_LENGTH = 8
RUN_LENGTH = 3  # "123", "678", "abc": three characters in a row, each one after the previous
LABEL_BYTES = 32  # CK_TOKEN_INFO.label
LABEL_CHARACTERS = frozenset(string.ascii_letters + string.digits + "-_")
# What a token's PIN can hold: printable ASCII, space to "~". Every PIN this console sets is so (the new-PIN rules
# ask for Latin letters, digits and signs), and so are the guide's factory PINs. Anything else either never
# reaches a token as the same bytes twice (a Cyrillic letter is whatever the typing terminal's encoding made of
# it) or cannot be typed in the customer's applet (control characters): sent, it could only spend a try.
PIN_CHARACTERS = frozenset(chr(code) for code in range(0x20, 0x7F))
# CK_TOKEN_INFO's ulMin/MaxPinLen are CK_ULONGs a token may fill with anything (CK_UNAVAILABLE_INFORMATION, 0,
# nonsense): bounds outside this range, or a maximum under the minimum, are not believed, and the token judges.
PLAUSIBLE_PIN_LENGTH = range(1, 4096)


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
    ascii_only = all(ch in PIN_CHARACTERS for ch in pin)
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


def pin_length_bounds(min_length: int | None, max_length: int | None) -> tuple[int | None, int | None]:
    """The token's PIN length bounds (CK_TOKEN_INFO), as far as they can be believed: (min, max), None unknown."""
    low = min_length if min_length in PLAUSIBLE_PIN_LENGTH else None
    high = max_length if max_length in PLAUSIBLE_PIN_LENGTH else None
    if low is not None and high is not None and high < low:
        return None, None  # contradictory: trust neither
    return low, high


def current_pin_fits(pin: str, *, min_length: int | None = None, max_length: int | None = None) -> bool:
    """Whether `pin` can be the token's PIN at all: printable ASCII, within the token's length bounds.

    One answer for every reason, so that nothing said about a refusal tells anything about what was typed."""
    if not pin or not all(ch in PIN_CHARACTERS for ch in pin):
        return False
    low, high = pin_length_bounds(min_length, max_length)
    size = len(pin)  # printable ASCII: one byte per character
    return (low is None or size >= low) and (high is None or size <= high)


def current_pin_refusal(pin_name: Text, *, min_length: int | None = None, max_length: int | None = None) -> Text:
    """Why a PIN that does not fit (`current_pin_fits`) was not sent: what this token's PINs look like, and that no
    try was spent. `pin_name`: whose PIN ("admin PIN")."""
    low, high = pin_length_bounds(min_length, max_length)
    if low is not None and high is not None:
        return Text(
            N_(
                "This cannot be the {pin}: a PIN for this token is {min} to {max} Latin letters, digits or signs. "
                "Nothing was sent to the token; no try was spent."
            ),
            {"pin": pin_name, "min": low, "max": high},
        )
    return Text(
        N_(
            "This cannot be the {pin}: a PIN is made of Latin letters, digits and signs. Nothing was sent to the "
            "token; no try was spent."
        ),
        {"pin": pin_name},
    )


# --- The validators: one answer for core, the screens and the CLI ----------------------------------------------
# Each returns None when the value may go on, else what to fix: the field, the words and the rules broken. core's
# actions raise it as a POLICY stop (frame.refuse), a screen shows it on its field before anything is sent.


@dataclass(frozen=True, slots=True)
class Invalid:
    field: str
    text: Text
    checks: tuple[Check, ...] = ()

    def message(self) -> str:
        """The sentence, then the rules it breaks read as not met (never anything of the value itself)."""
        text = str(self.text)
        if not self.checks:
            return text
        return text + " " + _("Not met: {rules}.").format(rules="; ".join(check.text for check in self.checks))


def invalid_new_pin(
    pin: str, again: str, *, pin_name: Text, field: str, again_field: str, max_length: int | None = None
) -> Invalid | None:
    """A new PIN typed twice against the bank's rules. Only the repeat differs: the repeat's field is to fix."""
    failed = problems(pin_checks(pin, again, max_length=max_length))
    if not failed:
        return None
    field_id = again_field if pin and all(check.rule == "match" for check in failed) else field
    return Invalid(field_id, Text(N_("The new {pin} does not meet the rules."), {"pin": pin_name}), tuple(failed))


def invalid_label(label: str, *, field: str = "label") -> Invalid | None:
    failed = problems(label_checks(label))
    return Invalid(field, Text(N_("The token name does not meet the rules.")), tuple(failed)) if failed else None


def invalid_current_pin(
    pin: str, *, pin_name: Text, field: str, min_length: int | None = None, max_length: int | None = None
) -> Invalid | None:
    """A PIN to present to the token that cannot be its own (`current_pin_fits`): never sent, it spends no try."""
    bounds = {"min_length": min_length, "max_length": max_length}
    return None if current_pin_fits(pin, **bounds) else Invalid(field, current_pin_refusal(pin_name, **bounds))


TYPE_ADMIN_PIN = N_("Type the admin PIN.")


def missing(value: str, *, field: str, text: Text) -> Invalid | None:
    """Nothing typed where something must be ("Type the admin PIN.")."""
    return None if value else Invalid(field, text)


def invalid_same_pin(current: str, new: str, *, field: str = "new_pin") -> Invalid | None:
    """A PIN change to the same PIN changes nothing but spends the customer's patience: said before the token."""
    return Invalid(field, Text(N_("The new PIN is the same as the current one."))) if new and new == current else None
