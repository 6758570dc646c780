"""How the parent starts a library's host process and talks to it (core.isolation decides what is said).

Two ways to start a host, one way to talk to it:
- fork (`start_forked`), from a process with one thread and no PKCS#11 library loaded: the cheapest, nothing is
  imported again. `scan` and the console's first read start their hosts so, without importing multiprocessing
  (its import was 11 ms of every `scan --json`, a tenth of it).
- multiprocessing's forkserver (`start_from_forkserver`), from the console once it has threads or has loaded a
  library for an action: a fork of such a process could inherit a lock another thread holds, or a library's
  sockets. multiprocessing is imported then, and only then.

A message is a pickled object behind its length, over a pair of pipes (fork) or multiprocessing's Pipe
(forkserver). The parent reads an answer against the read's deadline: a host that stops halfway through one is a
hang, never a console waiting forever. Each side unpickles only the classes it expects (`loads`): a pickle names
the functions it calls, so bytes a library wrote into its host's pipe could otherwise run anything in the parent.
"""

from __future__ import annotations

import contextlib
import enum
import io
import os
import pickle
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import multiprocessing.connection

Names = frozenset[tuple[str, str]]  # (module, name) of the classes a side accepts in a message

HEADER = 8  # bytes of a message's length, big-endian
MAX_MESSAGE = 512 * 1024 * 1024  # a longer length is a broken host (64 tokens of 300 certificates are ~20 MiB)


class Channel(Protocol):
    """One end of the conversation between the parent and a host."""

    def send(self, message: object) -> None: ...
    def recv(self, deadline: float | None = None) -> Any: ...
    def poll(self, timeout: float) -> bool: ...
    def fileno(self) -> int: ...
    def close(self) -> None: ...


class HostProcess(Protocol):
    """What the parent asks of a host's process (multiprocessing's Process has it too)."""

    @property
    def exitcode(self) -> int | None: ...
    def is_alive(self) -> bool: ...
    def join(self, timeout: float | None = None) -> None: ...
    def kill(self) -> None: ...


def dumps(message: object) -> bytes:
    """A message's bytes. Enum members are pickled as their class and value on every Python: 3.11.0 to 3.11.6
    (Debian 12's 3.11.2) name `getattr` instead, which `loads` refuses (getattr reaches anything)."""
    buffer = io.BytesIO()
    _Pickler(buffer, pickle.HIGHEST_PROTOCOL).dump(message)
    return buffer.getvalue()


class _Pickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, enum.Enum):
            return type(obj), (obj.value,)
        return NotImplemented


def loads(data: bytes, accepted: Names) -> Any:
    """Unpickle a message, refusing any class or function but the `accepted` ones (pickle.UnpicklingError)."""
    return _Restricted(data, accepted).load()


class _Restricted(pickle.Unpickler):
    def __init__(self, data: bytes, accepted: Names) -> None:
        super().__init__(io.BytesIO(data))
        self.accepted = accepted

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.accepted:
            raise pickle.UnpicklingError(f"{module}.{name} is not expected in a message")
        return super().find_class(module, name)


class PipeChannel:
    """Messages over two pipes: `reading` from the other end, `writing` to it; `accepted`, what it unpickles."""

    def __init__(self, reading: int, writing: int, accepted: Names) -> None:
        self.reading, self.writing, self.accepted = reading, writing, accepted

    def send(self, message: object) -> None:
        data = dumps(message)
        view = memoryview(len(data).to_bytes(HEADER, "big") + data)
        while view:
            view = view[os.write(self.writing, view) :]

    def recv(self, deadline: float | None = None) -> Any:
        """The next message. EOFError: the other end closed (or sent something that is not a message);
        TimeoutError: it has not sent a whole one by `deadline` (time.monotonic)."""
        length = int.from_bytes(self._exactly(HEADER, deadline), "big")
        if length > MAX_MESSAGE:
            raise EOFError("not a message")
        return loads(self._exactly(length, deadline), self.accepted)

    def _exactly(self, size: int, deadline: float | None) -> bytes:
        parts, missing = [], size
        while missing:
            if deadline is not None and not self.poll(max(0.0, deadline - time.monotonic())):
                raise TimeoutError
            part = os.read(self.reading, min(missing, 1 << 20))
            if not part:
                raise EOFError
            parts.append(part)
            missing -= len(part)
        return b"".join(parts)

    def poll(self, timeout: float) -> bool:
        poller = select.poll()
        poller.register(self.reading, select.POLLIN)
        return bool(poller.poll(max(0, int(timeout * 1000))))

    def fileno(self) -> int:
        return self.reading

    def close(self) -> None:
        for fd in (self.reading, self.writing):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.reading = self.writing = -1


class Forked:
    """A host forked here: its exit is waited for through a pidfd (no polling), or in short naps without one."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._exitcode: int | None = None
        try:
            self._pidfd: int | None = os.pidfd_open(pid)
        except (AttributeError, OSError):  # Linux before 5.3
            self._pidfd = None

    @property
    def exitcode(self) -> int | None:
        """As multiprocessing says it: the exit status, or minus the signal that ended it."""
        self.is_alive()
        return self._exitcode

    def is_alive(self) -> bool:
        if self._exitcode is None:
            with contextlib.suppress(ChildProcessError):
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self._ended(os.waitstatus_to_exitcode(status))
        return self._exitcode is None

    def join(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.is_alive():
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return
            if self._pidfd is not None:
                poller = select.poll()
                poller.register(self._pidfd, select.POLLIN)
                poller.poll(None if remaining is None else max(1, int(remaining * 1000)))
            else:
                time.sleep(0.001 if remaining is None else min(0.001, remaining))

    def kill(self) -> None:
        if self.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def _ended(self, code: int) -> None:
        self._exitcode = code
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None


def start_forked(
    target: Callable[..., None], *args: Any, answers: Names, requests: Names
) -> tuple[HostProcess, Channel]:
    """Fork a host running `target(channel, *args)`; the parent's process handle and channel. The parent accepts
    `answers` in the host's messages, the host `requests` in the parent's."""
    from_parent, to_child = os.pipe()
    from_child, to_parent = os.pipe()
    pid = os.fork()
    if pid == 0:  # the host: whatever happens, it ends here, never back in the parent's code
        code = 1
        try:
            os.close(to_child)
            os.close(from_child)
            devnull = os.open(os.devnull, os.O_RDONLY)  # a library never reads the operator's terminal
            os.dup2(devnull, 0)
            os.close(devnull)
            target(PipeChannel(from_parent, to_parent, requests), *args)
            code = 0
        finally:
            os._exit(code)
    os.close(from_parent)
    os.close(to_parent)
    return Forked(pid), PipeChannel(from_child, to_child, answers)


class _Piped:
    """multiprocessing's Connection as a Channel (the forkserver's hosts): messages pickled and unpickled here, as
    over the pipes, and passed as bytes."""

    def __init__(self, connection: multiprocessing.connection.Connection, accepted: Names) -> None:
        self.connection, self.accepted = connection, accepted

    def send(self, message: object) -> None:
        self.connection.send_bytes(dumps(message))

    def recv(self, deadline: float | None = None) -> Any:
        return loads(self.connection.recv_bytes(MAX_MESSAGE), self.accepted)

    def poll(self, timeout: float) -> bool:
        return self.connection.poll(timeout)

    def fileno(self) -> int:
        return self.connection.fileno()

    def close(self) -> None:
        self.connection.close()


def start_from_forkserver(
    target: Callable[..., None], *args: Any, answers: Names, requests: Names
) -> tuple[HostProcess, Channel]:
    """Have multiprocessing's forkserver start a host running `target(channel, *args)` (see the module's text)."""
    import multiprocessing

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([target.__module__])
    _start_forkserver()
    receiver, sender = context.Pipe(duplex=True)
    process = context.Process(target=_serve_piped, args=(target, sender, requests, *args), daemon=True)
    process.start()
    sender.close()
    return process, _Piped(receiver, answers)


def _serve_piped(
    target: Callable[..., None], connection: multiprocessing.connection.Connection, requests: Names, *args: Any
) -> None:
    target(_Piped(connection, requests), *args)


_forkserver_lock = threading.Lock()


def _start_forkserver() -> None:
    """Start the forkserver with the process's real stderr: inside the console, Textual has replaced sys.stderr
    by an object without a file descriptor, which multiprocessing cannot hand to its helper processes."""
    from multiprocessing import forkserver

    with _forkserver_lock:
        saved = sys.stderr
        try:
            if sys.__stderr__ is not None:
                sys.stderr = sys.__stderr__
            forkserver.ensure_running()
        finally:
            sys.stderr = saved


def wait(channels: Sequence[Channel], timeout: float) -> list[Channel]:
    """The channels with something to read (a message, or their end closed) within `timeout` seconds."""
    poller = select.poll()
    by_fd = {channel.fileno(): channel for channel in channels}
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    return [by_fd[fd] for fd, _ in poller.poll(max(0, int(timeout * 1000))) if fd in by_fd]
