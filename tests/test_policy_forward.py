"""FORWARD, STUB and TLS_FORWARD against loopback resolvers: RD, DO/CD, cache scopes,
failures, and DNS over TLS with pinned and CA+hostname authentication."""

from __future__ import annotations

import datetime
import os
import tempfile
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import defer, protocol, reactor, ssl
from twisted.protocols.basic import Int16StringReceiver

from kresolver.modules.policy.forward import spki_pin
from kresolver.testing.lab import Lab
from tests.policy_support import EngineCase, ask_from, ede_codes, flags, rcode

ZONE = """\
$TTL 300
@ SOA ns.fwd.example. host.fwd.example. 1 3600 600 86400 60
@ NS ns.fwd.example.
ns A 127.0.61.1
www A 192.0.2.10
"""


class FakeResolver(protocol.DatagramProtocol):
    """A 'resolver' on UDP port 53 of one address: answers A with C{address}, records the
    flags of what it was asked."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.seen: list[dns.message.Message] = []

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        query = dns.message.from_wire(data)
        self.seen.append(query)
        reply = dns.message.make_response(query)
        reply.flags |= dns.flags.RA | dns.flags.AD
        q = query.question[0]
        if q.name.labels[0] == b"nx":
            reply.set_rcode(dns.rcode.NXDOMAIN)
            reply.authority.append(dns.rrset.from_text(
                "example.", 300, "IN", "SOA", "ns.example. h.example. 1 2 3 4 60"))
        else:
            reply.answer.append(dns.rrset.from_text(q.name, 120, "IN", "A", self.address))
        self.transport.write(reply.to_wire(), addr)


class ForwardCase(EngineCase):
    modules = ("view", "policy", "answerer")

    def resolver(self, ip: str, answer: str) -> FakeResolver:
        fake = FakeResolver(answer)
        port = reactor.listenUDP(53, fake, interface=ip)
        self.addCleanup(port.stopListening)
        return fake


class ForwardTests(ForwardCase):
    @defer.inlineCallbacks
    def test_forward_to_lab_server(self):
        lab = Lab(base="127.0.61.")
        lab.add_server("ns.fwd.example.", {"fwd.example.": ZONE})
        lab.start()
        self.addCleanup(lab.stop)
        self.config("policy.add(policy.suffix(policy.FORWARD('127.0.61.1'), "
                    "['fwd.example']))")
        answer = yield self.ask("www.fwd.example.")
        self.assertEqual(answer.answer[0][0].to_text(), "192.0.2.10")
        self.assertEqual(flags(answer) & {"AA", "AD", "RA"}, {"RA"})
        self.assertEqual(self.answerer.seen, [])  # not resolved by anyone else
        self.assertEqual(rcode((yield self.ask("nope.fwd.example."))), "NXDOMAIN")

    @defer.inlineCallbacks
    def test_forward_sets_rd_and_cd_off_and_caches_in_scope(self):
        fake = self.resolver("127.0.61.2", "192.0.2.2")
        self.config("rule = policy.add(policy.all(policy.FORWARD(['127.0.61.2'])))")
        answer = yield self.ask("a.example.", flags=dns.flags.CD, want_dnssec=False)
        self.assertEqual(answer.answer[0][0].to_text(), "192.0.2.2")
        sent = fake.seen[0]
        self.assertTrue(sent.flags & dns.flags.RD)
        self.assertFalse(sent.flags & dns.flags.CD)  # FORWARD: the target validates
        self.assertTrue(sent.ednsflags & dns.flags.DO)
        self.assertNotIn("AD", flags(answer))
        yield self.ask("a.example.")
        self.assertEqual(len(fake.seen), 1)  # the scope's cache answered

    @defer.inlineCallbacks
    def test_stub_passes_do_and_cd(self):
        fake = self.resolver("127.0.61.3", "192.0.2.3")
        self.config("policy.add(policy.all(policy.STUB('127.0.61.3')))")
        yield self.ask("b.example.", flags=dns.flags.CD, want_dnssec=True)
        sent = fake.seen[0]
        self.assertTrue(sent.flags & dns.flags.RD)
        self.assertTrue(sent.flags & dns.flags.CD)
        self.assertTrue(sent.ednsflags & dns.flags.DO)
        yield self.ask("c.example.", want_dnssec=False)
        self.assertFalse(fake.seen[1].flags & dns.flags.CD)
        self.assertFalse(fake.seen[1].ednsflags & dns.flags.DO)

    @defer.inlineCallbacks
    def test_target_sets_do_not_share_answers(self):
        one = self.resolver("127.0.61.4", "192.0.2.4")
        two = self.resolver("127.0.61.5", "192.0.2.5")
        self.config(
            "view.addr('127.0.62.0/24', policy.all(policy.FORWARD('127.0.61.4')))\n"
            "view.addr('127.0.63.0/24', policy.all(policy.STUB('127.0.61.5')))\n"
        )
        query = dns.message.make_query("same.example.", "A").to_wire()
        for _ in range(2):
            for source, expected in (("127.0.62.1", "192.0.2.4"), ("127.0.63.1", "192.0.2.5")):
                wire = yield ask_from(source, query, (self.address, self.port))
                answer = dns.message.from_wire(wire)
                self.assertEqual(answer.answer[0][0].to_text(), expected)
        self.assertEqual((len(one.seen), len(two.seen)), (1, 1))

    @defer.inlineCallbacks
    def test_dead_target_is_servfail_with_ede(self):
        self.config("policy.add(policy.all(policy.STUB('127.0.61.99')))")
        answer = yield self.ask("dead.example.", timeout=6)
        self.assertEqual(rcode(answer), "SERVFAIL")
        self.assertTrue(ede_codes(answer))

    @defer.inlineCallbacks
    def test_dead_target_among_several_is_avoided(self):
        alive = self.resolver("127.0.61.7", "192.0.2.7")
        self.config("policy.add(policy.all(policy.FORWARD(['127.0.61.97', '127.0.61.7'])))")
        for i in range(4):
            answer = yield self.ask(f"n{i}.example.", timeout=6)
            self.assertEqual(answer.answer[0][0].to_text(), "192.0.2.7")
        self.assertEqual(len(alive.seen), 4)

    def test_bad_targets(self):
        policy = self.policy
        self.assertRaises(ValueError, policy.FORWARD, ["127.0.0.1"] * 5)
        self.assertRaises(ValueError, policy.FORWARD, "not-an-ip")
        self.assertRaises(ValueError, policy.STUB, ["127.0.0.1@53", "127.0.0.2@5353"])
        self.assertRaises(ValueError, policy.TLS_FORWARD, [{"address": "127.0.0.1"}])
        self.assertRaises(ValueError, policy.TLS_FORWARD,
                          [{"address": "127.0.0.1", "pin_sha256": "!!"}])


# -- DNS over TLS ------------------------------------------------------------------------


def self_signed(hostname: str) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


class _DoTServer(Int16StringReceiver):
    def stringReceived(self, data: bytes) -> None:
        self.factory.lab_server.handle(data, "tcp", self.sendString)


class DoTTests(ForwardCase):
    HOST = "dot.test.example"

    def setUp(self) -> None:
        super().setUp()
        cert_pem, key_pem = self_signed(self.HOST)
        self.dir = tempfile.mkdtemp(prefix="dot-test-")
        self.ca = os.path.join(self.dir, "ca.pem")
        with open(self.ca, "wb") as f:
            f.write(cert_pem)
        self.addCleanup(lambda: (os.unlink(self.ca), os.rmdir(self.dir)))
        cert = ssl.PrivateCertificate.loadPEM(cert_pem + key_pem)
        self.pin = spki_pin(cert.original)
        self.sni: list[bytes | None] = []
        options = cert.options()
        context = options.getContext()
        context.set_tlsext_servername_callback(
            lambda conn: self.sni.append(conn.get_servername()))
        lab = Lab(base="127.0.61.")
        server = lab.add_server("ns.fwd.example.", {"fwd.example.": ZONE},
                                address="127.0.61.10")
        factory = protocol.Factory.forProtocol(_DoTServer)
        factory.lab_server = server
        port = reactor.listenSSL(0, factory, options, interface="127.0.61.10")
        self.addCleanup(port.stopListening)
        self.dot = f"127.0.61.10@{port.getHost().port}"
        # clear text on port 53 of the same address: it must never be asked
        self.clear = self.resolver("127.0.61.10", "192.0.2.66")

    @defer.inlineCallbacks
    def test_pinned(self):
        self.config(f"policy.add(policy.all(policy.TLS_FORWARD("
                    f"[{{'address': {self.dot!r}, 'pin_sha256': {self.pin!r}}}])))")
        answer = yield self.ask("www.fwd.example.")
        self.assertEqual(answer.answer[0][0].to_text(), "192.0.2.10")
        self.assertEqual(self.clear.seen, [])

    @defer.inlineCallbacks
    def test_wrong_pin_fails_without_fallback(self):
        wrong = "YQ=="
        self.config(f"policy.add(policy.all(policy.TLS_FORWARD("
                    f"[{{'address': {self.dot!r}, 'pin_sha256': [{wrong!r}]}}])))")
        answer = yield self.ask("www.fwd.example.", timeout=5)
        self.assertEqual(rcode(answer), "SERVFAIL")
        self.assertEqual(self.clear.seen, [])

    @defer.inlineCallbacks
    def test_ca_and_hostname_with_sni(self):
        self.config(f"policy.add(policy.all(policy.TLS_FORWARD([({self.dot!r}, "
                    f"{{'hostname': {self.HOST!r}, 'ca_file': {self.ca!r}}})])))")
        answer = yield self.ask("www.fwd.example.")
        self.assertEqual(answer.answer[0][0].to_text(), "192.0.2.10")
        self.assertIn(self.HOST.encode(), self.sni)

    @defer.inlineCallbacks
    def test_hostname_mismatch_fails(self):
        self.config(f"policy.add(policy.all(policy.TLS_FORWARD([({self.dot!r}, "
                    f"{{'hostname': 'other.example', 'ca_file': {self.ca!r}}})])))")
        answer = yield self.ask("www.fwd.example.", timeout=5)
        self.assertEqual(rcode(answer), "SERVFAIL")
        self.assertEqual(self.clear.seen, [])


