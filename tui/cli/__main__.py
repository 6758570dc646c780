"""`python -m tui.cli`: the command, as the `kaztoken-helpdesk` entry point runs it."""

import sys

from tui.cli import main

sys.exit(main())
