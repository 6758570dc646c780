"""tui.compat: each shim over Textual's or argparse's private parts still does what the console relies on, so an
upgrade that moves one fails here, by name, rather than somewhere in a screen."""

from __future__ import annotations

import argparse
from typing import Any, ClassVar

import pytest
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingsMap, BindingType
from textual.widgets import Static

from core.i18n import set_language
from tests.tui_helpers import run
from tui import compat


class _Keys(Static):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("x", "thing", "Thing")]


class _KeysApp(App[int]):
    def compose(self) -> ComposeResult:
        yield _Keys(id="keys")


def test_bindings_are_read_and_replaced_per_instance() -> None:
    async def scenario() -> None:
        app = _KeysApp()
        async with app.run_test() as pilot:
            widget = app.query_one(_Keys)
            other = _Keys()
            assert [binding.description for _key, binding in compat.bindings_of(widget)] == ["Thing"]
            compat.set_bindings(widget, BindingsMap([Binding("x", "thing", "Chose")]))
            await pilot.pause()
            assert [binding.description for _key, binding in compat.bindings_of(widget)] == ["Chose"]
            # Only this instance: the class's map and every other instance keep theirs.
            assert [binding.description for _key, binding in compat.bindings_of(other)] == ["Thing"]

    run(scenario())


@pytest.fixture
def argparse_words() -> Any:
    original = argparse._  # type: ignore[attr-defined]
    yield
    argparse._ = original  # type: ignore[attr-defined]
    set_language("en")


def test_argparse_speaks_through_the_function_given(argparse_words: None) -> None:
    compat.argparse_words_through(lambda text: "USAGE: " if text == "usage: " else text)
    assert argparse.ArgumentParser(prog="x").format_usage().startswith("USAGE: x")


def test_parser_options_lists_every_option_string() -> None:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--serial", "-s")
    parent.add_argument("--pin-stdin", action="store_true")
    other = argparse.ArgumentParser(add_help=False)
    other.add_argument("--keyring", action="store_true")
    assert compat.parser_options([parent, other]) == {"--serial", "-s", "--pin-stdin", "--keyring"}


def test_subparsers_type_is_what_add_subparsers_gives() -> None:
    assert isinstance(argparse.ArgumentParser().add_subparsers(), compat.SubParsers)


def test_a_removed_widget_is_closing() -> None:
    async def scenario() -> None:
        app = _KeysApp()
        async with app.run_test() as pilot:
            widget = app.query_one(_Keys)
            assert not compat.is_closing(widget)
            await widget.remove()
            await pilot.pause()
            assert compat.is_closing(widget)

    run(scenario())


class _Crashing(App[int]):
    def _fatal_error(self) -> None:
        compat.leave_with_one_line(self, lambda error: f"one line: {type(error).__name__}")

    def on_mount(self) -> None:
        secret = "do-not-show"  # a local, as a typed PIN would be
        raise RuntimeError("kaput" if secret else "")


def test_a_crash_is_one_line_and_the_app_knows_it_failed(capfd: pytest.CaptureFixture[str]) -> None:
    app = _Crashing()

    async def scenario() -> None:
        async with app.run_test() as pilot:
            await pilot.pause()

    with pytest.raises(RuntimeError):
        run(scenario())
    assert isinstance(compat.failed(app), RuntimeError)
    err = capfd.readouterr().err
    assert "one line: RuntimeError" in err
    assert "Traceback" not in err and "do-not-show" not in err


def test_an_app_that_ended_well_did_not_fail() -> None:
    app = _KeysApp()

    async def scenario() -> None:
        async with app.run_test() as pilot:
            await pilot.pause()

    run(scenario())
    assert compat.failed(app) is None
