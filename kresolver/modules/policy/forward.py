"""Forwarding actions: FORWARD, STUB and TLS_FORWARD send the client's question to
configured resolvers (RD=1) instead of iterating from the root.

The action resolves the whole request itself, in the policy ``begin`` layer, and ends
it (DONE): the iterate and cache layers never see a forwarded request.  That keeps
forwarded data out of the shared record cache entirely, which is how answers of one
rule's targets cannot leak to clients of another rule: every distinct target set (kind,
addresses, TLS authentication) has its own **cache scope**, a small answer store of
upstream responses keyed by question and DO/CD, shared only by rules with exactly the
same targets.  The fast path's answer cache may keep the final answers (the rule that
sends a question to a target set is the same for every client unless views are
loaded, and views switch that cache off).

- ``FORWARD(addrs)``: validated here, as kresd does, when the validate module is loaded:
  asked with DO=1 and CD=1 (RFC 6840 5.9: the target's own verdict is not needed), the
  answer is checked by L{kresolver.resolve.validate.Validator.check_forwarded} with the
  configured trust anchors, its DS and DNSKEY sets asked of the same targets (through
  the same cache scope) and its zones' status kept in a trust scope of this target set.
  Secure answers get AD (DO or AD clients), bogus ones SERVFAIL with EDE unless the
  client set CD, and stay in the scope at most L{BOGUS_TTL} seconds.  Without the
  validate module: DO=1, CD=0 (a validating target refuses bogus data), AD cleared.
  DNSSEC records are stripped for DO=0 clients.
- ``STUB(addrs)``: the client's DO and CD are passed through, nothing is validated,
  AD is cleared.
- ``TLS_FORWARD({{addr, pin_sha256=...} | {addr, hostname=..., ca_file=...}, ...})``: as
  FORWARD, validated alike,
  DNS over TLS (RFC 7858, port 853 by default), the certificate authenticated by an
  SPKI pin or by CA + hostname (the hostname is also sent as SNI); there is no fallback
  to clear text: a failed handshake or authentication fails the query.

Up to four targets each; ``ip@port`` or ``ip#port`` choose a port.  Plain targets go
through L{kresolver.resolve.upstream.Upstream} (one per port), whose SRTT selection
picks the fastest; TLS targets keep a small SRTT book of their own.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import secrets
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
from OpenSSL import SSL, crypto
from twisted.internet import defer, protocol, ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.protocols.basic import Int16StringReceiver
from zope.interface import implementer

from kresolver.cache.storage.memory import MemoryStorage
from kresolver.logging import KLogger as Logger
from kresolver.modules.kres import EXTENDED_ERROR
from kresolver.modules.policy.actions import Action
from kresolver.resolve.request import Flags, Request, State
from kresolver.resolve.upstream import Upstream, UpstreamError
from kresolver.resolve.validate import BOGUS_TTL, Outcome, Security, Validator

log = Logger()

__all__ = ["Forward", "ForwardScopes", "TLSTarget", "parse_target", "spki_pin"]

MAX_TARGETS = 4
#: how long a forwarded request may take (as iterate's time limit)
TIME_LIMIT = 4.0
#: the most a cache scope keeps an answer, whatever its TTLs say
MAX_TTL = 86400
_DNSSEC_TYPES = frozenset({dns.rdatatype.RRSIG, dns.rdatatype.NSEC, dns.rdatatype.NSEC3})


def parse_target(text: str, default_port: int) -> tuple[str, int]:
    """``'192.0.2.1'``, ``'192.0.2.1@5353'``, ``'2001:db8::1#853'`` -> (ip, port)."""
    host, port = text.strip(), default_port
    for sep in ("@", "#"):
        if sep in host:
            host, _, port_text = host.rpartition(sep)
            try:
                port = int(port_text)
            except ValueError:
                raise ValueError(f"bad port in forwarding target {text!r}") from None
    try:
        ip = str(ipaddress.ip_address(host))
    except ValueError:
        raise ValueError(f"forwarding target {text!r} is not an IP address") from None
    if not 0 < port < 65536:
        raise ValueError(f"bad port in forwarding target {text!r}")
    return ip, port


def spki_pin(cert: Any) -> str:
    """base64(sha256(SubjectPublicKeyInfo)) of a pyOpenSSL or cryptography certificate."""
    if isinstance(cert, crypto.X509):
        cert = cert.to_cryptography()
    from cryptography.hazmat.primitives import serialization

    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


class ForwardScopes:
    """The cache scopes of forwarding, one per distinct target set, and the upstreams."""

    def __init__(self, engine: Any, size: int = 4 * 1024 * 1024) -> None:
        self.engine = engine
        self.size = size
        self.scopes: dict[tuple[Any, ...], MemoryStorage] = {}
        self.upstreams: dict[int, Upstream] = {}

    def scope(self, key: tuple[Any, ...]) -> MemoryStorage:
        store = self.scopes.get(key)
        if store is None:
            store = self.scopes[key] = MemoryStorage(self.size, self.engine.reactor)
        return store

    def upstream(self, port: int) -> Upstream:
        up = self.upstreams.get(port)
        if up is None:
            up = Upstream(self.engine.reactor, port=port, metrics=self.engine.metrics)
            main = getattr(self.engine, "upstream", None)
            if main is not None:
                up.outgoing_v4, up.outgoing_v6 = main.outgoing_v4, main.outgoing_v6
                up.ipv4, up.ipv6 = main.ipv4, main.ipv6
            self.upstreams[port] = up
        return up

    def clear(self) -> None:
        for store in self.scopes.values():
            store.clear()


def _cache_key(name: dns.name.Name, rdtype: int, rdclass: int, do: bool, cd: bool) -> bytes:
    return name.canonicalize().to_wire() + struct.pack(">HHB", rdtype, rdclass, do << 1 | cd)


def _min_ttl(message: dns.message.Message) -> int:
    ttls = [rrset.ttl for section in (message.answer, message.authority)
            for rrset in section]
    if message.rcode() in (dns.rcode.NXDOMAIN,) or not message.answer:
        # a denial lives as long as its SOA says (RFC 2308)
        for rrset in message.authority:
            if rrset.rdtype == dns.rdatatype.SOA:
                ttls.append(min(rrset.ttl, rrset[0].minimum))
    return min(ttls, default=0)


def _stored(store: MemoryStorage, key: bytes) -> dns.message.Message | None:
    """A response kept in a cache scope (a damaged one is dropped)."""
    wire = store.get(key)
    if wire is None:
        return None
    try:
        return dns.message.from_wire(wire)
    except dns.exception.DNSException:
        store.delete(key)
        return None


def _keep(store: MemoryStorage, key: bytes, message: dns.message.Message, most: int) -> None:
    """Keep a NOERROR or NXDOMAIN response for its TTL, at most C{most} seconds."""
    ttl = _min_ttl(message)
    if message.rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN) and ttl > 0:
        store.set(key, message.to_wire(), min(ttl, most))


def _validator(engine: Any) -> Validator | None:
    """The engine's validator, if the validate module is loaded."""
    modules = engine.modules
    return modules["validate"].validator if "validate" in modules else None


class Forward(Action):
    """One forwarding action (FORWARD, STUB or TLS_FORWARD) and its target set."""

    cacheable = True

    def __init__(self, kind: str, targets: Sequence[Any], scopes: ForwardScopes) -> None:
        if kind not in ("FORWARD", "STUB", "TLS_FORWARD"):
            raise ValueError(kind)
        self.label = kind
        self.kind = kind
        if isinstance(targets, str | Mapping):
            targets = [targets]
        targets = list(targets)
        if not 1 <= len(targets) <= MAX_TARGETS:
            raise ValueError(f"policy.{kind} takes 1 to {MAX_TARGETS} targets, got "
                             f"{len(targets)}")
        self.scopes = scopes
        self.tls: list[TLSTarget] = []
        self.plain: list[tuple[str, int]] = []
        if kind == "TLS_FORWARD":
            self.tls = [TLSTarget.from_config(t) for t in targets]
            key: tuple[Any, ...] = (kind, *(t.key for t in self.tls))
        else:
            self.plain = [parse_target(t, 53) for t in targets]
            ports = {port for _, port in self.plain}
            if len(ports) > 1:
                raise ValueError(f"policy.{kind}: all targets of one action must share a port")
            key = (kind, *sorted(self.plain))
        self.scope_key = key

    def __repr__(self) -> str:
        shown = [f"{ip}@{port}" for ip, port in self.plain] or [repr(t) for t in self.tls]
        return f"policy.{self.kind}({shown!r})"

    # -- the action -------------------------------------------------------------------

    def __call__(self, state: State, req: Request) -> State | defer.Deferred[State]:
        req.flags.set("STUB" if self.kind == "STUB" else "FORWARD", True)
        req.vars["policy.forward"] = self
        stub = self.kind == "STUB"
        validator = None if stub else _validator(req.engine)
        do = req.flags.DNSSEC_WANT if stub else True
        cd = req.flags.DNSSEC_CD if stub else validator is not None
        store = self.scopes.scope(self.scope_key)
        key = _cache_key(req.qname, req.qtype, req.qclass, do, cd)
        if not req.flags.NO_CACHE:
            message = _stored(store, key)
            if message is not None:
                req.cached = True
                return self._judge(req, message, validator)
        req.vars["policy.asked"] = True  # for DEBUG_CACHE_MISS
        d = self._send(req.engine, req.qname, req.qtype, req.qclass, do, cd, req.flags)
        return d.addCallbacks(self._answered, self._failed,
                              callbackArgs=(req, store, key, validator), errbackArgs=(req,))

    def _send(self, engine: Any, name: dns.name.Name, rdtype: int, rdclass: int, do: bool,
              cd: bool, flags: Flags) -> defer.Deferred[dns.message.Message]:
        """Ask the fastest target (RD=1) and fire with its response."""
        deadline = engine.reactor.seconds() + TIME_LIMIT
        if self.tls:
            return self._ask_tls(engine.reactor, name, rdtype, rdclass, do, cd, deadline)
        port = self.plain[0][1]
        return self.scopes.upstream(port).query(
            name, rdtype, [ip for ip, _ in self.plain], rdclass=rdclass,
            dnssec_ok=do, checking_disabled=cd, tcp=flags.TCP,
            randomize_case=not flags.NO_0X20, allow_local=True,
            deadline=deadline, recursion_desired=True,
        ).addCallback(lambda answer: answer.message)

    def _lookup(self, engine: Any, name: dns.name.Name,
                rdtype: int) -> defer.Deferred[dns.message.Message]:
        """The validator's DS and DNSKEY questions: the same targets, the same scope."""
        store = self.scopes.scope(self.scope_key)
        key = _cache_key(name, rdtype, dns.rdataclass.IN, True, True)
        message = _stored(store, key)
        if message is not None:
            return defer.succeed(message)

        def keep(message: dns.message.Message) -> dns.message.Message:
            _keep(store, key, message, MAX_TTL)
            return message

        d = self._send(engine, name, rdtype, dns.rdataclass.IN, True, True, engine.options)
        return d.addCallback(keep)

    def _answered(self, message: dns.message.Message, req: Request, store: MemoryStorage,
                  key: bytes, validator: Validator | None) -> State | defer.Deferred[State]:
        if req.flags.QTRACE:
            req.log(f"[{self.kind}] response:\n{message.to_text()}")

        def keep(state: State) -> State:
            if not req.flags.NO_CACHE:
                outcome: Outcome | None = req.vars.get("validate")
                bogus = outcome is not None and outcome.security == Security.BOGUS
                _keep(store, key, message, BOGUS_TTL if bogus else MAX_TTL)
            return state

        result = self._judge(req, message, validator)
        if isinstance(result, defer.Deferred):
            return result.addCallback(keep)
        return keep(result)

    def _judge(self, req: Request, message: dns.message.Message,
               validator: Validator | None) -> State | defer.Deferred[State]:
        """Give the client the target's answer, validated unless this is STUB."""
        self._fill(req, message)
        if validator is None:
            return State.DONE
        engine = req.engine
        scope = validator.forward_scope(
            self.scope_key, lambda name, rdtype: self._lookup(engine, name, rdtype))
        result = validator.check_forwarded(req, message, scope)
        if isinstance(result, defer.Deferred):
            return result.addCallback(lambda state: state or State.DONE)
        return result or State.DONE

    def _failed(self, failure: Any, req: Request) -> State:
        error = failure.value
        ede = getattr(error, "ede", EXTENDED_ERROR.NETWORK)
        log.debug("{kind} of {name} failed: {error}", kind=self.kind, name=req.qname,
                  error=error)
        return req.fail(ede, f"{self.kind.lower()}: {error}")

    def _fill(self, req: Request, message: dns.message.Message) -> None:
        """Copy the target's answer into the client's: sections, rcode; AD, AA off."""
        answer = req.answer
        keep_dnssec = req.flags.DNSSEC_WANT

        def wanted(rrset: Any) -> bool:
            return keep_dnssec or rrset.rdtype not in _DNSSEC_TYPES or (
                rrset.rdtype == req.qtype)

        answer.answer = [r for r in message.answer if wanted(r)]
        answer.authority = [r for r in message.authority if wanted(r)]
        answer.additional = [r for r in message.additional if wanted(r)]
        answer.set_rcode(message.rcode())
        answer.flags &= ~(dns.flags.AD | dns.flags.AA)

    # -- DNS over TLS -------------------------------------------------------------------

    def _ask_tls(self, reactor: Any, name: dns.name.Name, rdtype: int, rdclass: int, do: bool,
                 cd: bool, deadline: float) -> defer.Deferred:
        query = dns.message.make_query(name, rdtype, rdclass, use_edns=0,
                                       want_dnssec=do, payload=1232)
        query.flags = dns.flags.RD | (dns.flags.CD if cd else 0)
        order = sorted(self.tls, key=lambda t: t.srtt)
        result: defer.Deferred = defer.Deferred()
        errors: list[str] = []

        def attempt(i: int) -> None:
            if i >= len(order):
                result.errback(UpstreamError(
                    "no TLS forwarding target answered: " + "; ".join(errors),
                    EXTENDED_ERROR.NETWORK))
                return
            target = order[i]
            left = deadline - reactor.seconds()
            if left <= 0:
                result.errback(UpstreamError("forwarding time limit reached"))
                return
            query.id = secrets.randbelow(65536)
            started = reactor.seconds()
            d = target.exchange(reactor, query.to_wire(), min(left, 2.0))

            def good(wire: bytes) -> None:
                try:
                    reply = dns.message.from_wire(wire)
                except dns.exception.DNSException as error:
                    bad(error)
                    return
                if reply.id != query.id or reply.question != query.question:
                    bad(ValueError("reply does not match the query"))
                    return
                target.record(reactor.seconds() - started)
                result.callback(reply)

            def bad(error: Any) -> None:
                error = getattr(error, "value", error)
                target.record(None)
                errors.append(f"{target!r}: {error}")
                attempt(i + 1)

            d.addCallbacks(good, bad)

        attempt(0)
        return result


# -- TLS ------------------------------------------------------------------------------------


@implementer(IOpenSSLClientConnectionCreator)
class _PinnedCreator:
    """TLS client connections that accept a certificate only by its SPKI pin."""

    def __init__(self, pins: Iterable[str], hostname: str | None) -> None:
        self.pins = set(pins)
        self.hostname = hostname
        self.seen: str | None = None

    def _verify(self, conn: Any, cert: Any, errno: int, depth: int, ok: int) -> bool:
        if depth != 0:
            return True  # the chain does not matter: the leaf's key is what is pinned
        self.seen = spki_pin(cert)
        return self.seen in self.pins

    def clientConnectionForTLS(self, tlsProtocol: Any) -> Any:
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.set_verify(SSL.VERIFY_PEER, self._verify)
        conn = SSL.Connection(ctx, None)
        conn.set_app_data(tlsProtocol)
        if self.hostname:
            conn.set_tlsext_host_name(self.hostname.encode("idna"))
        conn.set_connect_state()
        return conn


class TLSTarget:
    """One DoT target: address, port, and how its certificate is authenticated."""

    def __init__(self, ip: str, port: int, pins: list[str], hostname: str | None,
                 ca_files: list[str]) -> None:
        if not pins and not hostname:
            raise ValueError(f"TLS_FORWARD target {ip}: give pin_sha256 or hostname "
                             "(with ca_file or the system CAs)")
        for pin in pins:
            try:
                if len(base64.b64decode(pin, validate=True)) == 0:
                    raise ValueError
            except ValueError:
                raise ValueError(f"TLS_FORWARD target {ip}: pin_sha256 {pin!r} is not "
                                 "base64") from None
        self.ip, self.port, self.pins, self.hostname = ip, port, pins, hostname
        self.ca_files = ca_files
        self.key = (ip, port, tuple(sorted(pins)), hostname, tuple(ca_files))
        self.srtt = 0.0
        self._creator = self._make_creator()

    @classmethod
    def from_config(cls, spec: Any) -> TLSTarget:
        """``{'192.0.2.1@853', 'pin_sha256': ...}`` as a dict with key 0 or 'address',
        or a (address, {options}) pair."""
        if isinstance(spec, Mapping):
            options = dict(spec)
            address = options.pop(0, None) or options.pop(1, None) or options.pop("address",
                                                                                    None)
        elif isinstance(spec, list | tuple) and len(spec) == 2 and isinstance(spec[1], Mapping):
            address, options = spec[0], dict(spec[1])
        else:
            raise ValueError(f"TLS_FORWARD target must be {{0: address, 'pin_sha256': ...}} "
                             f"or (address, {{...}}), not {spec!r}")
        if not isinstance(address, str):
            raise ValueError(f"TLS_FORWARD target without an address: {spec!r}")
        ip, port = parse_target(address, 853)
        pins = options.pop("pin_sha256", [])
        pins = [pins] if isinstance(pins, str) else list(pins)
        hostname = options.pop("hostname", None)
        ca = options.pop("ca_file", [])
        ca_files = [ca] if isinstance(ca, str) else list(ca)
        if options:
            raise ValueError(f"TLS_FORWARD: unknown options {sorted(options)}")
        return cls(ip, port, pins, hostname, ca_files)

    def _make_creator(self) -> Any:
        if self.pins:
            return _PinnedCreator(self.pins, self.hostname)
        assert self.hostname is not None
        if self.ca_files:
            pem = b""
            for path in self.ca_files:
                with open(path, "rb") as f:
                    pem += f.read()
            certs = [ssl.Certificate.loadPEM(block + b"-----END CERTIFICATE-----\n")
                     for block in pem.split(b"-----END CERTIFICATE-----")[:-1]]
            if not certs:
                raise ValueError(f"TLS_FORWARD: no certificate in {self.ca_files}")
            trust: Any = ssl.trustRootFromCertificates(certs)
        else:
            trust = ssl.platformTrust()
        return ssl.optionsForClientTLS(self.hostname, trustRoot=trust)

    def record(self, rtt: float | None) -> None:
        """Keep an SRTT (seconds); a failure counts as a slow answer."""
        sample = 5.0 if rtt is None else rtt
        self.srtt = sample if self.srtt == 0 else 0.75 * self.srtt + 0.25 * sample

    def exchange(self, reactor: Any, wire: bytes, timeout: float) -> defer.Deferred[bytes]:
        """One query over a fresh TLS connection; fires after the connection closed."""
        proto = _DoTClient(wire)
        factory = protocol.Factory.forProtocol(lambda: proto)
        from twisted.protocols.tls import TLSMemoryBIOFactory

        tls_factory = TLSMemoryBIOFactory(self._creator, True, factory)
        connector = reactor.connectTCP(self.ip, self.port, _ClientFactory(tls_factory, proto),
                                       timeout=timeout)
        timer = reactor.callLater(timeout, proto.timeout, connector)

        def stop(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            return result

        return proto.done.addBoth(stop)

    def __repr__(self) -> str:
        return f"{self.ip}@{self.port}"


class _ClientFactory(protocol.ClientFactory):
    def __init__(self, tls_factory: Any, proto: _DoTClient) -> None:
        self.tls_factory = tls_factory
        self.proto = proto

    def buildProtocol(self, addr: Any) -> Any:
        return self.tls_factory.buildProtocol(addr)

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        self.proto.finish(reason.value)


class _DoTClient(Int16StringReceiver):
    """Sends one query, takes one reply, closes; C{done} fires once the socket is gone."""

    def __init__(self, wire: bytes) -> None:
        self.wire = wire
        self.reply: bytes | None = None
        self.error: Any = None
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def connectionMade(self) -> None:
        self.sendString(self.wire)

    def stringReceived(self, data: bytes) -> None:
        if self.reply is None:
            self.reply = data
        # Not loseConnection: that waits for the server's close_notify, which some servers
        # (kresd) send only when their idle timer fires; the answer is all we came for.
        self.transport.abortConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self.finish(reason.value if reason is not None and self.reply is None else None)

    def timeout(self, connector: Any) -> None:
        self.error = TimeoutError("no answer over TLS in time")
        if self.transport is not None:
            self.transport.abortConnection()
        else:
            connector.stopConnecting()

    def finish(self, error: Any) -> None:
        if self.done.called:
            return
        if self.reply is not None:
            self.done.callback(self.reply)
        else:
            self.done.errback(self.error or error or ConnectionError("TLS connection lost"))
