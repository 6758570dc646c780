"""kaztoken-helpdesk's domain library: modules, token snapshots, diagnostics and the operations on tokens.

Nothing here imports Textual: every front end (the console, the CLI, a Python caller) goes through it.
"""

__version__ = "0.1.0"
