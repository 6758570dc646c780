"""The audit trail's codes in the reader's language: the console's audit screen and the CLI's `audit` table read
them here, so both say the same words. Every value from the file is hostile: what this module does not know is
shown through visible(), as the file has it."""

from __future__ import annotations

from core.findings import ACTION_NAMES, Action
from core.i18n import N_, _
from core.report import PIN_STATUS_TEXT
from core.snapshot import PinStatus
from core.untrusted import visible

OUTCOME_WORDS = {
    "done": N_("done"),
    "wrong-pin": N_("wrong PIN"),
    "pin-locked": N_("PIN locked"),
    "policy": N_("against the rules: nothing tried"),
    "refused": N_("refused: nothing tried"),
    "busy": N_("another operator held the token"),
    "not-found": N_("token not found"),
    "token-gone": N_("token pulled out"),
    "failed": N_("failed"),
}
# A table's column at 80 columns: a word or two; the line under it says the whole (OUTCOME_WORDS).
OUTCOME_SHORT = {
    "policy": N_("against the rules"),
    "refused": N_("refused"),
    "busy": N_("token busy"),
}
NO_OUTCOME = N_("no outcome recorded")
NO_OUTCOME_DETAIL = N_("no outcome recorded: the action may or may not have changed the token")


def outcome_words(outcome: str | None, *, detail: bool = False, short: bool = False) -> str:
    if outcome is None:  # the attempt was recorded, its end never was
        return _(NO_OUTCOME_DETAIL if detail else NO_OUTCOME)
    words = (short and OUTCOME_SHORT.get(outcome)) or OUTCOME_WORDS.get(outcome)
    return _(words) if words else visible(outcome)


def action_words(action: str) -> str:
    try:
        return _(ACTION_NAMES[Action(action)])
    except (ValueError, KeyError):
        return visible(action)


def pin_name(role: str | None) -> str:
    return {"user": _("User PIN"), "admin": _("Admin PIN")}.get(role or "", _("PIN"))


def pin_words(state: str | None, tries: int | None) -> str:
    if state is None:
        return "—"
    try:
        words = _(PIN_STATUS_TEXT[PinStatus(state)])
    except ValueError:  # a state this version does not know: the log's word as it stands
        words = visible(state)
    return words if tries is None else _("{state}, {tries} tries left").format(state=words, tries=tries)
