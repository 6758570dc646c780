"""The seed's PIN and token-name rules, every rule and every kind of bad input."""

from __future__ import annotations

import pytest

from core.policy import label_checks, pin_checks, problems


def failed(pin: str, repeat: str | None = None, **kwargs: int) -> list[str]:
    return [check.rule for check in problems(pin_checks(pin, repeat, **kwargs))]


@pytest.mark.parametrize("pin", ["Kazakh2024", "qWeRtY_97", "Almaty-Zz", "ZxQwPo13"])
def test_good_pins(pin: str) -> None:
    assert failed(pin, pin) == []


@pytest.mark.parametrize(
    ("pin", "rules"),
    [
        ("", ["length", "upper", "lower"]),
        ("Ab1", ["length"]),
        ("alllower9", ["upper"]),
        ("ALLUPPER9", ["lower"]),
        ("Passw123x", ["no-run"]),  # 123
        ("Qz678Qzqz", ["no-run"]),  # 678
        ("Xyabcxyz", ["no-run"]),  # abc (and xyz)
        ("Пароль2024", ["ascii", "upper", "lower"]),  # Cyrillic is not Latin
        ("Kazakh\t2024", ["ascii"]),
    ],
)
def test_each_rule(pin: str, rules: list[str]) -> None:
    assert failed(pin) == rules


def test_typed_twice() -> None:
    assert failed("Kazakh2024", "Kazakh2025") == ["match"]
    assert failed("", "") == ["length", "upper", "lower", "match"]


def test_four_kib_of_input_is_refused_quickly_by_the_token_limit() -> None:
    huge = "Qz" * 2048
    assert failed(huge, huge, max_length=255) == ["max-length"]


def test_messages_never_hold_the_pin() -> None:
    for check in pin_checks("Secret2024", "Other2024"):
        assert "Secret2024" not in check.text and "Other2024" not in check.text


@pytest.mark.parametrize(
    ("label", "rules"),
    [
        ("IVANOV", []),
        ("ivanov_a-1", []),
        ("", ["not-empty"]),
        ("Иванов", ["characters"]),
        ("with space", ["characters"]),
        ("x" * 33, ["length"]),
    ],
)
def test_token_names(label: str, rules: list[str]) -> None:
    assert [check.rule for check in problems(label_checks(label))] == rules
