"""The console's actions: one table for keys, Footer descriptions, palette names and availability.

Bindings, the command palette and the help screen all read this table, so a key is never shown in one place
and bound differently in another. Texts are message ids (N_), translated when shown.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from weakref import WeakKeyDictionary

from textual.binding import Binding, BindingsMap
from textual.dom import DOMNode

from core.findings import ACTION_NAMES, Action
from core.i18n import N_, _
from tui.compat import bindings_of, set_bindings


@dataclass(frozen=True, slots=True)
class ConsoleAction:
    id: str  # the Textual action name and the Binding id (keymaps refer to it)
    key: str
    footer: str  # short, for the Footer at 80 columns
    name: str  # the full name, for the command palette and the help screen
    help: str
    fix: str = ""  # the words after the key on a finding's line: "→ u  Unblock with the admin PIN"
    token: bool = False  # acts on the selected token (opens one of the action screens)
    # The Footer at 80 columns has room for eight keys in every language; every action stays in the help screen
    # and the palette, and its key works wherever it is allowed, shown or not.
    in_footer: bool = True
    always: bool = False  # allowed on every screen, the action screens included (the language switch)


ACTIONS: tuple[ConsoleAction, ...] = (
    ConsoleAction(
        "personalise",
        "p",
        # TRANSLATORS: a Footer label. The eight labels share 56 columns: keep it short.
        N_("Personalise"),
        ACTION_NAMES[Action.PERSONALISE],
        N_("Set the token name and a new user PIN («Персонализация токена»)."),
        fix=N_("Personalise (name + new PIN)"),
        token=True,
    ),
    ConsoleAction(
        "change_pin",
        "c",
        # TRANSLATORS: a Footer label. The eight labels share 56 columns: keep it short.
        N_("PIN"),
        ACTION_NAMES[Action.CHANGE_PIN],
        N_("Change the user or admin PIN («Изменить…»)."),
        fix=N_("Change the PIN"),
        token=True,
    ),
    ConsoleAction(
        "unblock",
        "u",
        # TRANSLATORS: a Footer label. The eight labels share 56 columns: keep it short.
        N_("Unblock"),
        ACTION_NAMES[Action.UNBLOCK],
        N_("Set a new user PIN with the admin PIN («Разблокировать»)."),
        fix=N_("Unblock with the admin PIN"),
        token=True,
    ),
    ConsoleAction(
        "re_enrol",
        "e",
        # TRANSLATORS: a Footer label. The eight labels share 56 columns: keep it short.
        N_("Re-enrol"),
        ACTION_NAMES[Action.RE_ENROL],
        N_("New key pair and certificate on the token; the old ones go only once the new ones are in place."),
        fix=N_("Re-enrol"),
        token=True,
    ),
    ConsoleAction(
        "format",
        "f",
        # TRANSLATORS: a Footer label. The eight labels share 56 columns: keep it short.
        N_("Format"),
        ACTION_NAMES[Action.FORMAT],
        N_("Initialise the token («Форматировать…»): every key and certificate on it is lost."),
        fix=N_("Format (all keys lost)"),
        token=True,
    ),
    ConsoleAction(
        "rescan",
        "r",
        N_("Scan"),
        N_("Rescan now"),
        N_("Look for tokens again at once."),
        in_footer=False,  # the console rescans every second by itself
    ),
    ConsoleAction(
        "help",
        "question_mark",
        # TRANSLATORS: a Footer label. The eight labels share 56 columns: keep it short.
        N_("Help"),
        N_("Help"),
        N_("What each finding means and what to say."),
    ),
    ConsoleAction(
        "report",
        "x",
        N_("Report"),
        N_("Write a ticket report"),
        N_("Write a Markdown report of the selected token for the helpdesk ticket (never contains a PIN)."),
        in_footer=False,  # room for the language key at 80 columns: in the help screen and the palette
    ),
    ConsoleAction(
        "audit",
        "a",
        N_("Audit"),
        N_("Read the audit log"),
        N_("Every action taken on a token: when, who, which token, the outcome, the findings before and after."),
        in_footer=False,
    ),
    ConsoleAction(
        "language",
        "f2",
        # TRANSLATORS: a Footer label. The eight labels share 56 columns: keep it short.
        N_("Language"),
        N_("Switch the language"),
        N_("Kazakh, Russian and English in turn. Every screen is redrawn in place; nothing typed is lost."),
        always=True,  # a function key: it reaches the console even while a field has the focus
    ),
    ConsoleAction(
        "quit",
        "q",
        # TRANSLATORS: a Footer label. The eight labels share 56 columns: keep it short.
        N_("Quit"),
        N_("Quit"),
        N_("Leave the console."),
    ),
)

BY_ID = {action.id: action for action in ACTIONS}
TOKEN_ACTIONS = frozenset(action.id for action in ACTIONS if action.token)

# Which console action fixes a finding's core action; install-driver is done outside the console.
FIX_ACTION: dict[Action, str] = {
    Action.PERSONALISE: "personalise",
    Action.CHANGE_PIN: "change_pin",
    Action.UNBLOCK: "unblock",
    Action.RE_ENROL: "re_enrol",
    Action.FORMAT: "format",
}


def key_label(action: ConsoleAction) -> str:
    return "?" if action.key == "question_mark" else action.key


def fix_text(action: Action | None) -> tuple[str, str] | None:
    """(key, words) of the one-line fix for a finding's action, or None when the console has no key for it."""
    if action is None:
        return None
    if action is Action.INSTALL_DRIVER:
        return "", _("Install the KAZTOKEN driver (token unplugged), then r to rescan")
    console = BY_ID[FIX_ACTION[action]]
    return key_label(console), _(console.fix or console.name)


def console_bindings(*, tokens: bool) -> list[Binding]:
    """The console's keys, for one of its screens to bind; the app runs them (`app.` actions). The token actions
    only on a screen that shows tokens (the dashboard, a token's details), so no other screen has to block them;
    a screen that holds a token binds none of these. The language key is among them, in its place for the
    Footer's order (the app binds it as well, for the screens that bind none of these)."""
    bindings = [
        Binding(action.key, f"app.{action.id}", action.footer, id=action.id, show=action.in_footer)
        for action in ACTIONS
        if tokens or not action.token
    ]
    # Lab mode only (the app's check_action); said in the header's LAB mark, the Footer has no room left at 80.
    return [*bindings, Binding("t", "app.trainer", N_("Trainer"), id="trainer", show=False)]


def modal_bindings() -> list[Binding]:
    """The keys that work on every screen, for a modal one to bind: a modal screen cuts the app's keys off."""
    return [
        Binding(action.key, f"app.{action.id}", action.footer, id=action.id, show=action.in_footer)
        for action in ACTIONS
        if action.always
    ]


def translate_bindings(node: DOMNode) -> None:
    """Translate a node's binding descriptions now, at construction, not at import.

    BINDINGS are evaluated when the class is defined, before the language is known, so they hold message ids;
    each instance replaces its own copy with translated descriptions (the class-level map is left alone) and
    keeps the map of ids, so that `retranslate_bindings` can translate them again after a language switch.
    """
    _BINDING_IDS[node] = bindings_of(node)
    retranslate_bindings(node)


def retranslate_bindings(node: DOMNode) -> None:
    """The node's binding descriptions in the language now set (nothing for a node `translate_bindings` never saw).

    Call the node's (or the app's) `refresh_bindings()` afterwards for the Footer to show them."""
    ids = _BINDING_IDS.get(node)
    if ids is None:
        return
    set_bindings(
        node,
        BindingsMap(
            replace(binding, description=_(binding.description) if binding.description else "") for _key, binding in ids
        ),
    )


# A node's bindings as declared (message ids); weak, so a node that is gone takes its entry with it.
_BINDING_IDS: WeakKeyDictionary[DOMNode, BindingsMap] = WeakKeyDictionary()
