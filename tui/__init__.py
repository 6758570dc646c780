"""kaztoken-helpdesk's front ends: the Textual console and the command line.

Importing this package must not import Textual: `scan` runs from monitoring and stays light.
"""

import logging

# Unexpected errors are logged (tui.errors) to the handler core sets up; without one, nothing is said on the
# terminal by logging's last resort: the one line each front end prints is all a person sees.
logging.getLogger(__name__).addHandler(logging.NullHandler())
