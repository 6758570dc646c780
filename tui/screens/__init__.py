"""The console's screens besides the dashboard: thin shells over tui.render."""
