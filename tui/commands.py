"""The command palette: every console action by name (Ctrl+P), for those who do not remember the keys.

It also finds an action by the customer's words: the applet's Russian names («Разблокировать»), the error codes
and findings an action fixes («0200040», user-pin-locked), in the language shown and in English. The help screen
explains every finding, so it is found by any of them («профиль»).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider

from core.findings import CATALOGUE
from core.i18n import N_, _
from tui.actions import ACTIONS, FIX_ACTION, key_label

KEYWORD_SCORE = 0.3  # below a match on the name: found by its words, listed after the actions named so


@dataclass(frozen=True, slots=True)
class Entry:
    name: str
    action_id: str
    help: str
    words: str  # searched for the query as typed (no fuzzy match: any long text would match anything so)


def _finding_words(action_id: str | None) -> list[str]:
    """The codes, titles and explanations of the findings this action fixes (every finding for the help)."""
    words = []
    for code, kind in CATALOGUE.items():
        if action_id == "help" or (kind.action in FIX_ACTION and FIX_ACTION[kind.action] == action_id):
            words += [code, kind.title, _(kind.title), kind.explanation, _(kind.explanation)]
    return words


class ActionsProvider(Provider):
    def _offered(self) -> set[str]:
        """What the keys of the screen under the palette do now: the palette offers the same, no more (a screen
        that holds a token offers only the language, the audit log no token action)."""
        active = self.screen.active_bindings.values()
        return {binding.binding.action.removeprefix("app.") for binding in active if binding.enabled}

    def _entries(self) -> list[Entry]:
        """Every action the screen under the palette has a key for, with the words they are found by: the
        details and (in the lab) the trainer's menu among them."""
        offered = self._offered()
        entries = []
        for action in (action for action in ACTIONS if action.id in offered):
            words = [action.name, action.help, action.footer, _(action.footer), *_finding_words(action.id)]
            entries.append(
                Entry(f"{_(action.name)} ({key_label(action)})", action.id, _(action.help), "\n".join(words))
            )
        details = N_("Details of the selected token")
        if "details" in offered:
            entries.append(Entry(_(details) + " (⏎)", "details", _(N_("Every field, certificate and key.")), details))
        if "trainer" in offered:
            trainer = N_("Trainer's menu: reset, unplug and replug the lab's tokens")
            entries.append(Entry(_(trainer) + " (t)", "trainer", "", f"{trainer}\ntrainer\ntraining lab"))
        return entries

    async def discover(self) -> Hits:
        for entry in self._entries():
            yield DiscoveryHit(entry.name, partial(self.app.run_action, entry.action_id), help=entry.help)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        needle = query.strip().casefold()
        for entry in self._entries():
            score = matcher.match(entry.name)
            if score <= 0 and needle and needle in entry.words.casefold():
                score = KEYWORD_SCORE
            if score > 0:
                run = partial(self.app.run_action, entry.action_id)
                yield Hit(score, matcher.highlight(entry.name), run, help=entry.help)
