"""`python -m core.lab reset --dir ROOT [--rebuild] SCENARIO…`: the child process the trainer menu builds in
(see `Lab.rebuild`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from core.lab.lab import Lab
from core.lab.scenarios import EXIT_NOT_FREE, OCK_LOCK, LabError, NotFree, scenario


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m core.lab reset --dir ROOT [--rebuild] SCENARIO…`: what `Lab.reset(isolated=True)` runs."""
    parser = argparse.ArgumentParser(prog="python -m core.lab")
    commands = parser.add_subparsers(dest="command", required=True)
    reset = commands.add_parser("reset")
    reset.add_argument("--dir", type=Path, required=True)
    reset.add_argument("--rebuild", action="store_true", help="build anew even where a pristine copy is fresh")
    reset.add_argument("--no-opencryptoki", action="store_true")
    reset.add_argument("--no-ock-lock", action="store_true")
    reset.add_argument("--if-free", action="store_true", help="openCryptoki's token only if it is uninitialised")
    reset.add_argument("scenarios", nargs="*")
    args = parser.parse_args(argv)
    lab = Lab(args.dir, opencryptoki=not args.no_opencryptoki, ock_lock=None if args.no_ock_lock else OCK_LOCK)
    try:
        if args.rebuild:
            lab.prepare()
            items = [scenario(scenario_id) for scenario_id in args.scenarios]
            lab.rebuild(items, isolated=False, child=True, only_if_free=args.if_free)
        else:
            lab.reset(args.scenarios)
    except NotFree as error:
        print(error, file=sys.stderr)
        return EXIT_NOT_FREE
    except LabError as error:
        print(error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
