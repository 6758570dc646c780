"""Every test is in a group by what it needs (tests/conftest.py gives the markers; pyproject.toml declares them),
so a developer can run what their machine allows: `-m pure`, `-m "not root"`, ..."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests import ock
from tests.conftest import COLLECTED, GROUPS, NEEDS_ROOT, needs_of
from tests.tokens import SOFTHSM_MODULE, SoftHSM
from tests.tui_helpers import run

KNOWN = {*GROUPS, NEEDS_ROOT}


def test_every_collected_test_is_in_a_group(pytestconfig: pytest.Config) -> None:
    """Over every test this run collected (the whole suite with `pytest -m pure`, say, since -m and -k select
    after): at least one group each, and `pure` only alone, since it promises that nothing else is needed."""
    collected = pytestconfig.stash[COLLECTED]
    assert any(nodeid.endswith("::test_every_collected_test_is_in_a_group") for nodeid in collected)
    ungrouped = [nodeid for nodeid, marks in collected.items() if not marks & KNOWN]
    impure = [f"{nodeid}: {sorted(marks & KNOWN)}" for nodeid, marks in collected.items() if {"pure"} < marks & KNOWN]
    assert not ungrouped and not impure, (ungrouped, impure)


def test_the_groups_are_the_declared_markers(pytestconfig: pytest.Config) -> None:
    declared = {line.split(":")[0].strip() for line in pytestconfig.getini("markers")}
    assert declared >= KNOWN, KNOWN - declared
    assert "--strict-markers" in pytestconfig.getini("addopts")  # a misspelt marker is an error, not a new group


# What the grouping reads, on small functions that are never called: names loaded, attributes, imports inside
# a function, and the suite's own helpers followed.


def _a_softhsm_token(tmp_path: Path) -> object:
    return SoftHSM(tmp_path)


def _the_library_by_path() -> object:
    return ["scan", "--module", SOFTHSM_MODULE]


def _pilot(app: Any) -> object:
    return app.run_test()


def _pilot_in_a_coroutine(app: Any) -> object:
    async def steps() -> None:
        async with app.run_test():
            pass

    return run(steps())


def _opencryptoki() -> object:
    return ock.listed()


def _opencryptoki_through_a_helper() -> object:
    return _opencryptoki()


def _opencryptoki_imported_inside() -> object:
    from tests import ock

    return ock.unavailable_reason()


def _a_private_pcscd() -> object:
    from tests.pcsc import private_pcscd

    return private_pcscd


def _nothing_but_python() -> object:
    return sorted({"run_test_b", "SoftHSM"})


@pytest.mark.parametrize(
    ("name", "needs"),  # by name: the test itself reaches none of them
    [
        ("_a_softhsm_token", {"softhsm"}),
        ("_the_library_by_path", {"softhsm"}),
        ("_pilot", {"console"}),
        ("_pilot_in_a_coroutine", {"console"}),
        ("_opencryptoki", {"opencryptoki", "root"}),
        ("_opencryptoki_through_a_helper", {"opencryptoki", "root"}),
        ("_opencryptoki_imported_inside", {"opencryptoki", "root"}),
        ("_a_private_pcscd", {"stacks", "root"}),
        ("_nothing_but_python", set()),
    ],
)
def test_needs_are_read_from_what_a_test_reaches(name: str, needs: set[str]) -> None:
    assert needs_of([globals()[name]]) == needs


def test_a_known_test_of_each_group(pytestconfig: pytest.Config) -> None:
    """The markers real tests get, among those this run collected."""
    expected = {
        "tests/test_policy.py::test_": {"pure"},
        "tests/test_scan_softhsm.py::test_": {"softhsm"},
        "tests/test_scan_opencryptoki.py::test_": {"opencryptoki", "root"},
        "tests/test_tui.py::test_snapshot_": {"console"},
        "tests/test_tui.py::test_snapshot_no_token": {"console", "softhsm"},
        "tests/test_pcsc.py::test_card_inserted_is_listed_and_removed_is_gone": {"stacks", "root"},
        "tests/test_e2e_tmux.py::test_": {"e2e"},
        "tests/test_tpm2.py::test_": {"stacks"},
    }
    for nodeid, marks in pytestconfig.stash[COLLECTED].items():
        for prefix, needs in expected.items():
            if nodeid.startswith(prefix):
                assert marks >= needs, (nodeid, sorted(marks & KNOWN))
