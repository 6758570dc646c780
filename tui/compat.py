"""Where the console reaches into Textual's and argparse's private parts: each shim says what and why.

Nothing else in tui/ touches a private attribute of either; a Textual or Python upgrade that moves one breaks
here (and in tests/test_compat.py), not somewhere in a screen. textual is pinned to one major version in
pyproject.toml for the same reason.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:  # tui.cli imports this module for argparse: `scan` must not import Textual (tests/test_imports.py)
    from textual.app import App
    from textual.binding import BindingsMap
    from textual.dom import DOMNode
    from textual.widget import Widget

# argparse's subparsers object: the class is private, its type is needed to annotate who adds a subcommand.
if TYPE_CHECKING:  # generic for the type checker only: at run time the class takes no parameters
    SubParsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]
else:
    SubParsers = argparse._SubParsersAction


def bindings_of(node: DOMNode) -> BindingsMap:
    """A node's own key bindings. Textual builds them from BINDINGS when the class is defined, before the
    language is known, and has no public way to read or replace them per instance: the console translates their
    descriptions at construction and again after a language switch (tui.actions.translate_bindings)."""
    return node._bindings


def set_bindings(node: DOMNode, bindings: BindingsMap) -> None:
    """Replace a node's own key bindings (see `bindings_of`); the caller then refreshes the Footer."""
    node._bindings = bindings


def argparse_words_through(translate: Callable[[str], str]) -> None:
    """argparse's own words (usage, section titles, its errors) come from the module-level `_` it imported from
    gettext; there is no hook, so ours is put in its place and answers in the language chosen."""
    argparse._ = translate  # type: ignore[attr-defined]


def parser_options(parents: Iterable[argparse.ArgumentParser]) -> set[str]:
    """Every option string the parsers define. argparse lists them only in the private `_actions`: a subcommand
    shared with another front end (re-enrol) asks so as not to define an option twice."""
    return {option for parent in parents for action in parent._actions for option in action.option_strings}


def is_closing(widget: Widget) -> bool:
    """The widget is being removed (its `remove()` ran, the DOM still holds it): Textual keeps that private, and
    the dashboard must not move the focus onto a panel that is going."""
    return bool(widget._closing)


def failed(app: App[Any]) -> BaseException | None:
    """The unexpected error that ended the app, if one did. Textual keeps it private; the command's exit status
    (3, the tool failed) depends on it."""
    return app._exception


def leave_with_one_line(app: App[Any], line: Callable[[BaseException | None], str]) -> None:
    """What the console's `App._fatal_error` does instead of Textual's report: one line on leaving, never a
    traceback, whose locals may hold typed PINs. Textual has no public hook for its crash report, so the private
    method is overridden (tui.app) and this puts the line where Textual's own report would go (`_exit_renderables`,
    printed once the terminal is given back), then closes as Textual does."""
    from rich.text import Text as RichText

    error = sys.exc_info()[1] or app._exception
    app.bell()
    app._exit_renderables.append(RichText(line(error)))
    app._close_messages_no_wait()
