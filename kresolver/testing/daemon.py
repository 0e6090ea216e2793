"""Foreground daemons for the loopback lab: start, wait until they answer, stop by PID.

The lab runs real DNS software (NSD, Knot DNS, kresd, Unbound) as child processes. Each
runs in the foreground in its own session, so stopping it means signalling the process
group that this object created, never anything found by name: other people's tests run
the same programs on the same machine at the same time.

Everything here blocks (``time.sleep``, ``subprocess``); it belongs to test setup and
benchmarks, never to the resolver's reactor.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Self

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rdatatype

SETPRIV = "/usr/bin/setpriv"
LOCK_DIR = "/tmp/kresolver-lab-locks"


class SoftwareMissingError(RuntimeError):
    """The DNS software a lab server needs is not installed.

    Tests turn this into a skip (see ``missing_software``); code outside tests must let it
    fail loudly, because a silent skip would hide a broken CI image.
    """


class DaemonError(RuntimeError):
    """A lab daemon did not start or did not become ready; the message carries its log."""


def missing_software(*binaries: str) -> str | None:
    """Return a skip reason naming the first absent binary, or None when all are present."""
    for binary in binaries:
        if shutil.which(binary) is None:
            return f"{binary} is not installed (Debian packages nsd, knot, knot-resolver)"
    return None


def require(binary: str) -> str:
    """Return ``binary`` if it can be run, else raise ``SoftwareMissingError``."""
    if shutil.which(binary) is None:
        raise SoftwareMissingError(f"{binary} is not installed")
    return binary


def tail(path: str, lines: int = 40) -> str:
    """The last lines of a log file, for error messages."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError as e:
        return f"(no log: {e})"


def ensure_free(address: str, port: int) -> None:
    """Raise ``DaemonError`` if something already listens on address:port (UDP or TCP).

    Linux lets two UDP sockets with SO_REUSEADDR share a port, so a second server on a
    taken address would start fine and the readiness probe would be answered by the
    first one: check by binding without that option before starting anything.
    """
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(family, kind) as probe:
            if kind == socket.SOCK_STREAM:
                # A closed server's connections in TIME_WAIT do not make the port busy.
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((address, port))
            except OSError as e:
                proto = "udp" if kind == socket.SOCK_DGRAM else "tcp"
                raise DaemonError(
                    f"{address} {proto} port {port} is already in use ({e.strerror}); "
                    "another test or helper is running a server there"
                ) from e


def answers_soa(address: str, port: int, origin: str, timeout: float = 0.2) -> bool:
    """True when the server at address:port answers the zone's SOA authoritatively."""
    query = dns.message.make_query(origin, dns.rdatatype.SOA)
    query.flags &= ~dns.flags.RD
    try:
        response = dns.query.udp(query, address, port=port, timeout=timeout)
    except (OSError, dns.exception.DNSException):
        return False
    return bool(response.flags & dns.flags.AA) and any(
        rrset.rdtype == dns.rdatatype.SOA for rrset in response.answer
    )


class StartStop:
    """``with server:`` starts it and stops it on the way out, even after a failure."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class AddressLock:
    """An exclusive claim on address:port among the test runs on this machine.

    Lab addresses are fixed (delegations name them), and several people run the same
    tests at once: without a claim, the second run finds the port taken and fails. The
    claim is an ``flock`` on a file per address, so the kernel drops it when the claiming
    process dies; a second claim waits for the first, up to a timeout.
    """

    def __init__(self, address: str, port: int) -> None:
        self.address = address
        self.port = port
        self.path = os.path.join(LOCK_DIR, f"{address}@{port}.lock")
        self._fd: int | None = None

    def acquire(self, timeout: float) -> None:
        os.makedirs(LOCK_DIR, mode=0o1777, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise DaemonError(
                        f"{self.address}@{self.port} is in use by another lab server "
                        f"(claim {self.path} held for {timeout:.0f}s)"
                    ) from None
                time.sleep(0.1)
            else:
                self._fd = fd
                return

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


class DaemonOwner(StartStop):
    """A lab server that runs as one ``Daemon`` on address:port, logging into its workdir.

    Starting claims the address (``AddressLock``, waiting up to ``lock_timeout`` seconds
    for another test run to finish with it) and checks nothing else listens there.
    """

    address: str
    port: int
    workdir: str
    lock_timeout = 120.0
    _daemon: Daemon | None = None
    _lock: AddressLock | None = None

    @property
    def pid(self) -> int | None:
        return self._daemon.pid if self._daemon is not None else None

    @property
    def log_path(self) -> str:
        return os.path.join(self.workdir, "log")

    def running(self) -> bool:
        return self._daemon is not None and self._daemon.running()

    def stop(self) -> None:
        """Stop the daemon (SIGTERM by PID, then wait); stopping twice is harmless."""
        daemon, self._daemon = self._daemon, None
        try:
            if daemon is not None:
                daemon.stop()
        finally:
            self._release_address()

    def _claim_address(self) -> None:
        if self._lock is None:
            lock = AddressLock(self.address, self.port)
            lock.acquire(self.lock_timeout)
            self._lock = lock
        try:
            ensure_free(self.address, self.port)
        except DaemonError:
            self._release_address()
            raise

    def _release_address(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()


class Daemon:
    """One foreground child process with its log file in a work directory.

    ``ready`` is polled until it returns True; if the process exits first or the timeout
    passes, ``start`` stops it and raises ``DaemonError`` with the tail of its log, so a
    failing test shows what the daemon complained about.
    """

    def __init__(self, name: str, argv: Sequence[str], log_path: str, cwd: str) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def running(self) -> bool:
        return self.process is not None and not self._exited_unreaped(self.process, 0.0)

    def start(self, ready: Callable[[], bool], timeout: float = 10.0) -> None:
        self.launch()
        self.wait_ready(ready, timeout)

    def launch(self) -> None:
        """Start the process without waiting; several can then come up in parallel."""
        if self.process is not None:
            raise DaemonError(f"{self.name} already started (pid {self.process.pid})")
        require(self.argv[0])
        argv = self.argv
        if os.path.exists(SETPRIV):
            # If the test process dies without cleaning up (killed by a timeout, SIGPIPE),
            # the kernel stops the daemon too, instead of leaving the lab address taken.
            # The "parent" is the thread that launched it, so launch from a thread that
            # lives as long as the daemon should (the main thread in tests).
            argv = [SETPRIV, "--pdeathsig", "TERM", "--", *argv]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                argv,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, ready: Callable[[], bool], timeout: float = 10.0) -> None:
        if self.process is None:
            raise DaemonError(f"{self.name} was not launched")
        deadline = time.monotonic() + timeout
        while True:
            if self._exited_unreaped(self.process, 0.0):
                process, self.process = self.process, None
                self._signal_group(process, signal.SIGKILL)
                code = process.wait()
                raise DaemonError(
                    f"{self.name} exited with status {code} while starting:\n"
                    f"$ {' '.join(self.argv)}\n{tail(self.log_path)}"
                )
            if ready():
                return
            if time.monotonic() > deadline:
                self.stop()
                raise DaemonError(
                    f"{self.name} did not become ready within {timeout:.0f}s:\n"
                    f"$ {' '.join(self.argv)}\n{tail(self.log_path)}"
                )
            time.sleep(0.02)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM our process group, wait for it, SIGKILL if it does not go. Idempotent."""
        process, self.process = self.process, None
        if process is None:
            return
        self._signal_group(process, signal.SIGTERM)
        if not self._exited_unreaped(process, timeout):
            self._signal_group(process, signal.SIGKILL)
            self._exited_unreaped(process, timeout)
        # Helpers the daemon forked (NSD's server and xfrd processes) share the group; make
        # sure none outlives the leader and keeps the port bound. The leader is still an
        # unreaped zombie here, so its PID (the group id) cannot have been reused.
        self._signal_group(process, signal.SIGKILL)
        process.wait()

    @staticmethod
    def _exited_unreaped(process: subprocess.Popen[bytes], timeout: float) -> bool:
        """Wait up to timeout for the leader to exit, leaving it as a zombie."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                done = os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG)
            except ChildProcessError:
                return True
            if done is not None:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)

    @staticmethod
    def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
        # The group id is the PID of the leader we started (start_new_session=True).
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            pass
