"""Real authoritative servers (NSD, Knot DNS) on loopback, serving zones given as text.

A lab hierarchy is a dict ``{address: {origin: zone text}}``. Delegations carry no port,
so every server listens on port 53 of its own 127.0.0.x address, and each address gets its
own server process: one NSD serving parent and child would answer for the child at the
parent's address, and the resolver under test would never see the referral.

Everything here blocks; it is for test setup and benchmarks (see ``daemon``).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Mapping

import dns.exception
import dns.name
import dns.zone

from kresolver.testing.daemon import (
    Daemon,
    DaemonError,
    DaemonOwner,
    StartStop,
    answers_soa,
    require,
)

NSD = "/usr/sbin/nsd"
NSD_CHECKZONE = "/usr/sbin/nsd-checkzone"
KNOTD = "/usr/sbin/knotd"
KZONECHECK = "/usr/bin/kzonecheck"


class ZoneError(ValueError):
    """A zone text the authoritative software refuses; the message has its complaint."""


def canonical_origin(origin: str) -> str:
    """'lab', 'Lab.' and 'lab.' all name the zone 'lab.'; the root is '.'."""
    return dns.name.from_text(origin).canonicalize().to_text()


def zone_file_name(origin: str) -> str:
    origin = canonical_origin(origin)
    return "root.zone" if origin == "." else origin.rstrip(".") + ".zone"


class _AuthoritativeServer(DaemonOwner):
    """What NSD and Knot share: zone files in a work directory, one daemon, SOA readiness."""

    name = "authoritative server"

    def __init__(
        self, address: str, zones: Mapping[str, str], workdir: str, port: int = 53
    ) -> None:
        if not zones:
            raise ValueError(f"no zones given for {address}")
        self.address = address
        self.port = port
        self.zones = {canonical_origin(origin): text for origin, text in zones.items()}
        if len(self.zones) != len(zones):
            raise ValueError(f"duplicate zone origins for {address}: {sorted(zones)}")
        self.workdir = os.path.abspath(workdir)
        self.conf_path = os.path.join(self.workdir, self._conf_name)

    _conf_name = "server.conf"

    def start(self, timeout: float = 10.0) -> None:
        """Write config and zone files, start the server, return once every zone answers."""
        self.launch()
        self.wait_ready(timeout)

    def launch(self) -> None:
        """Write the files and start the process without waiting for it to answer."""
        if self._daemon is not None:
            raise DaemonError(f"{self.name} on {self.address} already started")
        require(self._argv()[0])
        self._claim_address()
        try:
            os.makedirs(self.workdir, exist_ok=True)
            for origin, text in self.zones.items():
                path = os.path.join(self.workdir, zone_file_name(origin))
                with open(path, "w", encoding="utf-8") as f:
                    f.write(text if text.endswith("\n") else text + "\n")
                self._check_zone(origin, path)
            with open(self.conf_path, "w", encoding="utf-8") as f:
                f.write(self._config())
            name = f"{self.name} on {self.address}@{self.port}"
            daemon = Daemon(name, self._argv(), self.log_path, self.workdir)
            daemon.launch()
        except BaseException:
            self._release_address()
            raise
        self._daemon = daemon

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Return once the server answers SOA for each of its zones (see ``Daemon``)."""
        if self._daemon is None:
            raise DaemonError(f"{self.name} on {self.address} was not launched")
        try:
            self._daemon.wait_ready(self._ready, timeout)
        except DaemonError:
            self.stop()
            raise

    def _ready(self) -> bool:
        return all(answers_soa(self.address, self.port, origin) for origin in self.zones)

    def _check_zone(self, origin: str, path: str) -> None:
        argv = self._check_argv(origin, path)
        if not os.path.exists(argv[0]):
            # No checker of the server's own: dnspython's parser still catches typos and a
            # missing SOA before the server would fail slowly at load time.
            try:
                with open(path, encoding="utf-8") as f:
                    dns.zone.from_file(f, origin, relativize=False)
            except dns.exception.DNSException as e:
                raise ZoneError(f"zone {origin} for {self.address}: {e}") from e
            return
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise ZoneError(
                f"{self.name} refuses zone {origin} for {self.address}:\n"
                f"{result.stdout}{result.stderr}"
            )

    def _argv(self) -> list[str]:
        raise NotImplementedError

    def _check_argv(self, origin: str, path: str) -> list[str]:
        raise NotImplementedError

    def _config(self) -> str:
        raise NotImplementedError


class NSDServer(_AuthoritativeServer):
    """NSD in the foreground (``nsd -d``) on one address, serving the given zones.

    Rate limiting is off: NSD's default RRL would drop a benchmark's queries, and every
    query in the lab comes from the same loopback network.
    """

    name = "nsd"
    _conf_name = "nsd.conf"

    def _argv(self) -> list[str]:
        return [NSD, "-d", "-c", self.conf_path]

    def _check_argv(self, origin: str, path: str) -> list[str]:
        return [NSD_CHECKZONE, origin, path]

    def _config(self) -> str:
        w = self.workdir
        lines = [
            "server:",
            f"  ip-address: {self.address}",
            f"  port: {self.port}",
            f"  do-ip{'6' if ':' not in self.address else '4'}: no",
            '  username: ""',
            '  chroot: ""',
            f'  zonesdir: "{w}"',
            f'  pidfile: "{w}/nsd.pid"',
            '  database: ""',
            f'  xfrdfile: "{w}/xfrd.state"',
            f'  zonelistfile: "{w}/zone.list"',
            f'  xfrdir: "{w}"',
            "  zonefiles-write: 0",
            "  server-count: 1",
            "  tcp-count: 256",
            "  verbosity: 1",
            "  hide-version: yes",
            "  rrl-ratelimit: 0",
            "  rrl-whitelist-ratelimit: 0",
            "remote-control:",
            "  control-enable: no",
        ]
        for origin in self.zones:
            lines += ["zone:", f'  name: "{origin}"', f'  zonefile: "{zone_file_name(origin)}"']
        return "\n".join(lines) + "\n"


class KnotServer(_AuthoritativeServer):
    """Knot DNS (``knotd``, foreground by default) with NSD's API, for a second implementation."""

    name = "knotd"
    _conf_name = "knot.conf"

    def _argv(self) -> list[str]:
        return [KNOTD, "-c", self.conf_path]

    def _check_argv(self, origin: str, path: str) -> list[str]:
        return [KZONECHECK, "-o", origin, path]

    def _config(self) -> str:
        w = self.workdir
        lines = [
            "server:",
            f'  rundir: "{w}"',
            f'  pidfile: "{w}/knot.pid"',
            f"  listen: {self.address}@{self.port}",
            "  background-workers: 1",
            "  udp-workers: 1",
            "  tcp-workers: 1",
            "control:",
            f'  listen: "{w}/knot.sock"',
            "log:",
            "  - target: stderr",
            "    any: info",
            "database:",
            f'  storage: "{w}"',
            "template:",
            "  - id: default",
            f'    storage: "{w}"',
            "    zonefile-sync: -1",
            "    zonefile-load: whole",
            "    journal-content: none",
            "zone:",
        ]
        for origin in self.zones:
            lines += [f'  - domain: "{origin}"', f'    file: "{zone_file_name(origin)}"']
        return "\n".join(lines) + "\n"


ServerFactory = Callable[[str, Mapping[str, str], str, int], _AuthoritativeServer]


class NSDHierarchy(StartStop):
    """One authoritative server process per address, started and stopped together.

    ``servers`` maps an address to the zones it serves, e.g. the root on 127.0.30.1 and
    ``lab.`` on 127.0.30.2. ``stop_server`` kills one of them mid-test to make a zone dead.
    ``server_factory`` swaps NSD for ``KnotServer``.
    """

    def __init__(
        self,
        servers: Mapping[str, Mapping[str, str]],
        workdir: str,
        port: int = 53,
        server_factory: ServerFactory = NSDServer,
    ) -> None:
        self.workdir = os.path.abspath(workdir)
        self.servers: dict[str, _AuthoritativeServer] = {
            address: server_factory(address, zones, os.path.join(self.workdir, address), port)
            for address, zones in servers.items()
        }

    def start(self, timeout: float = 10.0) -> None:
        """Start every server; if one fails, stop those already started and re-raise."""
        try:
            # Launch all, then wait: the servers load their zones in parallel. Claiming the
            # addresses in one order keeps two test runs from each holding what the other
            # waits for.
            for _, server in sorted(self.servers.items()):
                server.launch()
            for server in self.servers.values():
                server.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        errors: list[str] = []
        for server in self.servers.values():
            try:
                server.stop()
            except (OSError, DaemonError) as e:
                errors.append(f"{server.address}: {e}")
        if errors:
            raise DaemonError("could not stop: " + "; ".join(errors))

    def stop_server(self, address: str) -> None:
        """Stop the server on one address (the others keep serving)."""
        try:
            server = self.servers[address]
        except KeyError:
            raise KeyError(f"no server on {address}; have {sorted(self.servers)}") from None
        server.stop()

    def __getitem__(self, address: str) -> _AuthoritativeServer:
        return self.servers[address]
