"""The console's settings file: TOML under platformdirs' user config dir.

Lookup: the path in KAZTOKEN_HELPDESK_CONFIG if set, else `<user config dir>/kaztoken-helpdesk/config.toml`.
A missing file means defaults. A broken file also means defaults, plus the error, which the scan turns into
a `config-broken` finding instead of refusing to start: the helpdesk must still see the token.

The file is hostile input like everything else: only a regular file of at most MAX_BYTES is read
(core.small_files: not a FIFO, /dev/zero or a directory); anything the TOML parser cannot take, nesting too deep
for it included, is a broken file, never a crash.

    # config.toml
    modules = ["/usr/lib/librtpkcs11ecp.so"]   # PKCS#11 libraries to use instead of discovering them
    language = "en"                            # kk, ru or en; else the system's locale, else English
    remember_admin_pins = false   # offer to keep tokens' admin PINs in the OS keyring (never in a file)

    [audit]
    sinks = ["file", "syslog", "postgresql://audit.bank.kz/helpdesk"]   # where the audit trail goes (core.sinks)
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from core.i18n import LANGUAGES, _
from core.small_files import read_small_file

APP_NAME = "kaztoken-helpdesk"
CONFIG_ENV = "KAZTOKEN_HELPDESK_CONFIG"
AUDIT_ENV = "KAZTOKEN_HELPDESK_AUDIT"  # a shared path for a branch's consoles; else the user log dir
MAX_BYTES = 64 * 1024  # a settings file is a few lines; this is plenty, and bounds the time and memory it costs


@dataclass(frozen=True, slots=True)
class Config:
    """The settings, as the file gives them (defaults for what it leaves out)."""

    modules: tuple[str, ...] = ()
    language: str | None = None
    remember_admin_pins: bool = False
    audit_sinks: tuple[str, ...] = ("file",)  # `[audit] sinks`; KAZTOKEN_HELPDESK_AUDIT_SINKS overrides it


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    """The settings with where they came from, and why the file was not used if it was not."""

    path: Path
    config: Config
    error: str | None = None


def config_path() -> Path:
    explicit = os.environ.get(CONFIG_ENV)
    if explicit:
        return Path(explicit)
    return platformdirs.user_config_path(APP_NAME) / "config.toml"


def audit_path() -> Path:
    """The audit trail's file (core.audit); the program's log sits beside it (core.logs). Here, with the other
    places the tool keeps things, so that setting up the log does not import the audit trail's code."""
    explicit = os.environ.get(AUDIT_ENV)
    if explicit:
        return Path(explicit)
    return platformdirs.user_log_path(APP_NAME) / "audit.jsonl"


def _toml(text: str) -> dict[str, object]:
    """The settings' TOML, parsed. tomllib (a few ms of regular expressions) is imported only when there is a
    file to parse: a `scan` on a terminal without settings does not pay for it."""
    import tomllib

    return tomllib.loads(text)


def _parse(data: dict[str, object]) -> Config:
    modules = data.get("modules", [])
    if isinstance(modules, str):
        modules = [modules]
    if not isinstance(modules, list) or not all(isinstance(item, str) for item in modules):
        raise ValueError(_("'modules' must be a list of library paths"))
    language = data.get("language")
    if language is not None and language not in LANGUAGES:
        raise ValueError(_("'language' must be a language code: kk, ru or en"))
    remember = data.get("remember_admin_pins", False)
    if not isinstance(remember, bool):
        raise ValueError(_("'remember_admin_pins' must be true or false"))
    sinks = _audit_sinks(data.get("audit", {}))
    unknown = sorted(set(data) - {"modules", "language", "remember_admin_pins", "audit"})
    if unknown:
        raise ValueError(_("unknown setting(s): {names}").format(names=", ".join(unknown)))
    return Config(modules=tuple(modules), language=language, remember_admin_pins=remember, audit_sinks=sinks)


def _audit_sinks(table: object) -> tuple[str, ...]:
    """The `[audit]` table's `sinks`: names checked later by core.sinks, which says what is wrong with one."""
    if not isinstance(table, dict) or set(table) - {"sinks"}:
        raise ValueError(_("'[audit]' holds one setting: sinks"))
    sinks = table.get("sinks", ["file"])
    if not isinstance(sinks, list) or not all(isinstance(item, str) for item in sinks):
        raise ValueError(_('\'[audit] sinks\' must be a list such as ["file", "syslog"]'))
    return tuple(sinks)


def load_config(path: Path | None = None) -> LoadedConfig:
    path = path or config_path()
    try:
        return LoadedConfig(path, _parse(_toml(read_small_file(path, MAX_BYTES).decode("utf-8"))))
    except FileNotFoundError:
        return LoadedConfig(path, Config())
    except RecursionError:  # tomllib parses nested arrays and tables recursively
        return LoadedConfig(path, Config(), error=_("nested too deeply"))
    except (OSError, ValueError) as error:  # TOMLDecodeError and UnicodeDecodeError are ValueErrors
        return LoadedConfig(path, Config(), error=str(error) or type(error).__name__)


# A top-level `language = …` line (the settings have no tables; a new line goes first, before any there may be).
# Compiled where it is used (re caches it): not at every start of `scan`, which never saves the language.
_LANGUAGE_LINE = r"^[ \t]*language[ \t]*=.*$"


def save_language(language: str, path: Path | None = None) -> str | None:
    """Remember the language chosen in the console (F2) in the settings file: its `language` line replaced, or
    one added; every other line kept as it was. A broken or unreadable file is left alone. Written to a new file
    beside it and renamed over it, so a crash leaves the old file or the new one, never half of one. Returns why
    it could not be remembered, or None."""
    if language not in LANGUAGES:
        raise ValueError(f"not a language code: {language!r}")
    path = path or config_path()
    try:
        text = read_small_file(path, MAX_BYTES).decode("utf-8")
        mode = os.stat(path).st_mode & 0o777
        path = path.resolve()  # a link to the settings: the file it names is rewritten, the link stays
    except FileNotFoundError:
        text, mode = "", 0o600
    except (OSError, ValueError) as error:
        return str(error) or type(error).__name__
    line = f'language = "{language}"'
    pattern = re.compile(_LANGUAGE_LINE, re.MULTILINE)
    new = pattern.sub(line, text, count=1) if pattern.search(text) else f"{line}\n{text}"
    try:
        _parse(_toml(text))  # never rewrite a file that is already broken
        if _parse(_toml(new)).language != language:
            return _("the settings file's layout is not understood")
    except (ValueError, RecursionError) as error:
        return str(error) or type(error).__name__
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".config-", suffix=".toml")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(new)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(temporary, mode)
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
    except OSError as error:
        return error.strerror or str(error)
    return None
