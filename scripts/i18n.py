"""Keep the translation catalogues in step with the code: extract, update, compile.

    .venv/bin/python scripts/i18n.py            # all three steps
    .venv/bin/python scripts/i18n.py compile    # only .po → .mo, after editing translations

Message ids are the English texts marked with `_()` or `N_()` in core/ and tui/. Each language has a .po file
in core/locale/<lang>/LC_MESSAGES/ (standard gettext, edited by hand or with any PO editor) and the .mo that
`gettext` reads at run time, committed so an installed console needs no build step. English is a catalogue
too (each text its own translation), so its wording can be corrected without touching code.
Babel does the extraction and the PO/MO formats; it is a development dependency only.
"""

from __future__ import annotations

import io
import sys
from datetime import UTC, datetime
from pathlib import Path

from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po, write_po

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core import __version__  # noqa: E402
from core.i18n import DOMAIN, LANGUAGES, LOCALE_DIR  # noqa: E402

SOURCES = ("core", "tui")
KEYWORDS = {"_": None, "N_": None}


def extract() -> Catalog:
    template = new_catalog()
    for source in SOURCES:
        for filename, lineno, message, comments, context in extract_from_dir(
            ROOT / source, method_map=[("**.py", "python")], keywords=KEYWORDS, comment_tags=("TRANSLATORS:",)
        ):
            template.add(message, None, [(f"{source}/{filename}", lineno)], auto_comments=comments, context=context)
    return template


def new_catalog(language: str | None = None) -> Catalog:
    # A fixed date: re-running the extraction changes the files only when the texts change.
    fixed = datetime(2026, 11, 1, tzinfo=UTC)
    return Catalog(
        locale=language,
        domain=DOMAIN,
        project="kaztoken-helpdesk",
        version=__version__,
        charset="utf-8",
        creation_date=fixed,
        revision_date=fixed,
        copyright_holder="kaztoken-helpdesk authors",
        msgid_bugs_address="",
        last_translator="kaztoken-helpdesk authors",
        language_team=f"{language}",
    )


def po_path(language: str) -> Path:
    return LOCALE_DIR / language / "LC_MESSAGES" / f"{DOMAIN}.po"


def read_catalog(path: Path, language: str) -> Catalog:
    if not path.exists():
        return new_catalog(language)
    with path.open("rb") as handle:
        return read_po(handle, locale=language, domain=DOMAIN)


def update(template: Catalog) -> None:
    for language in LANGUAGES:
        path = po_path(language)
        catalog = read_catalog(path, language)
        catalog.update(template, no_fuzzy_matching=True)
        catalog.revision_date = template.revision_date
        catalog.fuzzy = False
        catalog.obsolete.clear()
        if language == "en":
            for message in catalog:
                if message.id and not message.string:
                    message.string = message.id
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as handle:
            write_po(handle, catalog, width=120, omit_header=False, sort_output=False, include_previous=False)


def compiled(language: str) -> bytes:
    """The .mo bytes for a language's .po as it stands (the tests compare them with the committed file)."""
    catalog = read_catalog(po_path(language), language)
    buffer = io.BytesIO()
    write_mo(buffer, catalog, use_fuzzy=False)
    return buffer.getvalue()


def compile_all() -> None:
    for language in LANGUAGES:
        po_path(language).with_suffix(".mo").write_bytes(compiled(language))


def main(argv: list[str]) -> int:
    steps = argv or ["extract", "compile"]
    if "extract" in steps:
        update(extract())
    if "compile" in steps:
        compile_all()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
