"""Signed lab hierarchies built at test time: secure, insecure and deliberately bogus zones.

A validator is only as good as the broken zones it was tried on, so this module signs the
lab's zone texts (L{kresolver.testing.zones}) with fresh keys and then breaks what a test
asks for: signatures expired or not yet valid, a signature that does not verify, one made
by a key the zone does not publish, a missing RRSIG, a DS that matches no DNSKEY, a signed
zone without its NSEC chain.  NSEC3 chains (RFC 5155, with salt, iterations and opt-out)
are built here because dnspython signs with NSEC only.

L{dnssec_lab} is the hierarchy the DNSSEC tests, the bench and the kresd comparison share;
L{DNSSEC_CASES} says what a validating resolver must answer in it.
"""

from __future__ import annotations

import base64
import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import dns.dnssec
import dns.name
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.rdtypes.ANY.NSEC3
import dns.rdtypes.ANY.NSEC3PARAM
import dns.rrset
import dns.zone
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from dns.rdtypes.util import Bitmap

from kresolver.testing.zones import LabSpec, ServerSpec, _zone, standard_lab

_T = dns.rdatatype
_IN = dns.rdataclass.IN

#: What a fault does to the RRsets at the owner it is set on.
FAULTS = ("expired", "future", "badsig", "wrongkey", "nosig")


@dataclass(frozen=True)
class ZonePlan:
    """How to sign one zone, and what to break in it afterwards."""

    algorithm: int = 13
    nsec3: bool = False
    iterations: int = 0
    salt: bytes = b""
    opt_out: bool = False
    #: owner (absolute text) -> one of L{FAULTS}, applied to every signed RRset there
    faults: Mapping[str, str] = field(default_factory=dict)
    #: the parent publishes a DS for a key the zone does not have
    ds_mismatch: bool = False
    #: signed, but the NSEC/NSEC3 chain (and NSEC3PARAM) is removed
    strip_denial: bool = False


@dataclass(frozen=True)
class SignedHierarchy:
    """A lab with signed zones, and what a validator needs to trust it."""

    spec: LabSpec
    keys: dict[str, tuple[Any, Any]]  # origin -> (private key, DNSKEY rdata)
    inception: datetime.datetime
    expiration: datetime.datetime

    def dnskey(self, origin: str = ".") -> str:
        """A zone's DNSKEY in zone-file form (the root's is the lab's trust anchor)."""
        _, key = self.keys[_abs(origin)]
        return f"{_abs(origin)} 3600 IN DNSKEY {key.to_text()}"

    def ds(self, origin: str = ".") -> str:
        """A zone's DS (SHA-256) in zone-file form."""
        _, key = self.keys[_abs(origin)]
        ds = dns.dnssec.make_ds(_abs(origin), key, "SHA256")
        return f"{_abs(origin)} 3600 IN DS {ds.to_text()}"

    @property
    def trust_anchor(self) -> str:
        return self.ds(".")


def _abs(name: str) -> str:
    return dns.name.from_text(name).to_text()


def make_key(algorithm: int = 13, flags: int = 257) -> tuple[Any, Any]:
    """A fresh private key and its DNSKEY rdata (SEP set: one key signs everything)."""
    if algorithm == 13:
        private: Any = ec.generate_private_key(ec.SECP256R1())
    elif algorithm == 14:
        private = ec.generate_private_key(ec.SECP384R1())
    elif algorithm == 15:
        private = ed25519.Ed25519PrivateKey.generate()
    elif algorithm in (5, 7, 8, 10):
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        raise ValueError(f"make_key: no key generator for algorithm {algorithm}")
    dnskey = dns.dnssec.make_dnskey(private.public_key(), algorithm, flags=flags)
    return private, dnskey


def _sign(
    rrset: dns.rrset.RRset,
    key: tuple[Any, Any],
    signer: dns.name.Name,
    inception: datetime.datetime,
    expiration: datetime.datetime,
) -> dns.rrset.RRset:
    rrsig = dns.dnssec.sign(
        rrset,
        key[0],
        signer,
        key[1],
        inception=inception,
        expiration=expiration,
        policy=dns.dnssec.allow_all_policy,
        origin=signer,
    )
    return dns.rrset.from_rdata(rrset.name, rrset.ttl, rrsig)


def _authoritative(txn: Any, origin: dns.name.Name) -> list[tuple[dns.name.Name, bool]]:
    """(name, is a delegation point) for every name the zone is authoritative for."""
    out = []
    cut: dns.name.Name | None = None
    for name in sorted(txn.iterate_names()):
        if cut is not None and name.is_subdomain(cut) and name != cut:
            continue  # glue and occluded data
        is_cut = name != origin and txn.get(name, _T.NS) is not None
        cut = name if is_cut else None
        out.append((name, is_cut))
    return out


def _sign_rrsets(
    txn: Any,
    origin: dns.name.Name,
    key: tuple[Any, Any],
    inception: datetime.datetime,
    expiration: datetime.datetime,
) -> None:
    for name, is_cut in _authoritative(txn, origin):
        node = txn.get_node(name)
        for rds in list(node.rdatasets):
            if rds.rdtype == _T.RRSIG or (is_cut and rds.rdtype not in (_T.DS, _T.NSEC)):
                continue
            rrset = dns.rrset.from_rdata_list(name, rds.ttl, list(rds))
            txn.add(_sign(rrset, key, origin, inception, expiration))


def _b32(data: bytes) -> str:
    return base64.b32hexencode(data).decode("ascii").rstrip("=").lower()


def _nsec3_chain(txn: Any, origin: dns.name.Name, plan: ZonePlan, ttl: int) -> None:
    """Add an NSEC3 chain and NSEC3PARAM (RFC 5155 7.1), skipping unsigned cuts if opt-out."""
    txn.add(
        origin,
        0,
        dns.rdtypes.ANY.NSEC3PARAM.NSEC3PARAM(_IN, _T.NSEC3PARAM, 1, 0, plan.iterations, plan.salt),
    )
    covered: dict[dns.name.Name, set[int]] = {}
    for name, is_cut in _authoritative(txn, origin):
        node = txn.get_node(name)
        types = {rds.rdtype for rds in node.rdatasets}
        if is_cut and plan.opt_out and _T.DS not in types:
            continue
        if not is_cut or _T.DS in types:
            types.add(_T.RRSIG)
        covered[name] = types
        parent = name
        while parent != origin:  # empty non-terminals get NSEC3s with no types
            parent = parent.parent()
            covered.setdefault(parent, set())
    hashed = sorted(
        (dns.dnssec.nsec3_hash(name, plan.salt, plan.iterations, 1).lower(), types)
        for name, types in covered.items()
    )
    for i, (h, types) in enumerate(hashed):
        nxt = hashed[(i + 1) % len(hashed)][0]
        rdata = dns.rdtypes.ANY.NSEC3.NSEC3(
            _IN,
            _T.NSEC3,
            1,
            1 if plan.opt_out else 0,
            plan.iterations,
            plan.salt,
            base64.b32hexdecode(nxt.upper() + "=" * (-len(nxt) % 8)),
            Bitmap.from_rdtypes(sorted(types)).windows,
        )
        txn.add(dns.name.Name((h.encode("ascii"), *origin.labels)), ttl, rdata)


def _break(
    txn: Any,
    origin: dns.name.Name,
    owner: dns.name.Name,
    fault: str,
    key: tuple[Any, Any],
    now: datetime.datetime,
) -> None:
    node = txn.get_node(owner)
    if node is None:
        raise ValueError(f"fault {fault!r}: {owner} is not in the zone {origin}")
    day = datetime.timedelta(days=1)
    for rds in list(node.rdatasets):
        if rds.rdtype in (_T.RRSIG, _T.NSEC, _T.NSEC3):
            continue
        rrset = dns.rrset.from_rdata_list(owner, rds.ttl, list(rds))
        txn.delete(owner, _T.RRSIG, rds.rdtype)
        if fault == "nosig":
            continue
        if fault == "expired":
            sig = _sign(rrset, key, origin, now - 20 * day, now - 10 * day)
        elif fault == "future":
            sig = _sign(rrset, key, origin, now + 10 * day, now + 20 * day)
        elif fault == "wrongkey":
            sig = _sign(rrset, make_key(key[1].algorithm), origin, now - day, now + 20 * day)
        elif fault == "badsig":
            good = _sign(rrset, key, origin, now - day, now + 20 * day)[0]
            broken = bytes(good.signature[:-1]) + bytes([good.signature[-1] ^ 0xFF])
            sig = dns.rrset.from_rdata(owner, rds.ttl, good.replace(signature=broken))
        else:
            raise ValueError(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")
        txn.add(sig)


def sign_hierarchy(
    spec: LabSpec,
    plans: Mapping[str, ZonePlan],
    inception: datetime.datetime | None = None,
    expiration: datetime.datetime | None = None,
) -> SignedHierarchy:
    """Sign the zones named in C{plans} (others stay unsigned: insecure delegations).

    Children are signed before their parents so each signed parent publishes their DS.
    """
    texts = {
        dns.name.from_text(origin): text
        for server in spec.servers.values()
        for origin, text in server.zones.items()
    }
    wanted = {dns.name.from_text(o): p for o, p in plans.items()}
    unknown = set(wanted) - set(texts)
    if unknown:
        raise ValueError(f"no such zones in the lab: {sorted(n.to_text() for n in unknown)}")
    now = datetime.datetime.now(datetime.UTC)
    inception = inception or now - datetime.timedelta(days=1)
    expiration = expiration or inception + datetime.timedelta(days=30)
    keys: dict[str, tuple[Any, Any]] = {}
    published: dict[dns.name.Name, Any] = {}  # the DNSKEY each parent's DS is made from
    signed: dict[dns.name.Name, str] = {}
    for origin in sorted(wanted, key=len, reverse=True):
        plan = wanted[origin]
        zone = dns.zone.from_text(texts[origin], origin, relativize=False)
        key = make_key(plan.algorithm)
        keys[origin.to_text()] = key
        published[origin] = make_key(plan.algorithm)[1] if plan.ds_mismatch else key[1]
        with zone.writer() as txn:
            for child, dnskey in published.items():
                if (
                    child != origin
                    and child.is_subdomain(origin)
                    and txn.get(child, _T.NS) is not None
                ):
                    txn.add(child, 3600, dns.dnssec.make_ds(child, dnskey, "SHA256"))
            soa = txn.get(origin, _T.SOA)
            txn.add(origin, 3600, key[1])
            if plan.nsec3:
                _nsec3_chain(txn, origin, plan, soa[0].minimum)
                _sign_rrsets(txn, origin, key, inception, expiration)
            else:
                dns.dnssec.sign_zone(
                    zone,
                    txn=txn,
                    keys=[key],
                    add_dnskey=False,
                    inception=inception,
                    expiration=expiration,
                    policy=dns.dnssec.allow_all_policy,
                )
            for owner, fault in plan.faults.items():
                _break(txn, origin, dns.name.from_text(owner), fault, key, now)
            if plan.strip_denial:
                for name in list(txn.iterate_names()):
                    for rdtype in (_T.NSEC, _T.NSEC3, _T.NSEC3PARAM):
                        if txn.get(name, rdtype) is not None:
                            txn.delete(name, rdtype)
                        if txn.get(name, _T.RRSIG, rdtype) is not None:
                            txn.delete(name, _T.RRSIG, rdtype)
        signed[origin] = zone.to_text(relativize=False)
    servers = {
        name: replace(
            server,
            zones={o: signed.get(dns.name.from_text(o), t) for o, t in server.zones.items()},
        )
        for name, server in spec.servers.items()
    }
    return SignedHierarchy(replace(spec, servers=servers), keys, inception, expiration)


# -- the DNSSEC lab ------------------------------------------------------------------------


@dataclass(frozen=True)
class DnssecCase:
    """One question to a validating resolver (client sets DO) and what it must answer."""

    qname: str
    qtype: str
    rcode: str
    ad: bool
    ede: int | None
    shows: str
    #: kresd is known to judge this case differently (a policy choice, not a bug)
    kresd_differs: bool = False


#: What a validating resolver must answer in L{dnssec_lab}, with the lab root as anchor.
DNSSEC_CASES: tuple[DnssecCase, ...] = (
    DnssecCase("www.alpha.lab.", "A", "NOERROR", True, None, "secure answer"),
    DnssecCase("alias.alpha.lab.", "A", "NOERROR", True, None, "secure CNAME"),
    DnssecCase("nowhere.alpha.lab.", "A", "NXDOMAIN", True, None, "NSEC NXDOMAIN"),
    DnssecCase("txt.alpha.lab.", "A", "NOERROR", True, None, "NSEC NODATA"),
    DnssecCase("ent.alpha.lab.", "A", "NOERROR", True, None, "NSEC empty non-terminal"),
    DnssecCase("anything.wild.alpha.lab.", "A", "NOERROR", True, None, "wildcard answer"),
    DnssecCase("anything.wild.alpha.lab.", "AAAA", "NOERROR", True, None, "wildcard NODATA"),
    DnssecCase("www.dname.alpha.lab.", "A", "NOERROR", True, None, "DNAME into NSEC3 zone"),
    DnssecCase("www.beta.kres.", "A", "NOERROR", True, None, "NSEC3 zone"),
    DnssecCase("nowhere.beta.kres.", "A", "NXDOMAIN", True, None, "NSEC3 NXDOMAIN"),
    DnssecCase("www.beta.kres.", "TXT", "NOERROR", True, None, "NSEC3 NODATA"),
    DnssecCase("www.twoserv.kres.", "A", "NOERROR", True, None, "secure, two servers"),
    DnssecCase("alpha.lab.", "DS", "NOERROR", True, None, "DS from the parent"),
    DnssecCase("alpha.lab.", "DNSKEY", "NOERROR", True, None, "DNSKEY at an apex"),
    DnssecCase("gamma.lab.", "DS", "NOERROR", True, None, "proven absence of a DS"),
    DnssecCase("unsigned.optout.lab.", "DS", "NOERROR", False, None, "DS in an opt-out span"),
    DnssecCase("nowhere.lab.", "A", "NXDOMAIN", True, None, "NXDOMAIN in a TLD"),
    DnssecCase("www.gamma.lab.", "A", "NOERROR", False, None, "insecure delegation (NSEC)"),
    DnssecCase("chain.alpha.lab.", "A", "NOERROR", False, None, "CNAME chain via insecure"),
    DnssecCase("www.rsa.lab.", "A", "NOERROR", True, None, "RSASHA256 zone"),
    DnssecCase("www.ed.lab.", "A", "NOERROR", True, None, "ED25519 zone"),
    DnssecCase("www.bogus.lab.", "A", "NOERROR", True, None, "good name in a broken zone"),
    DnssecCase(
        "www.unsigned.optout.lab.", "A", "NOERROR", False, None, "opt-out insecure delegation"
    ),
    DnssecCase("www.iter.lab.", "A", "NOERROR", True, None, "positive in a costly NSEC3 zone"),
    DnssecCase("nowhere.iter.lab.", "A", "NXDOMAIN", False, 27, "NSEC3 iterations over the cap"),
    DnssecCase("expired.bogus.lab.", "A", "SERVFAIL", False, 7, "signature expired"),
    DnssecCase("future.bogus.lab.", "A", "SERVFAIL", False, 8, "signature not yet valid"),
    DnssecCase("badsig.bogus.lab.", "A", "SERVFAIL", False, 6, "signature does not verify"),
    DnssecCase("wrongkey.bogus.lab.", "A", "SERVFAIL", False, 9, "signed by an unknown key"),
    DnssecCase("nosig.bogus.lab.", "A", "SERVFAIL", False, 10, "RRSIG missing"),
    DnssecCase("www.nokey.lab.", "A", "SERVFAIL", False, 9, "DS without matching DNSKEY"),
    DnssecCase("nowhere.nonsec.lab.", "A", "SERVFAIL", False, 12, "NSEC proof missing"),
)


def dnssec_lab(base: str = "127.0.80.") -> tuple[LabSpec, dict[str, ZonePlan]]:
    """The standard lab plus the DNSSEC zones, and how each zone is to be signed.

    Extra servers: C{base}9 ``ns1.sec.lab.`` (bogus.lab., nokey.lab., nonsec.lab.,
    optout.lab., iter.lab., rsa.lab., ed.lab.) and C{base}10 ``ns1.unsigned.lab.``
    (unsigned.optout.lab., an unsigned child in an NSEC3 opt-out span).
    """
    spec = standard_lab(base)
    sec, unsigned = f"{base}9", f"{base}10"
    extra = ["bogus", "nokey", "nonsec", "optout", "iter", "rsa", "ed"]
    lab_server = spec.servers["ns1.nic.lab."]
    delegations = "\n".join(f"{z}.lab. 3600 IN NS ns1.sec.lab." for z in extra)
    lab_text = (
        lab_server.zones["lab."]
        + delegations
        + f"\nns1.sec.lab. 3600 IN A {sec}\nns1.unsigned.lab. 3600 IN A {unsigned}\n"
    )
    zones: dict[str, str] = {}
    for z in extra:
        origin = f"{z}.lab."
        body = f"www.{origin} 300 IN A 192.0.2.60\n"
        if z == "bogus":
            body += "".join(f"{fault}.{origin} 300 IN A 192.0.2.61\n" for fault in FAULTS)
        if z == "optout":
            body += f"unsigned.{origin} 3600 IN NS ns1.unsigned.lab.\n"
        zones[origin] = _zone(origin, ["ns1.sec.lab."], body)
    servers = dict(spec.servers)
    servers["ns1.nic.lab."] = replace(lab_server, zones={"lab.": lab_text})
    servers["ns1.sec.lab."] = ServerSpec("ns1.sec.lab.", sec, zones)
    servers["ns1.unsigned.lab."] = ServerSpec(
        "ns1.unsigned.lab.",
        unsigned,
        {
            "unsigned.optout.lab.": _zone(
                "unsigned.optout.lab.",
                ["ns1.unsigned.lab."],
                "www.unsigned.optout.lab. 300 IN A 192.0.2.62\n",
            )
        },
    )
    spec = replace(spec, servers=servers)
    plans = {
        origin: ZonePlan()
        for origin in (".", "lab.", "kres.", "alpha.lab.", "twoserv.kres.", "other.kres.")
    }
    plans.update(
        {
            "beta.kres.": ZonePlan(nsec3=True),
            "bogus.lab.": ZonePlan(faults={f"{f}.bogus.lab.": f for f in FAULTS}),
            "nokey.lab.": ZonePlan(ds_mismatch=True),
            "nonsec.lab.": ZonePlan(strip_denial=True),
            "optout.lab.": ZonePlan(nsec3=True, opt_out=True, iterations=5, salt=b"\xab\xcd"),
            "iter.lab.": ZonePlan(nsec3=True, iterations=200, salt=b"\x01"),
            "rsa.lab.": ZonePlan(algorithm=8),
            "ed.lab.": ZonePlan(algorithm=15, nsec3=True),
        }
    )
    return spec, plans


def signed_dnssec_lab(base: str = "127.0.80.") -> SignedHierarchy:
    """L{dnssec_lab}, signed now with fresh keys."""
    spec, plans = dnssec_lab(base)
    return sign_hierarchy(spec, plans)
