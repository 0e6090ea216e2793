"""What the core tests share: synthetic answering modules, drop-in installation, clients.

The synthetic module answers names under C{synth.test.} itself, so the engine, the
transports and the fuzzer can be tested with no recursion and no network beyond
loopback.  The first label chooses the behaviour (see L{Synth.begin}).

Modules reach an engine the way third-party ones do: a drop-in file in a
C{kresolver/plugins} directory on C{sys.path} (L{install_dropins}).
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import sys
import tempfile
from typing import Any

import dns.message
import dns.name
import dns.rcode
import dns.rrset
from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

import kresolver.plugins
from kresolver.module import Module
from kresolver.resolve.request import Request, State

SYNTH = dns.name.from_text("synth.test.")
#: how long the C{slow} names wait before they are answered (real seconds)
SLOW_DELAY = 0.4


class SynthApi:
    """What a config sees as ``synth``: a count of requests and the TTL it answers with."""

    def __init__(self) -> None:
        self.ttl = 300
        self.seen: list[str] = []


class Synth(Module):
    """Answers C{*.synth.test.} from its begin layer; anything else passes through.

    First label: C{slow} (answered after L{SLOW_DELAY} seconds, through a Deferred),
    C{deferred} (an already fired Deferred), C{fail} (the layer raises), C{big} (20 TXT
    records, about 2 kB), C{nx} (NXDOMAIN with an SOA); any other name gets one A record.
    """

    name = "synth"
    description = "synthetic answers for tests"

    def __init__(self, engine: Any) -> None:
        super().__init__(engine)
        self.api = SynthApi()

    def configure(self, value: Any) -> None:
        if not isinstance(value, dict) or set(value) - {"ttl"}:
            raise ValueError(f"synth takes {{'ttl': seconds}}, not {value!r}")
        self.api.ttl = int(value.get("ttl", self.api.ttl))

    def begin(self, req: Request) -> State | Deferred[State] | None:
        if not req.qname.is_subdomain(SYNTH) or req.qname == SYNTH:
            return None
        self.api.seen.append(req.qname.to_text().lower())
        label = req.qname.labels[0].lower()
        if label == b"fail":
            raise RuntimeError("synthetic layer failure")
        if label == b"slow":
            waiting: Deferred[State] = Deferred()
            self.engine.reactor.callLater(SLOW_DELAY, lambda: waiting.callback(self.fill(req)))
            return waiting
        if label == b"deferred":
            return succeed(self.fill(req))
        return self.fill(req)

    def fill(self, req: Request) -> State:
        ttl = self.api.ttl
        label = req.qname.labels[0].lower()
        if label == b"nx":
            req.set_rcode(dns.rcode.NXDOMAIN)
            req.answer.authority.append(dns.rrset.from_text(
                SYNTH, ttl, "IN", "SOA", "ns.synth.test. host.synth.test. 1 2 3 4 60"))
        elif label == b"big":
            texts = [f'"{i:02d}{"x" * 90}"' for i in range(20)]
            req.answer.answer.append(dns.rrset.from_text(req.qname, ttl, "IN", "TXT", *texts))
        else:
            req.answer.answer.append(dns.rrset.from_text(req.qname, ttl, "IN", "A", "127.0.0.1"))
        return State.DONE


class Marker(Module):
    """Records its name in C{req.vars['order']} from its begin layer: shows layer order."""

    def begin(self, req: Request) -> None:
        req.vars.setdefault("order", []).append(self.name)


def marker(name: str) -> type[Marker]:
    return type(f"Marker_{name}", (Marker,), {"name": name})


def install_dropins(case: unittest.TestCase, files: dict[str, str]) -> str:
    """Write C{files} ({module name: source}) as kresolver/plugins drop-ins in a temporary
    directory put on C{sys.path}; everything is undone when C{case} ends.  Returns the
    directory.
    """
    top = tempfile.mkdtemp(prefix="kresolver-dropins-")
    plugins = os.path.join(top, "kresolver", "plugins")
    os.makedirs(plugins)
    for name, source in files.items():
        with open(os.path.join(plugins, f"{name}.py"), "w") as f:
            f.write(source)
    saved_path = list(kresolver.plugins.__path__)
    sys.path.append(top)

    def restore() -> None:
        sys.path.remove(top)
        kresolver.plugins.__path__[:] = saved_path
        for name in files:
            sys.modules.pop(f"kresolver.plugins.{name}", None)
        for root, dirs, names in os.walk(top, topdown=False):
            for n in names:
                os.unlink(os.path.join(root, n))
            for d in dirs:
                os.rmdir(os.path.join(root, d))
        os.rmdir(top)

    case.addCleanup(restore)
    return top


SYNTH_DROPIN = (
    "from kresolver.module import ModulePlugin\n"
    "from tests.support import Synth\n"
    "synth = ModulePlugin(Synth)\n"
)


# -- blocking clients (run them with deferToThread while the reactor serves) ----------------


def udp_exchange(server: tuple[str, int], data: bytes, timeout: float = 2.0,
                 source: str = "127.0.40.250") -> bytes | None:
    """Send one datagram, return the reply or None if nothing came within C{timeout}."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        s.settimeout(timeout)
        s.sendto(data, server)
        try:
            return s.recv(65535)
        except TimeoutError:
            return None


def tcp_connect(server: tuple[str, int], timeout: float = 3.0) -> socket.socket:
    s = socket.create_connection(server, timeout=timeout)
    return s


def tcp_read_message(s: socket.socket) -> bytes | None:
    """One length-prefixed message, or None when the server closed the connection."""
    head = _recv_exactly(s, 2)
    if head is None:
        return None
    (size,) = struct.unpack(">H", head)
    return _recv_exactly(s, size)


def _recv_exactly(s: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        try:
            chunk = s.recv(size - len(data))
        except ConnectionResetError:
            return None
        if not chunk:
            return None
        data += chunk
    return data


def frame(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


def tcp_exchange(server: tuple[str, int], data: bytes, timeout: float = 3.0) -> bytes | None:
    with tcp_connect(server, timeout) as s:
        s.sendall(frame(data))
        return tcp_read_message(s)


def query(name: str, rdtype: str = "A", **kwargs: Any) -> dns.message.Message:
    return dns.message.make_query(name, rdtype, **kwargs)


def lab_kresd(case: unittest.TestCase, address: str, root_hints: dict[str, list[str]],
              trust_anchor: str | None = None, extra_config: str = "") -> Any:
    """kresd on C{address} port 53, resolving a lab from C{root_hints} (not yet started;
    stopped and cleaned up when C{case} ends).  Skips C{case} when kresd is missing."""
    from kresolver.testing import reference

    if not os.path.exists(reference.KRESD):
        raise unittest.SkipTest("kresd is not installed")
    workdir = tempfile.mkdtemp(prefix="kresolver-kresd-")
    case.addCleanup(shutil.rmtree, workdir, True)
    kresd = reference.KresdReference(
        address, 53, root_hints, workdir, outgoing_v4=address,
        trust_anchor=trust_anchor, extra_config=extra_config,
    )
    case.addCleanup(deferToThread, kresd.stop)
    return kresd
