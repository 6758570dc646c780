"""Text that came from outside (a token, a certificate, a library, a lock file, the audit file), made safe to show.

Anyone can write any label or certificate on a customer's token, so such text may hold terminal escapes (ESC,
CSI, OSC 52 that writes the clipboard), bidi overrides that reorder what the operator reads, invisible format
characters, newlines that break a table, Markdown or HTML that a ticket system renders. Every output shows it
through one of these functions, named for where it goes:

- `visible()`: for a terminal, the console and any plain text; every control, format and separator character
  is written as its Python escape (`\\x1b`, `\\u202e`, `\\n`), so it is seen and never acted on.
- `markdown_text()`: running Markdown text (headings, list items); `visible()` plus escapes for Markdown's
  specials and HTML, so a label can neither format, link, open a fence nor inject a tag.
- `markdown_fence()`: a fence for a Markdown code block longer than any run of backticks in its lines.
- `json_text()`: a JSON document whose strings keep the exact data, with the same characters as `\\uXXXX`.
- `file_part()`: a piece of a file name: letters, digits, `-` and `_` only, never a path.

Textual markup is not handled here (`core` does not know Textual): the console puts these strings into
`Content` as plain text, never through a markup parser.
"""

from __future__ import annotations

import re
import unicodedata

# Unicode categories that draw nothing of their own and that terminals or renderers may act on:
# Cc: C0 controls, DEL, C1 controls; Cf: bidi marks/overrides/isolates, zero-width characters, soft hyphen,
# tags; Zl, Zp: line and paragraph separators; Cs: lone surrogates (from a decoder's surrogateescape).
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
# Letters that render as blank space (Hangul fillers, Khmer inherent vowels, the combining grapheme joiner):
# a label made of them looks empty or like another.
_BLANK_LETTERS = frozenset("\u034f\u115f\u1160\u17b4\u17b5\u3164\uffa0")
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _hidden(char: str) -> bool:
    return unicodedata.category(char) in _HIDDEN_CATEGORIES or char in _BLANK_LETTERS


def _escape(char: str) -> str:
    if char in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[char]
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def visible(text: object) -> str:
    """`text` with every control, format or invisible character written out as its escape: one line, nothing a
    terminal acts on, nothing hidden. Safe to apply twice (its output has no such character)."""
    text = str(text)
    if text.isprintable() and not any(char in _BLANK_LETTERS for char in text):
        return text  # the usual case, at C speed: isprintable() is False for every category above
    return "".join(_escape(char) if _hidden(char) else char for char in text)


# Every ASCII punctuation mark CommonMark lets a backslash escape and that means something somewhere in
# Markdown or GitHub's flavour: emphasis, code, links, images, headings' closing #, tables, strikethrough, and
# the `.` and `:` of autolinks (www.x.kz, https://…). Data never starts a line here (`visible` keeps it on one
# line, after our own words), so the line-start marks (`-`, `+`, `1.`, `>`) need no escape of their own.
_MARKDOWN_SPECIALS = re.compile(r"([\\`*_{}\[\]()#!|~.:])")
_HTML = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}


def markdown_text(text: object) -> str:
    """`text` for running Markdown: shown literally by any renderer, on one line, with no HTML in it."""
    escaped = _MARKDOWN_SPECIALS.sub(r"\\\1", visible(text))
    return "".join(_HTML.get(char, char) for char in escaped)


def markdown_fence(lines: list[str]) -> str:
    """A code fence that none of `lines` can close: one backtick more than the longest run in them."""
    longest = max((len(run) for line in lines for run in re.findall(r"`+", line)), default=0)
    return "`" * max(3, longest + 1)


def json_text(document: str) -> str:
    """A JSON document (from json.dumps with ensure_ascii=False) with every hidden character as a `\\uXXXX`
    escape: the same data for a program, nothing raw for a terminal. Such characters can only stand inside
    strings, where the escape means the character itself."""
    if document.isprintable():
        return document
    out = []
    for char in document:
        if char == "\n" or not _hidden(char):
            out.append(char)  # a newline here is json.dumps' indentation: escaped ones are already `\n`
            continue
        code = ord(char)
        if code >= 0x10000:  # JSON spells a character beyond the BMP as its UTF-16 surrogate pair
            code -= 0x10000
            out.append(f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}")
        else:
            out.append(f"\\u{code:04x}")
    return "".join(out)


def file_part(text: object, *, fallback: str = "unnamed", limit: int = 64) -> str:
    """`text` as part of a file name: ASCII letters, digits, `-` and `_` only (no `/`, no `..`, no dot file),
    at most `limit` characters; `fallback` when nothing is left."""
    part = re.sub(r"[^A-Za-z0-9_-]", "_", str(text))[:limit].strip("_")
    return part or fallback
