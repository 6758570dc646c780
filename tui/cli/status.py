"""The command's exit statuses (see tui.cli's docstring)."""

EXIT_DONE, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_TOOL_FAILED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
