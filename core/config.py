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

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from core.i18n import LANGUAGES, _
from core.small_files import read_small_file

APP_NAME = "kaztoken-helpdesk"
CONFIG_ENV = "KAZTOKEN_HELPDESK_CONFIG"
MAX_BYTES = 64 * 1024  # a settings file is a few lines; this is plenty, and bounds the time and memory it costs


@dataclass(frozen=True, slots=True)
class Config:
    modules: tuple[str, ...] = ()
    language: str | None = None
    remember_admin_pins: bool = False
    audit_sinks: tuple[str, ...] = ("file",)  # `[audit] sinks`; KAZTOKEN_HELPDESK_AUDIT_SINKS overrides it


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    path: Path
    config: Config
    error: str | None = None


def config_path() -> Path:
    explicit = os.environ.get(CONFIG_ENV)
    if explicit:
        return Path(explicit)
    return platformdirs.user_config_path(APP_NAME) / "config.toml"


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
        return LoadedConfig(path, _parse(tomllib.loads(read_small_file(path, MAX_BYTES).decode("utf-8"))))
    except FileNotFoundError:
        return LoadedConfig(path, Config())
    except RecursionError:  # tomllib parses nested arrays and tables recursively
        return LoadedConfig(path, Config(), error=_("nested too deeply"))
    except (OSError, ValueError) as error:  # TOMLDecodeError and UnicodeDecodeError are ValueErrors
        return LoadedConfig(path, Config(), error=str(error) or type(error).__name__)
