"""What the console's screens need from it, as one typed object: the loaded modules, the settings, the last scan,
a rescan, the lab and the language signal.

The console (tui.app.HelpdeskApp) owns one ConsoleContext and keeps it current; a screen reaches it as
`console_of(self.app)`. A screen run by another App (a test's) gets an empty one: no modules, no lab, no scan,
nothing to rescan, no language switch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from textual.app import App
from textual.signal import Signal

from core.i18n import language as language_now

if TYPE_CHECKING:  # the lab is imported only when the console runs on it
    from core.config import LoadedConfig
    from core.lab import Lab
    from core.modules import Module
    from core.scan import ScanResult


@dataclass(frozen=True, slots=True)
class Settings:
    """The settings a screen acts on."""

    remember_admin_pins: bool  # the admin PIN may be kept in the OS keyring (off by default)
    language: str


def _nothing() -> None:
    return None


@dataclass(eq=False)
class ConsoleContext:
    lab: Lab | None = None
    config: LoadedConfig | None = None  # the settings the console was started with, if it was given them
    result: ScanResult | None = None  # the last scan that went well
    action_modules: list[Module] | None = None  # the libraries the last scan loaded, for actions
    rescan: Callable[[], None] = _nothing  # a full scan now: the dashboard shows what an action left
    # Published with the new language after a switch; screens subscribe (tui.lang.follow_language).
    language_changed: Signal[str] | None = None

    def modules_for_actions(self) -> list[Module] | None:
        """The loaded PKCS#11 modules for an action (run in a thread worker), or None before the first scan."""
        return self.action_modules

    @property
    def settings(self) -> Settings:
        config = self.config or (self.result.config if self.result else None)
        return Settings(
            remember_admin_pins=bool(config and config.config.remember_admin_pins),
            language=language_now(),
        )


class HoldsToken:
    """Marks a screen that holds a token (an action form, the re-enrolment): its keys are its own, and nothing
    of the console's (quit, rescan, the trainer, another action) acts while it is open, typed or from the palette."""


class ConsoleApp(App[int]):
    """An App that gives its screens a ConsoleContext."""

    context: ConsoleContext


def console_of(app: App[Any]) -> ConsoleContext:
    """The console's context, or an empty one for a screen that some other App runs."""
    return app.context if isinstance(app, ConsoleApp) else ConsoleContext()
