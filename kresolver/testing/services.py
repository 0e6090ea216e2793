"""Real Redis, memcached and etcd servers on loopback for tests and benchmarks.

Each server runs in the foreground as a L{Daemon} with its own address in 127.0.90.x,
its own port and a temporary data directory, and is stopped by PID (its process group),
never by name: other people's tests run the same programs on this machine.  Like the
rest of the lab, starting and stopping blocks; it belongs in test setup, not in a
reactor callback.

C{crash()} kills a server with SIGKILL (what the fault tests do to a backend under load);
C{start()} again brings it back on the same address and port.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import tempfile

from kresolver.testing.daemon import Daemon, DaemonOwner

#: where each kind of server listens by default (workers and storages own 127.0.90.x)
REDIS_ADDRESS = ("127.0.90.10", 6390)
SENTINEL_ADDRESS = ("127.0.90.12", 26390)
MEMCACHED_ADDRESSES = (("127.0.90.20", 11290), ("127.0.90.21", 11291))
ETCD_ADDRESS = ("127.0.90.30", 2390)


def _exchange(address: str, port: int, request: bytes, timeout: float = 0.3) -> bytes:
    """Send C{request} over TCP and return what came back in one read ('' if nothing)."""
    try:
        with socket.create_connection((address, port), timeout=timeout) as sock:
            sock.sendall(request)
            return sock.recv(4096)
    except OSError:
        return b""


class Service(DaemonOwner):
    """One server: C{argv()} says how to run it, C{ready()} whether it answers."""

    program = ""

    def __init__(self, address: str, port: int, workdir: str | None = None) -> None:
        self.address = address
        self.port = port
        self._own_workdir = workdir is None
        self.workdir = workdir or tempfile.mkdtemp(prefix=f"kresolver-{self.program}-")

    def argv(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    @property
    def uri(self) -> str:
        raise NotImplementedError

    def start(self, timeout: float = 20.0) -> None:
        self._claim_address()
        daemon = Daemon(self.program, self.argv(), self.log_path, self.workdir)
        try:
            daemon.start(self.ready, timeout)
        except BaseException:
            self._release_address()
            raise
        self._daemon = daemon

    def command(self, *words: str) -> bytes:
        """One command in the inline text protocol (Redis, Sentinel, memcached), for
        tests that look inside."""
        return _exchange(self.address, self.port, " ".join(words).encode() + b"\r\n")

    def crash(self) -> None:
        """SIGKILL the server (no clean shutdown), keeping the address claimed."""
        daemon, self._daemon = self._daemon, None
        if daemon is not None and daemon.process is not None:
            process = daemon.process
            daemon.process = None
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()

    def cleanup(self) -> None:
        """Stop the server and remove its data directory (if we made it)."""
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


class RedisServer(Service):
    """redis-server with no persistence, an eviction policy and a UNIX socket too; a
    replica of another one with C{replica_of}."""

    program = "redis-server"

    def __init__(self, address: str = REDIS_ADDRESS[0], port: int = REDIS_ADDRESS[1],
                 workdir: str | None = None, maxmemory: str = "64mb",
                 replica_of: RedisServer | None = None) -> None:
        super().__init__(address, port, workdir)
        self.maxmemory = maxmemory
        self.replica_of = replica_of

    @property
    def socket_path(self) -> str:
        return os.path.join(self.workdir, "redis.sock")

    @property
    def uri(self) -> str:
        return f"redis://{self.address}:{self.port}"

    def argv(self) -> list[str]:
        return [
            "redis-server", "--bind", self.address, "--port", str(self.port),
            "--dir", self.workdir, "--save", "", "--appendonly", "no",
            "--daemonize", "no", "--unixsocket", self.socket_path, "--unixsocketperm", "700",
            "--maxmemory", self.maxmemory, "--maxmemory-policy", "volatile-ttl",
            "--protected-mode", "no",
        ] + ([
            "--replicaof", self.replica_of.address, str(self.replica_of.port),
            # else it announces the source address of its link to the master (127.0.0.1),
            # where it does not listen, and a promotion would name an unreachable master
            "--replica-announce-ip", self.address,
        ] if self.replica_of is not None else [])

    def ready(self) -> bool:
        return _exchange(self.address, self.port, b"PING\r\n").startswith(b"+PONG")


class SentinelServer(Service):
    """redis-server in Sentinel mode, watching C{master} under the name C{service}."""

    program = "redis-server"

    def __init__(self, master: RedisServer, address: str = SENTINEL_ADDRESS[0],
                 port: int = SENTINEL_ADDRESS[1], service: str = "kresolver",
                 workdir: str | None = None) -> None:
        super().__init__(address, port, workdir)
        self.master = master
        self.service = service

    @property
    def uri(self) -> str:
        return f"redis-sentinel://{self.address}:{self.port}/{self.service}"

    def argv(self) -> list[str]:
        config = os.path.join(self.workdir, "sentinel.conf")  # Sentinel rewrites it
        with open(config, "w") as f:
            f.write(
                f"bind {self.address}\nport {self.port}\nprotected-mode no\n"
                f"dir {self.workdir}\n"
                f"sentinel monitor {self.service} {self.master.address} {self.master.port} 1\n"
                f"sentinel down-after-milliseconds {self.service} 1000\n"
            )
        return ["redis-server", config, "--sentinel"]

    def ready(self) -> bool:
        reply = _exchange(self.address, self.port,
                          f"SENTINEL get-master-addr-by-name {self.service}\r\n".encode())
        return self.master.address.encode() in reply


class MemcachedServer(Service):
    """memcached on TCP only (no UDP), with a small memory bound."""

    program = "memcached"

    def __init__(self, address: str = MEMCACHED_ADDRESSES[0][0],
                 port: int = MEMCACHED_ADDRESSES[0][1], workdir: str | None = None) -> None:
        super().__init__(address, port, workdir)

    @property
    def uri(self) -> str:
        return f"memcached://--SERVER={self.address}:{self.port}"

    def argv(self) -> list[str]:
        return ["memcached", "-l", self.address, "-p", str(self.port), "-U", "0",
                "-m", "64", "-u", "root", "-c", "256"]

    def ready(self) -> bool:
        return _exchange(self.address, self.port, b"version\r\n").startswith(b"VERSION")


class EtcdServer(Service):
    """A one-member etcd cluster: clients on C{port}, peers on C{port + 1}."""

    program = "etcd"

    def __init__(self, address: str = ETCD_ADDRESS[0], port: int = ETCD_ADDRESS[1],
                 workdir: str | None = None) -> None:
        super().__init__(address, port, workdir)

    @property
    def uri(self) -> str:
        return f"http://{self.address}:{self.port}"

    def argv(self) -> list[str]:
        client = self.uri
        peer = f"http://{self.address}:{self.port + 1}"
        return [
            "etcd", "--name", "kresolver-test", "--data-dir", os.path.join(self.workdir, "data"),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"kresolver-test={peer}",
            "--initial-cluster-state", "new", "--log-level", "warn",
        ]

    def ready(self) -> bool:
        try:
            conn = http.client.HTTPConnection(self.address, self.port, timeout=0.5)
            conn.request("GET", "/health")
            body = conn.getresponse().read()
            conn.close()
        except OSError:
            return False
        return b'"health":"true"' in body.replace(b" ", b"")
