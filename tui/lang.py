"""The console's live language switch: widgets keep how their text is made, and make it again when asked.

A screen built anew would come up in the new language, but it would lose what the operator typed, the selection
and the scroll. So the texts are redrawn in place instead: each widget showing a fixed text gets it through `tr`,
with the message id (and its placeholders) or a function that renders its content, and `retranslate_tree` renders
every such widget under a node again, after re-translating the nodes' key binding descriptions. A screen adds what
only it knows (titles, lines built from a scan or an action's result) in its own `retranslate()`.

The switch itself is the console's `language_changed` signal (tui.context): each screen subscribes when it is
mounted (`follow_language`) and redraws itself; the app only publishes it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar, runtime_checkable
from weakref import WeakKeyDictionary

from textual.dom import DOMNode
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Button, Checkbox, Input, RadioButton, Static

from core.i18n import _
from tui.actions import retranslate_bindings
from tui.context import console_of

W = TypeVar("W", bound=Widget)
Source = Callable[[], Any]  # makes the text (a str or Textual Content) in the language of the moment

# Widget → {attribute: source}. Weak: a widget that is gone takes its sources with it.
_SOURCES: WeakKeyDictionary[Widget, dict[str, Source]] = WeakKeyDictionary()


@runtime_checkable
class Retranslatable(Protocol):
    def retranslate(self) -> None:
        """Redraw what the screen shows in the language now set; nothing typed or selected may change."""


def text(message: str, /, **params: Any) -> Source:
    """A message id and its placeholders, translated each time it is shown."""
    return lambda: _(message).format(**params) if params else _(message)


def tr(widget: W, source: str | Source, /, *, attribute: str = "content", **params: Any) -> W:
    """Show `source` (a message id, with `params` for its placeholders, or a function making the content) in
    `widget` now and again after each language switch. `attribute` is "content" (a Static's text, a button's
    label, an input's placeholder) or a widget attribute such as "border_title"."""
    make = source if callable(source) else text(source, **params)
    _SOURCES.setdefault(widget, {})[attribute] = make
    _apply(widget, attribute, make())
    return widget


def refresh(widget: Widget) -> None:
    """Make a widget's texts again (its source depends on state that has changed, not only on the language)."""
    for attribute, make in _SOURCES.get(widget, {}).items():
        _apply(widget, attribute, make())


def _apply(widget: Widget, attribute: str, content: Any) -> None:
    if attribute != "content":
        setattr(widget, attribute, content)
    elif isinstance(widget, Button | Checkbox | RadioButton):
        widget.label = content
    elif isinstance(widget, Input):
        widget.placeholder = content
    elif isinstance(widget, Static):
        widget.update(content)
    else:
        raise TypeError(f"no text to translate in a {type(widget).__name__}")


def retranslate_tree(root: DOMNode) -> None:
    """Every binding description and every `tr` text under `root` (itself included), in the language now set."""
    for node in root.walk_children(with_self=True):
        retranslate_bindings(node)
        if isinstance(node, Widget):
            refresh(node)


def follow_language(screen: Screen[Any]) -> None:
    """Redraw `screen` in place after each language switch of the console (call it from the screen's on_mount):
    its key descriptions and `tr` texts, then what only it knows (`retranslate()`), then its Footer."""
    signal = console_of(screen.app).language_changed
    if signal is not None:  # a screen some other App runs: no switch
        signal.subscribe(screen, lambda _language: _redraw(screen), immediate=True)


def _redraw(screen: Screen[Any]) -> None:
    retranslate_tree(screen)
    if isinstance(screen, Retranslatable):
        screen.retranslate()
    screen.refresh_bindings()
