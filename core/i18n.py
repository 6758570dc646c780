"""The one translation function every user-visible string goes through.

Texts are looked up when they are shown, not when they are defined, so the language can change while the
console runs: catalogues of findings hold message ids and call `_` on access.
"""

from __future__ import annotations

import gettext
from pathlib import Path

DOMAIN = "kaztoken-helpdesk"
LOCALE_DIR = Path(__file__).with_name("locale")
LANGUAGES = ("en",)

_translation: gettext.NullTranslations = gettext.NullTranslations()
_language = "en"


def set_language(language: str) -> None:
    """Switch the language of every text shown from now on; an unknown language falls back to English."""
    global _translation, _language
    _translation = gettext.translation(DOMAIN, LOCALE_DIR, languages=[language], fallback=True)
    _language = language


def language() -> str:
    return _language


def _(message: str) -> str:
    return _translation.gettext(message)


def N_(message: str) -> str:
    """Marks a message id for extraction without translating it yet."""
    return message
