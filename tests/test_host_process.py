"""core.host_process: how a library's host process is started and talked to.

Real processes (os.fork, multiprocessing's forkserver) and real pipes; the library hosts themselves are tested
with real libraries in test_isolation.py and test_scan_softhsm.py.
"""

from __future__ import annotations

import faulthandler
import os
import pickle
import signal
import subprocess
import sys
import threading
import time

import pytest

from core import host_process
from core.host_process import PipeChannel, start_forked
from tests.tokens import SOFTHSM_MODULE, SoftHSM

PLAIN: frozenset[tuple[str, str]] = frozenset()  # plain data only: no class may be named


class _Runs:
    """What a hostile pickle would make the parent call: here, an empty file's creation."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.path, "w"))


def _hostile(channel: PipeChannel, path: str) -> None:
    channel.recv()
    data = pickle.dumps(_Runs(path))  # bytes a library could write into the pipe as well as the host can
    os.write(channel.writing, len(data).to_bytes(host_process.HEADER, "big") + data)
    time.sleep(30)


def _echo(channel: PipeChannel) -> None:
    while channel.poll(5):
        message = channel.recv()
        if message == "quit":
            return
        channel.send(("echo", message))


def _half_an_answer(channel: PipeChannel) -> None:
    channel.recv()
    os.write(channel.writing, (1000).to_bytes(host_process.HEADER, "big") + b"x" * 10)  # 990 bytes never follow
    time.sleep(30)


def _die(channel: PipeChannel, sig: int) -> None:
    channel.recv()
    faulthandler.disable()  # pytest's would print the crash on the terminal running the tests
    os.kill(os.getpid(), sig)


def test_a_forked_host_answers_and_ends_when_told() -> None:
    process, channel = start_forked(_echo, answers=PLAIN, requests=PLAIN)
    big = b"\x00\x1b[2J" * 100_000  # longer than a pipe holds: sent and read in parts
    channel.send(big)
    assert channel.recv(time.monotonic() + 10) == ("echo", big)
    channel.send("quit")
    process.join(5)
    assert process.exitcode == 0 and not process.is_alive()
    channel.close()


def test_half_an_answer_is_a_timeout_not_a_wait_forever() -> None:
    process, channel = start_forked(_half_an_answer, answers=PLAIN, requests=PLAIN)
    channel.send("read")
    assert host_process.wait([channel], 5) == [channel]
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        channel.recv(time.monotonic() + 0.5)
    assert time.monotonic() - started < 3
    process.kill()
    process.join(5)
    assert process.exitcode == -signal.SIGKILL
    channel.close()


def test_a_host_killed_by_a_signal_says_which_and_its_end_closes() -> None:
    process, channel = start_forked(_die, signal.SIGSEGV, answers=PLAIN, requests=PLAIN)
    channel.send("read")
    assert host_process.wait([channel], 5) == [channel]  # its end closed: readable, and EOF
    with pytest.raises(EOFError):
        channel.recv(time.monotonic() + 5)
    process.join(5)
    assert process.exitcode == -signal.SIGSEGV
    channel.close()


def test_an_answer_naming_anything_unexpected_is_refused_not_run(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A pickle names the functions it calls: an answer naming one the parent does not expect is refused before
    anything is called (core.isolation treats it as the host's crash)."""
    made = tmp_path / "made-by-a-pickle"
    process, channel = start_forked(_hostile, str(made), answers=PLAIN, requests=PLAIN)
    channel.send("read")
    with pytest.raises(pickle.UnpicklingError, match="not expected"):
        channel.recv(time.monotonic() + 10)
    assert not made.exists()
    process.kill()
    process.join(5)
    channel.close()


def test_a_length_no_message_has_is_a_broken_host() -> None:
    reading, writing = os.pipe()
    channel = PipeChannel(reading, writing, PLAIN)
    os.write(writing, (host_process.MAX_MESSAGE + 1).to_bytes(host_process.HEADER, "big"))
    with pytest.raises(EOFError):
        channel.recv(time.monotonic() + 5)
    channel.close()


def test_a_threaded_process_starts_its_hosts_from_the_forkserver(softhsm: SoftHSM) -> None:
    """A fork of a process with threads could inherit a lock another thread holds: such a process has the
    forkserver start its hosts, and their answers are the same."""
    serial = softhsm.init_token("THREADED")
    probe = """
import sys, threading
from core.scan import Workstation
held = threading.Event()
threading.Thread(target=held.wait, daemon=True).start()
workstation = Workstation([sys.argv[1]])
result = workstation.scan()
host = next(iter(workstation._hosts.values()))
print(type(host.process).__module__, [token.snapshot.serial for token in result.tokens])
workstation.close()
"""
    result = subprocess.run(
        [sys.executable, "-c", probe, SOFTHSM_MODULE],
        capture_output=True,
        text=True,
        timeout=120,
        env=softhsm.env,
    )
    assert result.returncode == 0, result.stderr[-800:]
    assert result.stdout.startswith("multiprocessing") and serial in result.stdout


def test_wait_returns_what_is_ready_within_its_time() -> None:
    first, second = (start_forked(_echo, answers=PLAIN, requests=PLAIN) for _ in range(2))
    try:
        second[1].send("ping")
        started = time.monotonic()
        assert host_process.wait([first[1], second[1]], 5) == [second[1]]
        assert host_process.wait([first[1]], 0.2) == []
        assert time.monotonic() - started < 3
    finally:
        for process, channel in (first, second):
            channel.send("quit")
            process.join(5)
            channel.close()
    assert threading.active_count() == 1


def test_every_pin_status_passes_the_answers_restriction() -> None:
    """Enums go as their class and value (host_process.dumps: Python 3.11.0–3.11.6, Debian 12's, would name
    getattr)."""
    from core.isolation import ANSWERS
    from core.snapshot import PinState, PinStatus

    for status in PinStatus:
        data = host_process.dumps(PinState(status, 3, 10))
        assert host_process.loads(data, ANSWERS) == PinState(status, 3, 10)


def test_a_whole_answer_of_a_real_library_passes_the_restriction(softhsm: SoftHSM) -> None:
    """A host's answer about a token with a key pair and a certificate, read off its channel as the parent
    reads it (unpickled with core.isolation.ANSWERS only)."""
    from datetime import UTC, datetime

    from core.certificates import RawCertificate
    from core.isolation import Depth, LibraryHost

    serial = softhsm.init_token("ANSWER")
    softhsm.profile(serial, "01", days_valid=30)
    host = LibraryHost(SOFTHSM_MODULE)
    try:
        host.ask(datetime.now(UTC), Depth.FULL)
        assert host.connection is not None
        kind, answer = host.connection.recv(time.monotonic() + 60)
    finally:
        host.stop()
    assert kind == "done" and answer.failure is None, answer
    (token,) = [slot for slot in answer.slots if slot.serial == serial]
    assert [type(certificate) for certificate in token.certificates] == [RawCertificate]
    assert [key.cka_id for key in token.keys] == ["01"]  # the public key: the private one needs a login
