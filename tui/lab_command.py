"""`kaztoken-helpdesk lab`: build the training lab and start the console on it, or list, reset, or just build.

    kaztoken-helpdesk lab                       # build what is missing, then the console on the lab (LAB mode)
    kaztoken-helpdesk lab --list                # every scenario, its state, the findings it shows
    kaztoken-helpdesk lab --reset [SCENARIO …]  # back to as built (all when none is named), then the console
    kaztoken-helpdesk lab --no-console          # build only; print the environment for `scan` or another console
    kaztoken-helpdesk lab --scenario driver-missing   # the console started with a driver that is not there
    kaztoken-helpdesk lab --no-opencryptoki     # simulated tokens only: the machine's openCryptoki token untouched
    kaztoken-helpdesk lab --keygen-seconds 60   # key generation as slow as the real token's

Exit status: 0 when done (or the console's own), 1 when the lab could not be built, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from core.config import LoadedConfig
from core.i18n import _
from tui.compat import SubParsers

if TYPE_CHECKING:  # the lab is imported when the command runs: `scan` and the console must not pay for it
    from core.lab import Done, Lab


def _modes() -> tuple[str, ...]:
    from core.lab import SCENARIOS, Stack

    return tuple(item.id for item in SCENARIOS if item.stack is Stack.NONE)


def add_parser(subparsers: SubParsers, parents: Sequence[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "lab",
        parents=list(parents),
        help=_("the training lab: tokens in every state the helpdesk meets, and the console on them"),
        description=_(
            "Builds one simulated KAZTOKEN per scenario (and openCryptoki's soft token for the one that must "
            "change its PINs, where it runs) under the user data directory, then starts the console on them, "
            "marked LAB."
        ),
    )
    parser.add_argument("--dir", type=Path, metavar="DIR", help=_("keep the lab here instead of the user data dir"))
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--list", action="store_true", help=_("list the scenarios, their state and their findings"))
    what.add_argument(
        "--reset",
        nargs="*",
        metavar="SCENARIO",
        help=_("put these scenarios' tokens back as built (every one when none is named)"),
    )
    parser.add_argument(
        "--no-console",
        action="store_true",
        help=_("build only, and print KAZTOKEN_SIM_DIR and the module paths for `scan` or another console"),
    )
    parser.add_argument(
        "--no-opencryptoki",
        action="store_true",
        help=_("simulated tokens only: leave this machine's openCryptoki soft token alone"),
    )
    parser.add_argument(
        "--keygen-seconds",
        type=float,
        default=0,
        metavar="SECONDS",
        help=_("make key generation on the lab's tokens take this long, as on the real token (progress screens)"),
    )
    parser.add_argument(
        "--scenario",
        metavar="SCENARIO",
        help=_("start the console this way instead of on the lab's tokens (driver-missing)"),
    )
    return parser


def run(args: argparse.Namespace, config: LoadedConfig) -> int:
    from core.lab import BY_ID, Lab, LabError

    if args.scenario is not None and args.scenario not in _modes():
        print(
            _("lab: --scenario must be one of: {modes}.").format(modes=", ".join(_modes())),
            file=sys.stderr,
        )
        return 2
    if getattr(args, "module", None):
        print(_("lab: --module cannot be used with lab: the lab chooses its own libraries."), file=sys.stderr)
        return 2
    if args.keygen_seconds < 0:
        print(_("lab: --keygen-seconds cannot be negative."), file=sys.stderr)
        return 2
    lab = Lab(args.dir, opencryptoki=not args.no_opencryptoki, keygen_seconds=args.keygen_seconds)
    try:
        if args.list:
            print_list(lab)
            return 0
        unknown = [name for name in args.reset or () if name not in BY_ID]
        if unknown:
            print(
                _("lab: no such scenario: {names}. See kaztoken-helpdesk lab --list.").format(names=", ".join(unknown)),
                file=sys.stderr,
            )
            return 2
        started = time.perf_counter()
        if args.reset is not None:
            done = lab.reset(args.reset)
        elif args.scenario is None:
            done = lab.build()
        else:
            done = []  # a way of starting the console that needs no token: nothing to build
        if done:
            print(summary(lab, done, time.perf_counter() - started), file=sys.stderr)
        modules = lab.modules(args.scenario)
    except LabError as error:
        print(_("lab: {error}").format(error=error), file=sys.stderr)
        return 1
    if args.no_console:
        print_environment(lab, args.scenario)
        return 0
    lab.activate()
    from tui.app import run as console  # Textual is imported only here

    return console(modules, config, lab=lab, library_timeout=getattr(args, "library_timeout", None))


def summary(lab: Lab, done: Sequence[Done], seconds: float) -> str:
    from core.lab import BY_ID, Stack

    counts = Counter(step.how for step in done)
    hows = {
        "built": _("{n} built"),
        "copied": _("{n} reset from their pristine copies"),
        "replugged": _("{n} plugged back in"),
        "kept": _("{n} kept as they are"),
    }
    parts = [text.format(n=counts[how]) for how, text in hows.items() if counts[how]]
    line = _("Lab ready in {seconds:.1f} s under {root}: {what}.").format(
        seconds=seconds, root=lab.root, what=", ".join(parts) or _("nothing to do")
    )
    for step in done:
        if BY_ID[step.scenario].stack is not Stack.OPENCRYPTOKI:
            continue
        if step.how == "skipped":
            line += " " + _("openCryptoki's soft token left as it is: {why}").format(why=step.note)
        else:
            line += " " + _("openCryptoki's soft token: {id}.").format(id=step.scenario)
    return line


def print_environment(lab: Lab, mode: str | None = None) -> None:
    """The lines to paste into a shell (or `eval`) so that `scan` or a console there sees the lab."""
    for name, value in lab.environment(mode).items():
        print(f"export {name}={shlex.quote(value)}")
    print(_("# then: kaztoken-helpdesk scan   (or: kaztoken-helpdesk for the console)"), file=sys.stderr)


def print_list(lab: Lab) -> None:
    from core.lab import LAB_PINS_WHERE, SCENARIOS, State

    statuses = lab.status()
    width = max(len(item.id) for item in SCENARIOS)
    for status in statuses:
        item = status.scenario
        mark = {State.UNAVAILABLE: "✖", State.MODE: "▶", State.NOT_BUILT: "·"}.get(status.state, "✔")
        codes = ", ".join(item.expected) or _("no finding")
        print(f"{mark} {item.id:<{width}}  {_(item.title)}  [{item.stack}]")
        # Message ids outside the f-strings: the extractor does not look inside one (Python 3.11).
        shows = _("shows: {codes}").format(codes=codes)
        serial = " · " + _("serial {serial}").format(serial=status.serial) if status.serial else ""
        print(f"  {'':<{width}}  {shows}")
        print(f"  {'':<{width}}  {status.text}{serial}")
    print()
    print(_(LAB_PINS_WHERE))
    print(_("Lab directory: {root}").format(root=lab.root))
