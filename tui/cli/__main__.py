"""`python -m tui.cli`: the command, as the `kaztoken-helpdesk` entry point runs it."""

import sys

from tui.entry import run

sys.exit(run())
