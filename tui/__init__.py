"""kaztoken-helpdesk's front ends: the Textual console and the command line.

Importing this package must not import Textual: `scan` runs from monitoring and stays light.
"""
