"""The standard lab hierarchy: zone texts, server addresses, and what each name shows.

One hierarchy serves the in-process lab (L{kresolver.testing.lab.Lab.standard}), the
``twistd -n kresolver --lab`` demo, and the tests that run NSD or Knot on the same zones,
so resolvers can be compared name by name.  TLDs are ``lab.`` and ``kres.``: the
special-use ones (``test.``, ``example.``, ``invalid.``, ``localhost.``, ``local.``,
``onion.``) are answered locally by resolvers and would prove nothing.

Servers (C{base} is ``127.0.10.`` by default; every server listens on port 53 of its own
address, because delegations carry no port)::

    base+1  a.root-servers.lab.  .
    base+2  ns1.nic.lab.         lab.
    base+3  ns1.nic.kres.        kres.
    base+4  ns1.alpha.lab.       alpha.lab.
    base+5  ns1.beta.kres.       beta.kres.  gamma.lab.  (gamma.lab. is delegated glueless)
    base+6  ns1.dead.lab.        nothing listens: dead.lab. has no working server
    base+7  ns1.twoserv.kres.    twoserv.kres.
    base+8  ns2.twoserv.kres.    other.kres.  (and lame for twoserv.kres.: REFUSED)

What a recursive resolver should answer (L{CASES} holds this table as data; answers list
the final answer section as "owner TYPE rdata", without TTLs)::

    name                        type  rcode     answer                      shows
    www.alpha.lab.              A     NOERROR   192.0.2.1                   glue delegation
    www.alpha.lab.              AAAA  NOERROR   2001:db8::1                 AAAA
    alpha.lab.                  MX    NOERROR   10 mail.alpha.lab.          MX at an apex
    mail.alpha.lab.             A     NOERROR   192.0.2.2                   MX target
    txt.alpha.lab.              TXT   NOERROR   "kresolver lab"             TXT
    alias.alpha.lab.            A     NOERROR   CNAME www + A               in-zone CNAME
    nowhere.alpha.lab.          A     NXDOMAIN  -                           NXDOMAIN
    txt.alpha.lab.              A     NOERROR   - (NODATA)                  NODATA
    ent.alpha.lab.              A     NOERROR   - (NODATA)                  empty non-terminal
    host.ent.alpha.lab.         A     NOERROR   192.0.2.3                   below an ENT
    anything.wild.alpha.lab.    A     NOERROR   192.0.2.50                  wildcard
    anything.wild.alpha.lab.    AAAA  NOERROR   - (NODATA)                  wildcard NODATA
    exact.wild.alpha.lab.       A     NOERROR   192.0.2.51                  name beside a wildcard
    chain.alpha.lab.            A     NOERROR   3 CNAMEs + A 192.0.2.4      CNAME chain over zones
    www.dname.alpha.lab.        A     NOERROR   DNAME + CNAME + 192.0.2.10  DNAME to beta.kres.
    big.alpha.lab.              TXT   NOERROR   40 TXT (> 1232 bytes)       TC, retry over TCP
    www.beta.kres.              A     NOERROR   192.0.2.10                  second TLD
    www.gamma.lab.              A     NOERROR   192.0.2.20                  glueless delegation
    www.dead.lab.               A     SERVFAIL  -                           dead server
    www.twoserv.kres.           A     NOERROR   192.0.2.30                  one lame server of two
    www.other.kres.             A     NOERROR   192.0.2.31                  sibling glue
    nowhere.lab.                A     NXDOMAIN  -                           NXDOMAIN in a TLD
    nowhere.                    A     NXDOMAIN  -                           NXDOMAIN at the root
    a.root-servers.lab.         A     NOERROR   base+1                      root server's address

TTLs are 300..3600 and every SOA minimum is 300.

L{sign_lab} signs any of these zones (ECDSAP256SHA256, NSEC, DS in the parents) and gives
the root's DS as the trust anchor, so the same hierarchy serves the DNSSEC tests: with every
zone signed each answer above validates; leave a zone out and it is an insecure delegation.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import dns.dnssec
import dns.name
import dns.rdatatype
import dns.zone
from cryptography.hazmat.primitives.asymmetric import ec

#: SOA timers shared by every lab zone: refresh, retry, expire, minimum (negative TTL).
_SOA_TIMERS = "7200 900 1209600 300"


@dataclass(frozen=True)
class ServerSpec:
    """One authoritative server of the lab: its NS name, its address, its zones."""

    name: str
    address: str
    zones: dict[str, str]  # origin -> zone text (absolute names, $TTL set)


@dataclass(frozen=True)
class Case:
    """One question a recursive resolver is asked in the lab, and the answer it must give."""

    qname: str
    qtype: str
    rcode: str
    answer: tuple[str, ...]  # "owner TYPE rdata", sorted; empty for NODATA and errors
    shows: str


@dataclass(frozen=True)
class LabSpec:
    """A whole hierarchy: the servers to start, and the addresses that must stay silent."""

    servers: dict[str, ServerSpec]
    dead: dict[str, str] = field(default_factory=dict)  # NS name -> address, never served
    cases: tuple[Case, ...] = ()

    def by_address(self) -> dict[str, dict[str, str]]:
        """{address: {origin: zone text}}: the shape L{kresolver.testing.nsd} serves."""
        return {s.address: dict(s.zones) for s in self.servers.values()}

    def root_hints(self) -> dict[str, list[str]]:
        """{NS name: [address]} for the root's servers, the form ``hints.root()`` takes."""
        return {s.name: [s.address] for s in self.servers.values() if "." in s.zones}


def _zone(origin: str, ns: list[str], body: str, ttl: int = 3600) -> str:
    """Zone text with the SOA and apex NS every zone needs, then C{body}."""
    lines = [
        f"$ORIGIN {origin}",
        f"$TTL {ttl}",
        f"@ 3600 IN SOA {ns[0]} hostmaster.{origin if origin != '.' else ''} 1 {_SOA_TIMERS}",
    ]
    lines += [f"@ 3600 IN NS {n}" for n in ns]
    return "\n".join(lines) + "\n" + body.strip() + "\n"


def _big_txt(owner: str, count: int = 40) -> str:
    # 40 strings of 40 bytes: ~2 KB, more than any UDP payload the lab servers send.
    return "\n".join(f'{owner} 300 IN TXT "big record {i:02d} {"x" * 26}"' for i in range(count))


def standard_lab(base: str = "127.0.10.") -> LabSpec:
    """The standard hierarchy with its servers on C{base}1 .. C{base}8."""

    def a(n: int) -> str:
        return f"{base}{n}"

    root = _zone(
        ".",
        ["a.root-servers.lab."],
        f"""
lab. 3600 IN NS ns1.nic.lab.
kres. 3600 IN NS ns1.nic.kres.
a.root-servers.lab. 3600 IN A {a(1)}
ns1.nic.lab. 3600 IN A {a(2)}
ns1.nic.kres. 3600 IN A {a(3)}
""",
    )
    lab = _zone(
        "lab.",
        ["ns1.nic.lab."],
        f"""
a.root-servers.lab. 3600 IN A {a(1)}
ns1.nic.lab. 3600 IN A {a(2)}
alpha.lab. 3600 IN NS ns1.alpha.lab.
ns1.alpha.lab. 3600 IN A {a(4)}
gamma.lab. 3600 IN NS ns1.beta.kres.
dead.lab. 3600 IN NS ns1.dead.lab.
ns1.dead.lab. 3600 IN A {a(6)}
""",
    )
    kres = _zone(
        "kres.",
        ["ns1.nic.kres."],
        f"""
ns1.nic.kres. 3600 IN A {a(3)}
beta.kres. 3600 IN NS ns1.beta.kres.
ns1.beta.kres. 3600 IN A {a(5)}
twoserv.kres. 3600 IN NS ns1.twoserv.kres.
twoserv.kres. 3600 IN NS ns2.twoserv.kres.
ns1.twoserv.kres. 3600 IN A {a(7)}
ns2.twoserv.kres. 3600 IN A {a(8)}
other.kres. 3600 IN NS ns2.twoserv.kres.
""",
    )
    alpha = _zone(
        "alpha.lab.",
        ["ns1.alpha.lab."],
        f"""
alpha.lab. 3600 IN MX 10 mail.alpha.lab.
ns1.alpha.lab. 3600 IN A {a(4)}
www.alpha.lab. 300 IN A 192.0.2.1
www.alpha.lab. 300 IN AAAA 2001:db8::1
mail.alpha.lab. 300 IN A 192.0.2.2
txt.alpha.lab. 300 IN TXT "kresolver lab"
alias.alpha.lab. 300 IN CNAME www.alpha.lab.
host.ent.alpha.lab. 300 IN A 192.0.2.3
*.wild.alpha.lab. 300 IN A 192.0.2.50
*.wild.alpha.lab. 300 IN TXT "wildcard"
exact.wild.alpha.lab. 300 IN A 192.0.2.51
chain.alpha.lab. 300 IN CNAME link2.beta.kres.
end.alpha.lab. 300 IN A 192.0.2.4
dname.alpha.lab. 300 IN DNAME beta.kres.
{_big_txt("big.alpha.lab.")}
""",
    )
    beta = _zone(
        "beta.kres.",
        ["ns1.beta.kres."],
        f"""
ns1.beta.kres. 3600 IN A {a(5)}
www.beta.kres. 300 IN A 192.0.2.10
link2.beta.kres. 300 IN CNAME link3.gamma.lab.
""",
    )
    gamma = _zone(
        "gamma.lab.",
        ["ns1.beta.kres."],
        """
www.gamma.lab. 300 IN A 192.0.2.20
link3.gamma.lab. 300 IN CNAME end.alpha.lab.
""",
    )
    twoserv = _zone(
        "twoserv.kres.",
        ["ns1.twoserv.kres.", "ns2.twoserv.kres."],
        f"""
ns1.twoserv.kres. 3600 IN A {a(7)}
ns2.twoserv.kres. 3600 IN A {a(8)}
www.twoserv.kres. 300 IN A 192.0.2.30
""",
    )
    other = _zone(
        "other.kres.",
        ["ns2.twoserv.kres."],
        """
www.other.kres. 300 IN A 192.0.2.31
""",
    )
    servers = [
        ServerSpec("a.root-servers.lab.", a(1), {".": root}),
        ServerSpec("ns1.nic.lab.", a(2), {"lab.": lab}),
        ServerSpec("ns1.nic.kres.", a(3), {"kres.": kres}),
        ServerSpec("ns1.alpha.lab.", a(4), {"alpha.lab.": alpha}),
        ServerSpec("ns1.beta.kres.", a(5), {"beta.kres.": beta, "gamma.lab.": gamma}),
        ServerSpec("ns1.twoserv.kres.", a(7), {"twoserv.kres.": twoserv}),
        ServerSpec("ns2.twoserv.kres.", a(8), {"other.kres.": other}),
    ]
    return LabSpec(
        servers={s.name: s for s in servers},
        dead={"ns1.dead.lab.": a(6)},
        cases=_cases(base),
    )


def _cases(base: str) -> tuple[Case, ...]:
    def case(qname: str, qtype: str, rcode: str, shows: str, *answer: str) -> Case:
        return Case(qname, qtype, rcode, tuple(sorted(answer)), shows)

    big = tuple(f'big.alpha.lab. TXT "big record {i:02d} {"x" * 26}"' for i in range(40))
    return (
        case("www.alpha.lab.", "A", "NOERROR", "glue delegation", "www.alpha.lab. A 192.0.2.1"),
        case("www.alpha.lab.", "AAAA", "NOERROR", "AAAA", "www.alpha.lab. AAAA 2001:db8::1"),
        case("alpha.lab.", "MX", "NOERROR", "MX at an apex", "alpha.lab. MX 10 mail.alpha.lab."),
        case("mail.alpha.lab.", "A", "NOERROR", "MX target", "mail.alpha.lab. A 192.0.2.2"),
        case("txt.alpha.lab.", "TXT", "NOERROR", "TXT", 'txt.alpha.lab. TXT "kresolver lab"'),
        case(
            "alias.alpha.lab.",
            "A",
            "NOERROR",
            "in-zone CNAME",
            "alias.alpha.lab. CNAME www.alpha.lab.",
            "www.alpha.lab. A 192.0.2.1",
        ),
        case("nowhere.alpha.lab.", "A", "NXDOMAIN", "NXDOMAIN"),
        case("txt.alpha.lab.", "A", "NOERROR", "NODATA"),
        case("ent.alpha.lab.", "A", "NOERROR", "empty non-terminal"),
        case(
            "host.ent.alpha.lab.", "A", "NOERROR", "below an ENT", "host.ent.alpha.lab. A 192.0.2.3"
        ),
        case(
            "anything.wild.alpha.lab.",
            "A",
            "NOERROR",
            "wildcard",
            "anything.wild.alpha.lab. A 192.0.2.50",
        ),
        case("anything.wild.alpha.lab.", "AAAA", "NOERROR", "wildcard NODATA"),
        case(
            "exact.wild.alpha.lab.",
            "A",
            "NOERROR",
            "name beside a wildcard",
            "exact.wild.alpha.lab. A 192.0.2.51",
        ),
        case(
            "chain.alpha.lab.",
            "A",
            "NOERROR",
            "CNAME chain over zones",
            "chain.alpha.lab. CNAME link2.beta.kres.",
            "link2.beta.kres. CNAME link3.gamma.lab.",
            "link3.gamma.lab. CNAME end.alpha.lab.",
            "end.alpha.lab. A 192.0.2.4",
        ),
        case(
            "www.dname.alpha.lab.",
            "A",
            "NOERROR",
            "DNAME to beta.kres.",
            "dname.alpha.lab. DNAME beta.kres.",
            "www.dname.alpha.lab. CNAME www.beta.kres.",
            "www.beta.kres. A 192.0.2.10",
        ),
        Case("big.alpha.lab.", "TXT", "NOERROR", tuple(sorted(big)), "TC, retry over TCP"),
        case("www.beta.kres.", "A", "NOERROR", "second TLD", "www.beta.kres. A 192.0.2.10"),
        case(
            "www.gamma.lab.", "A", "NOERROR", "glueless delegation", "www.gamma.lab. A 192.0.2.20"
        ),
        case("www.dead.lab.", "A", "SERVFAIL", "dead server"),
        case(
            "www.twoserv.kres.",
            "A",
            "NOERROR",
            "one lame server of two",
            "www.twoserv.kres. A 192.0.2.30",
        ),
        case("www.other.kres.", "A", "NOERROR", "sibling glue", "www.other.kres. A 192.0.2.31"),
        case("nowhere.lab.", "A", "NXDOMAIN", "NXDOMAIN in a TLD"),
        case("nowhere.", "A", "NXDOMAIN", "NXDOMAIN at the root"),
        case(
            "a.root-servers.lab.",
            "A",
            "NOERROR",
            "root server's address",
            f"a.root-servers.lab. A {base}1",
        ),
    )


@dataclass(frozen=True)
class SignedLab:
    """A lab hierarchy with some zones signed, and what a validator needs to trust it."""

    spec: LabSpec  # the same servers, signed zones replaced by their signed text
    keys: dict[str, tuple[Any, Any]]  # origin -> (private key, DNSKEY rdata), one CSK each
    trust_anchor: str  # the root's DS in zone-file form ("" if the root is unsigned)

    def ds(self, origin: str) -> str:
        """The DS record of a signed zone, in zone-file form."""
        _, dnskey = self.keys[dns.name.from_text(origin).to_text()]
        ds = dns.dnssec.make_ds(origin, dnskey, "SHA256")
        return f"{dns.name.from_text(origin)} 3600 IN DS {ds.to_text()}"


def sign_lab(
    spec: LabSpec,
    origins: Iterable[str] | None = None,
    inception: datetime.datetime | None = None,
    expiration: datetime.datetime | None = None,
) -> SignedLab:
    """Sign the zones C{origins} of C{spec} (all of them by default).

    Children are signed first so that each signed parent carries their DS; a signed
    parent over an unsigned child proves the missing DS with its NSEC, which makes the
    child an insecure delegation.  Keys are fresh for every call (one ECDSAP256SHA256
    key with the SEP flag per zone); signatures run from C{inception} (default: a day
    ago) to C{expiration} (default: 30 days after inception).
    """
    texts = {
        dns.name.from_text(origin): (server.name, text)
        for server in spec.servers.values()
        for origin, text in server.zones.items()
    }
    wanted = set(texts) if origins is None else {dns.name.from_text(o) for o in origins}
    unknown = wanted - set(texts)
    if unknown:
        raise ValueError(f"no such zones in the lab: {sorted(n.to_text() for n in unknown)}")
    now = datetime.datetime.now(datetime.UTC)
    inception = inception or now - datetime.timedelta(days=1)
    expiration = expiration or inception + datetime.timedelta(days=30)
    keys: dict[str, tuple[Any, Any]] = {}
    signed: dict[dns.name.Name, str] = {}
    for origin in sorted(wanted, key=len, reverse=True):
        zone = dns.zone.from_text(texts[origin][1], origin, relativize=False)
        with zone.writer() as txn:
            for child in wanted:
                if (
                    child != origin
                    and child.is_subdomain(origin)
                    and zone.get_rdataset(child, dns.rdatatype.NS) is not None
                ):
                    _, dnskey = keys[child.to_text()]
                    ds = dns.dnssec.make_ds(child, dnskey, "SHA256")
                    txn.add(child, 3600, ds)
        private = ec.generate_private_key(ec.SECP256R1())
        dnskey = dns.dnssec.make_dnskey(
            private.public_key(), dns.dnssec.Algorithm.ECDSAP256SHA256, flags=257
        )
        dns.dnssec.sign_zone(
            zone,
            keys=[(private, dnskey)],
            dnskey_ttl=3600,
            inception=inception,
            expiration=expiration,
        )
        keys[origin.to_text()] = (private, dnskey)
        signed[origin] = zone.to_text(relativize=False)
    servers = {}
    for name, server in spec.servers.items():
        zones = {
            origin: signed.get(dns.name.from_text(origin), text)
            for origin, text in server.zones.items()
        }
        servers[name] = replace(server, zones=zones)
    result = SignedLab(replace(spec, servers=servers), keys, "")
    if "." in keys:
        result = replace(result, trust_anchor=result.ds("."))
    return result
