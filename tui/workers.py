"""One way for the console's thread workers to report back, and one place that handles what they raise.

PKCS#11, the lab's files and the audit's network never run on the UI thread: `in_thread` runs a job in a
thread worker. What it returns goes to `done`, on the UI thread; what it raises is unexpected (core answers what
a person can cause with a result, not an exception): it is logged (tui.errors.log_unexpected), and said as one
translated line through `failed`, never as a traceback. Both arrive through Textual's Worker.StateChanged, handled
by `ReportsWorkers`.
A worker cancelled by a newer one in its exclusive group reports nothing.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from weakref import WeakKeyDictionary

from textual.dom import DOMNode
from textual.worker import Worker, WorkerState

from core.i18n import _
from tui.errors import error_line, log_unexpected

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Report:
    done: Callable[[Any], None]
    failed: Callable[[str], None]


_REPORTS: WeakKeyDictionary[Worker[Any], _Report] = WeakKeyDictionary()


def in_thread(
    node: DOMNode,
    job: Callable[[], T],
    done: Callable[[T], None],
    *,
    failed: Callable[[str], None] | None = None,
    group: str,
    exclusive: bool = False,
) -> Worker[T]:
    """Run `job` in a thread worker of `node` (a ReportsWorkers); `done(result)` on the UI thread, or
    `failed(line)` when it raised (by default the line is notified as an error)."""
    worker: Worker[T] = node.run_worker(job, thread=True, group=group, exclusive=exclusive, exit_on_error=False)
    _REPORTS[worker] = _Report(done, failed or (lambda line: _notify(node, line)))
    return worker


def _notify(node: DOMNode, line: str) -> None:
    node.app.notify(_("Unexpected error: {error}").format(error=line), severity="error", markup=False)


class ReportsWorkers:
    """Mixed into an App or a Screen that runs `in_thread` workers: hands each result or error on."""

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        report = _REPORTS.get(event.worker)
        if report is None or event.state not in (WorkerState.SUCCESS, WorkerState.ERROR):
            return  # not ours, still running, or cancelled by a newer one
        del _REPORTS[event.worker]
        if event.state is WorkerState.SUCCESS:
            report.done(event.worker.result)
            return
        error = event.worker.error
        assert error is not None  # an ERROR state has one
        # The same error from the same place again (a poll fails every second): on record once, until another.
        where = f"worker {event.worker.group}"
        signature = (where, type(error).__name__, _frames(error))
        if _LAST_LOGGED.get(self) != signature:
            _LAST_LOGGED[self] = signature
            log_unexpected(error, where)
        report.failed(error_line(error))


def _frames(error: BaseException) -> tuple[tuple[str, int], ...]:
    return tuple((frame.filename, frame.lineno or 0) for frame in traceback.extract_tb(error.__traceback__))


# Per App or Screen: what it last put on record.
_LAST_LOGGED: WeakKeyDictionary[ReportsWorkers, tuple[str, str, tuple[tuple[str, int], ...]]] = WeakKeyDictionary()
