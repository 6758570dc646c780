"""The command palette: every console action by name (Ctrl+P), for those who do not remember the keys."""

from __future__ import annotations

from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider

from core.i18n import N_, _
from tui.actions import ACTIONS, key_label


class ActionsProvider(Provider):
    def _entries(self) -> list[tuple[str, str, str]]:
        """(name shown, action id, help) for every action."""
        entries = []
        for action in ACTIONS:
            entries.append((f"{_(action.name)} ({key_label(action)})", action.id, _(action.help)))
        entries.append(
            (_(N_("Details of the selected token")) + " (⏎)", "details", _(N_("Every field, certificate and key.")))
        )
        return entries

    async def discover(self) -> Hits:
        for name, action_id, help_text in self._entries():
            yield DiscoveryHit(name, partial(self.app.run_action, action_id), help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for name, action_id, help_text in self._entries():
            score = matcher.match(name)
            if score > 0:
                yield Hit(score, matcher.highlight(name), partial(self.app.run_action, action_id), help=help_text)
