"""The console's settings file: TOML under platformdirs' user config dir.

Lookup: the path in KAZTOKEN_HELPDESK_CONFIG if set, else `<user config dir>/kaztoken-helpdesk/config.toml`.
A missing file means defaults. A broken file also means defaults, plus the error, which the scan turns into
a `config-broken` finding instead of refusing to start: the helpdesk must still see the token.

The file is hostile input like everything else: only a regular file is read (not a FIFO, which would hang, nor
/dev/zero, which never ends, nor a directory), at most MAX_BYTES of it, opened without blocking; anything the
TOML parser cannot take, nesting too deep for it included, is a broken file, never a crash.

    # config.toml
    modules = ["/usr/lib/librtpkcs11ecp.so"]   # PKCS#11 libraries to use instead of discovering them
    language = "en"                            # kk, ru or en; else the system's locale, else English
    remember_admin_pins = false   # offer to keep tokens' admin PINs in the OS keyring (never in a file)
"""

from __future__ import annotations

import os
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from core.i18n import LANGUAGES, _

APP_NAME = "kaztoken-helpdesk"
CONFIG_ENV = "KAZTOKEN_HELPDESK_CONFIG"
MAX_BYTES = 64 * 1024  # a settings file is a few lines; this is plenty, and bounds the time and memory it costs


@dataclass(frozen=True, slots=True)
class Config:
    modules: tuple[str, ...] = ()
    language: str | None = None
    remember_admin_pins: bool = False


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
    unknown = sorted(set(data) - {"modules", "language", "remember_admin_pins"})
    if unknown:
        raise ValueError(_("unknown setting(s): {names}").format(names=", ".join(unknown)))
    return Config(modules=tuple(modules), language=language, remember_admin_pins=remember)


def _read(path: Path) -> bytes:
    """The file's bytes, if it is a regular file of at most MAX_BYTES. O_NONBLOCK: opening a FIFO returns at once
    (then refused as not a regular file) instead of waiting for a writer."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(_("not a regular file"))
        if info.st_size > MAX_BYTES:
            raise ValueError(_("larger than {size} KiB").format(size=MAX_BYTES // 1024))
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(MAX_BYTES + 1)  # + 1: a file that grew since fstat is still caught
    finally:
        os.close(fd)
    if len(data) > MAX_BYTES:
        raise ValueError(_("larger than {size} KiB").format(size=MAX_BYTES // 1024))
    return data


def load_config(path: Path | None = None) -> LoadedConfig:
    path = path or config_path()
    try:
        return LoadedConfig(path, _parse(tomllib.loads(_read(path).decode("utf-8"))))
    except FileNotFoundError:
        return LoadedConfig(path, Config())
    except RecursionError:  # tomllib parses nested arrays and tables recursively
        return LoadedConfig(path, Config(), error=_("nested too deeply"))
    except (OSError, ValueError) as error:  # TOMLDecodeError and UnicodeDecodeError are ValueErrors
        return LoadedConfig(path, Config(), error=str(error) or type(error).__name__)
