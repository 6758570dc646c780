"""The one translation function every user-visible string goes through.

Texts are looked up when they are shown, not when they are defined, so the language can change while the
console runs: catalogues of findings hold message ids and call `_` on access.
"""

from __future__ import annotations

import gettext
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DOMAIN = "kaztoken-helpdesk"
LOCALE_DIR = Path(__file__).with_name("locale")
LANGUAGES = ("kk", "ru", "en")  # the order the console's language key cycles through
LANGUAGE_NAMES = {"kk": "Қазақша", "ru": "Русский", "en": "English"}

_translation: gettext.NullTranslations = gettext.NullTranslations()
_language = "en"


def set_language(language: str) -> None:
    """Switch the language of every text shown from now on; an unknown language falls back to English."""
    global _translation, _language
    _translation = gettext.translation(DOMAIN, LOCALE_DIR, languages=[language], fallback=True)
    _language = language


def language() -> str:
    return _language


def detect_language(configured: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The settings file's language, else the OS locale's (LANGUAGE, LC_ALL, LC_MESSAGES, LANG), else English.

    As gettext does: the first of those variables that is set decides; LANGUAGE may list several languages in
    order of preference ("de:ru"). Set to languages the console does not have (C, POSIX, de…): English."""
    if configured in LANGUAGES:
        return configured
    environ = os.environ if environ is None else environ
    for variable in ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG"):
        codes = [
            part.split(".")[0].split("@")[0].split("_")[0].lower() for part in environ.get(variable, "").split(":")
        ]
        codes = [code for code in codes if code]
        if codes:
            return next((code for code in codes if code in LANGUAGES), "en")
    return "en"


def next_language(current: str | None = None) -> str:
    current = current or _language
    index = LANGUAGES.index(current) if current in LANGUAGES else -1
    return LANGUAGES[(index + 1) % len(LANGUAGES)]


def _(message: str) -> str:
    return _translation.gettext(message)


def N_(message: str) -> str:
    """Marks a message id for extraction without translating it yet."""
    return message


@dataclass(frozen=True, slots=True)
class Text:
    """A message id and its (never secret) parameters, translated when shown: the language may change."""

    id: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return _(self.id).format(**self.params) if self.params else _(self.id)

    @property
    def english(self) -> str:
        """The untranslated text: for `scan --json` and the audit, which stay in one language."""
        return self.id.format(**self.params) if self.params else self.id
