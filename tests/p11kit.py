"""p11-kit for tests: its real Debian modules, and a registry of the test's own that only one process sees.

p11-kit's proxy reads its module registry from fixed places (/etc/pkcs11/pkcs11.conf, /etc/pkcs11/modules,
/usr/share/p11-kit/modules) and, as root, ignores the user's ~/.config/pkcs11 (measured with
P11_KIT_DEBUG=conf: "skipping user config in program running as root"); no environment variable moves them.
So a test that needs the proxy to read its own registry runs the command in a mount namespace of its own
(`unshare --mount`), where a directory of the test is bind-mounted over those places: the machine, other
tests and the lab never see it, and the mounts vanish with the process. That needs root (CI is root).
"""

from __future__ import annotations

import os
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PKCS11_DIR = Path("/usr/lib/x86_64-linux-gnu/pkcs11")  # where p11-kit resolves a bare `module:` name
TRUST_MODULE = PKCS11_DIR / "p11-kit-trust.so"
PROXY_MODULE = Path("/usr/lib/x86_64-linux-gnu/p11-kit-proxy.so")
PACKAGE_REGISTRY = Path("/usr/share/p11-kit/modules")
SYSTEM_CONFIG = Path("/etc/pkcs11")  # pkcs11.conf and modules/

# Debian's `p11-kit` package registers the trust module with this file (0.24.1, its comments left out). The
# machine's own copy is used where the package is installed.
TRUST_REGISTRY_ENTRY = """\
module: p11-kit-trust.so
priority: 1
trust-policy: yes
x-trust-lookup: pkcs11:library-description=PKCS%2311%20Kit%20Trust%20Module
disable-in: p11-kit-proxy
x-init-reserved:
"""

needs_p11kit_modules = pytest.mark.skipif(
    not (TRUST_MODULE.exists() and PROXY_MODULE.exists()), reason="Debian's p11-kit-modules is not installed"
)


def trust_registry_entry() -> str:
    installed = PACKAGE_REGISTRY / "p11-kit-trust.module"
    return installed.read_text() if installed.exists() else TRUST_REGISTRY_ENTRY


# The namespace's script: the test's registry over the package registry, an empty directory over /etc/pkcs11
# (no system pkcs11.conf, no system modules), then the command itself.
_PRIVATE = """\
set -e
mount --bind "$1" /usr/share/p11-kit/modules
if [ -d /etc/pkcs11 ]; then mount --bind "$2" /etc/pkcs11; fi
shift 2
exec "$@"
"""


@cache
def private_namespaces() -> str | None:
    """None when commands can run with a private registry here, else why not."""
    if os.geteuid() != 0:
        return "a private p11-kit registry needs root (a mount namespace); CI runs as root"
    if not PACKAGE_REGISTRY.is_dir():
        return f"{PACKAGE_REGISTRY} is missing"
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "true"], capture_output=True, text=True, timeout=60
    )
    return None if probe.returncode == 0 else f"unshare --mount fails here: {probe.stderr.strip()}"


def needs_private_registry() -> None:
    reason = private_namespaces()
    if reason:
        pytest.skip(reason)


def run_with_registry(
    registry: Path, *args: str, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`kaztoken-helpdesk ARGS` in its own mount namespace, where p11-kit's only registry is `registry`."""
    empty = registry.parent / f"{registry.name}-empty-etc"
    empty.mkdir(exist_ok=True)
    return subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            _PRIVATE,
            "sh",
            str(registry),
            str(empty),
            sys.executable,
            "-m",
            "tui.cli",
            *args,
        ],
        input=stdin,
        capture_output=True,
        text=True,
        env=os.environ.copy() if env is None else env,
        cwd=REPO,
        timeout=120,
        start_new_session=True,  # no controlling terminal: nothing can wait on a prompt
        check=False,
    )


def run_cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """`kaztoken-helpdesk ARGS`, in a process of its own, with the machine's p11-kit as it is."""
    return subprocess.run(
        [sys.executable, "-m", "tui.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        cwd=REPO,
        timeout=120,
        start_new_session=True,
        check=False,
    )
