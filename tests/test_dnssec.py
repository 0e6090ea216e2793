"""The pure DNSSEC checks (kresolver.resolve.dnssec) on a hierarchy signed at test time.

No network: answers come from the lab's authoritative lookup called in-process, so every
proof checked here is the one a real server of the same zones would send.
"""

from __future__ import annotations

import datetime
import time

import dns.dnssec
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from kresolver.cache.cache import Security
from kresolver.resolve.dnssec import (
    EDE,
    Denial,
    _signed_data,
    bitmap_has,
    match_ds,
    nsec3_hash,
    nsec_covers,
    order_key,
    supported_algorithm,
    verify_dnskeys,
    verify_rrset,
)
from kresolver.testing.lab import _Engine, zones_from_text
from kresolver.testing.signing import (
    ZonePlan,
    make_key,
    sign_hierarchy,
    signed_dnssec_lab,
)

_T = dns.rdatatype
N = dns.name.from_text
_HIERARCHY = None


def hierarchy():
    global _HIERARCHY
    if _HIERARCHY is None:
        _HIERARCHY = signed_dnssec_lab("127.0.80.")
    return _HIERARCHY


def engine_for(origin: str) -> _Engine:
    for server in hierarchy().spec.servers.values():
        if origin in server.zones:
            return _Engine(zones_from_text({origin: server.zones[origin]}))
    raise KeyError(origin)


def ask(origin: str, qname: str, qtype: str):
    return engine_for(origin).lookup(N(qname), _T.from_text(qtype), True)


def split(rrsets):
    """{(name, type): rrset} and {(name, covered type): rrsigs}."""
    data, sigs = {}, {}
    for rrset in rrsets:
        if rrset.rdtype == _T.RRSIG:
            sigs[(rrset.name, rrset.covers)] = rrset
        else:
            data[(rrset.name, rrset.rdtype)] = rrset
    return data, sigs


def dnskeys(origin: str):
    result = ask(origin, origin, "DNSKEY")
    data, sigs = split(result.answer)
    return data[(N(origin), _T.DNSKEY)], sigs.get((N(origin), _T.DNSKEY))


def verified_denial(origin: str, rrsets) -> Denial:
    keys, _ = dnskeys(origin)
    data, sigs = split(rrsets)
    good = [
        rrset
        for (name, rdtype), rrset in data.items()
        if rdtype in (_T.NSEC, _T.NSEC3)
        and verify_rrset(rrset, sigs.get((name, rdtype)), keys, N(origin), time.time()).secure
    ]
    return Denial(N(origin), good)


class SignatureTests(unittest.TestCase):
    def check(self, origin: str, qname: str, qtype: str = "A"):
        result = ask(origin, qname, qtype)
        data, sigs = split(result.answer)
        rrset = data[(N(qname), _T.from_text(qtype))]
        keys, _ = dnskeys(origin)
        return verify_rrset(
            rrset, sigs.get((N(qname), rrset.rdtype)), keys, N(origin), time.time()
        ), rrset

    def test_secure_rrset(self) -> None:
        verdict, rrset = self.check("alpha.lab.", "www.alpha.lab.")
        self.assertEqual(verdict.security, Security.SECURE)
        self.assertIsNone(verdict.wildcard)
        self.assertLessEqual(verdict.ttl, rrset.ttl)

    def test_algorithms(self) -> None:
        for origin in ("rsa.lab.", "ed.lab."):
            verdict, _ = self.check(origin, f"www.{origin}")
            self.assertTrue(verdict.secure, (origin, verdict))
        self.assertTrue(supported_algorithm(13))
        self.assertFalse(supported_algorithm(5))
        self.assertFalse(supported_algorithm(1))

    def test_wildcard_expansion_is_told(self) -> None:
        verdict, _ = self.check("alpha.lab.", "anything.wild.alpha.lab.")
        self.assertTrue(verdict.secure)
        self.assertEqual(verdict.wildcard, N("*.wild.alpha.lab."))

    def test_faults(self) -> None:
        expected = {
            "expired": EDE.SIGNATURE_EXPIRED,
            "future": EDE.SIGNATURE_NOT_YET_VALID,
            "badsig": EDE.BOGUS,
            "wrongkey": EDE.DNSKEY_MISSING,
            "nosig": EDE.RRSIGS_MISSING,
        }
        for fault, ede in expected.items():
            verdict, _ = self.check("bogus.lab.", f"{fault}.bogus.lab.")
            self.assertEqual((verdict.security, verdict.ede), (Security.BOGUS, ede), fault)
        verdict, _ = self.check("bogus.lab.", "www.bogus.lab.")
        self.assertTrue(verdict.secure)

    def test_clock_skew_and_ttl_cap(self) -> None:
        _verdict, rrset = self.check("alpha.lab.", "www.alpha.lab.")
        sigs = split(ask("alpha.lab.", "www.alpha.lab.", "A").answer)[1]
        rrsig = sigs[(N("www.alpha.lab."), _T.A)]
        keys, _ = dnskeys("alpha.lab.")
        expiration = rrsig[0].expiration
        late = verify_rrset(rrset, rrsig, keys, N("alpha.lab."), expiration + 100)
        self.assertTrue(late.secure)
        self.assertEqual(late.ttl, 0)
        too_late = verify_rrset(rrset, rrsig, keys, N("alpha.lab."), expiration + 1000)
        self.assertEqual(too_late.ede, EDE.SIGNATURE_EXPIRED)
        near_end = verify_rrset(rrset, rrsig, keys, N("alpha.lab."), expiration - 10)
        self.assertEqual(near_end.ttl, 10)
        early = verify_rrset(rrset, rrsig, keys, N("alpha.lab."), rrsig[0].inception - 1000)
        self.assertEqual(early.ede, EDE.SIGNATURE_NOT_YET_VALID)

    def test_wrong_zone_keys_and_signer(self) -> None:
        _, rrset = self.check("alpha.lab.", "www.alpha.lab.")
        sigs = split(ask("alpha.lab.", "www.alpha.lab.", "A").answer)[1]
        rrsig = sigs[(N("www.alpha.lab."), _T.A)]
        other, _ = dnskeys("lab.")
        verdict = verify_rrset(rrset, rrsig, other, N("alpha.lab."), time.time())
        self.assertEqual(verdict.ede, EDE.DNSKEY_MISSING)
        verdict = verify_rrset(rrset, rrsig, other, N("lab."), time.time())
        self.assertTrue(verdict.bogus)

    def test_tampered_data(self) -> None:
        _, _rrset = self.check("alpha.lab.", "www.alpha.lab.")
        sigs = split(ask("alpha.lab.", "www.alpha.lab.", "A").answer)[1]
        forged = dns.rrset.from_text("www.alpha.lab.", 300, "IN", "A", "203.0.113.66")
        keys, _ = dnskeys("alpha.lab.")
        verdict = verify_rrset(
            forged, sigs[(N("www.alpha.lab."), _T.A)], keys, N("alpha.lab."), time.time()
        )
        self.assertEqual(verdict.ede, EDE.BOGUS)
        self.assertEqual(
            verify_rrset(forged, None, keys, N("alpha.lab."), time.time()).ede,
            EDE.RRSIGS_MISSING,
        )

    def test_signed_data_is_what_dnspython_signs(self) -> None:
        """The octets checked are those dnspython's signer signs: owner and rdata names
        lowercased, records in canonical order, a wildcard expansion's owner the wildcard;
        a wildcard owner whose labels field does not match it is refused, as dnspython
        refuses it."""
        private, dnskey = make_key(13)
        zone, now = N("Sign.Lab."), time.time()
        keys = dns.rrset.from_rdata(zone, 300, dnskey)
        cases = [
            ("www.sign.lab.", "A", ["192.0.2.9", "192.0.2.1"]),
            ("MX.Sign.lab.", "MX", ["10 Mail.Sign.Lab.", "5 b.sign.lab."]),
            ("*.sign.lab.", "TXT", ['"x"']),
            ("sign.lab.", "AAAA", ["2001:db8::1"]),
        ]
        for owner, rdtype, texts in cases:
            rrset = dns.rrset.from_text_list(owner, 300, "IN", rdtype, texts)
            rrsig = dns.dnssec.sign(rrset, private, zone, dnskey, inception=now - 60, lifetime=600)
            self.assertEqual(
                _signed_data(rrset, rrsig), dns.dnssec._make_rrsig_signature_data(rrset, rrsig)
            )
            sigs = dns.rrset.from_rdata(rrset.name, 300, rrsig)
            self.assertTrue(verify_rrset(rrset, sigs, keys, zone, now).secure, owner)
        wild = dns.rrset.from_text("*.sign.lab.", 300, "IN", "A", "192.0.2.7")
        rrsig = dns.dnssec.sign(wild, private, zone, dnskey, inception=now - 60, lifetime=600)
        expanded = dns.rrset.from_text("a.b.sign.lab.", 300, "IN", "A", "192.0.2.7")
        self.assertEqual(
            _signed_data(expanded, rrsig), dns.dnssec._make_rrsig_signature_data(expanded, rrsig)
        )
        verdict = verify_rrset(
            expanded, dns.rrset.from_rdata(expanded.name, 300, rrsig), keys, zone, now
        )
        self.assertEqual((verdict.security, verdict.wildcard), (Security.SECURE, N("*.sign.lab.")))
        deeper = dns.rrset.from_text("*.b.sign.lab.", 300, "IN", "A", "192.0.2.7")
        with self.assertRaisesRegex(ValueError, "wrong label length"):
            _signed_data(deeper, rrsig)
        verdict = verify_rrset(
            deeper, dns.rrset.from_rdata(deeper.name, 300, rrsig), keys, zone, now
        )
        self.assertEqual(verdict.ede, EDE.BOGUS)


class ChainTests(unittest.TestCase):
    def ds_of(self, parent: str, child: str):
        data, sigs = split(ask(parent, child, "DS").answer)
        return data.get((N(child), _T.DS)), sigs.get((N(child), _T.DS))

    def test_chain_from_root_anchor(self) -> None:
        anchor = dns.rdata.from_text("IN", "DS", hierarchy().trust_anchor.split("DS", 1)[1])
        keys, sigs = dnskeys(".")
        self.assertTrue(verify_dnskeys(N("."), keys, sigs, time.time(), ds=[anchor]).secure)
        root_keys = keys
        ds, ds_sigs = self.ds_of(".", "lab.")
        self.assertTrue(verify_rrset(ds, ds_sigs, root_keys, N("."), time.time()).secure)
        keys, sigs = dnskeys("lab.")
        self.assertTrue(verify_dnskeys(N("lab."), keys, sigs, time.time(), ds=ds).secure)

    def test_dnskey_anchor(self) -> None:
        keys, sigs = dnskeys(".")
        verdict = verify_dnskeys(N("."), keys, sigs, time.time(), anchor_keys=list(keys))
        self.assertTrue(verdict.secure)
        other = make_key(13)[1]
        verdict = verify_dnskeys(N("."), keys, sigs, time.time(), anchor_keys=[other])
        self.assertEqual((verdict.security, verdict.ede), (Security.BOGUS, EDE.DNSKEY_MISSING))

    def test_ds_without_matching_dnskey(self) -> None:
        ds, _ = self.ds_of("lab.", "nokey.lab.")
        keys, sigs = dnskeys("nokey.lab.")
        verdict = verify_dnskeys(N("nokey.lab."), keys, sigs, time.time(), ds=ds)
        self.assertEqual((verdict.security, verdict.ede), (Security.BOGUS, EDE.DNSKEY_MISSING))

    def test_unsupported_algorithm_or_digest_is_insecure(self) -> None:
        keys, _ = dnskeys("alpha.lab.")
        key = keys[0]
        ds = dns.dnssec.make_ds("alpha.lab.", key, "SHA256")
        alg5 = ds.replace(algorithm=5)
        verdict, _ = match_ds(N("alpha.lab."), [alg5], keys)
        self.assertEqual(
            (verdict.security, verdict.ede),
            (Security.INSECURE, EDE.UNSUPPORTED_DNSKEY_ALGORITHM),
        )
        unknown_digest = ds.replace(digest_type=200)
        verdict, _ = match_ds(N("alpha.lab."), [unknown_digest], keys)
        self.assertEqual(
            (verdict.security, verdict.ede), (Security.INSECURE, EDE.UNSUPPORTED_DS_DIGEST)
        )
        # An unsupported DS beside a good one changes nothing.
        verdict, matched = match_ds(N("alpha.lab."), [alg5, ds], keys)
        self.assertTrue(verdict.secure)
        self.assertEqual(matched, [key])

    def test_sha1_only_when_nothing_better(self) -> None:
        keys, _ = dnskeys("alpha.lab.")
        sha1 = dns.dnssec.make_ds("alpha.lab.", keys[0], "SHA1", policy=dns.dnssec.allow_all_policy)
        sha256 = dns.dnssec.make_ds("alpha.lab.", keys[0], "SHA256")
        self.assertTrue(match_ds(N("alpha.lab."), [sha1], keys)[0].secure)
        broken256 = sha256.replace(digest=b"\x00" * 32)
        verdict, _ = match_ds(N("alpha.lab."), [sha1, broken256], keys)
        self.assertTrue(verdict.bogus)
        broken1 = sha1.replace(digest=b"\x00" * 20)
        self.assertTrue(match_ds(N("alpha.lab."), [broken1, sha256], keys)[0].secure)


class DenialTests(unittest.TestCase):
    def denial(self, origin: str, qname: str, qtype: str):
        result = ask(origin, qname, qtype)
        return result, verified_denial(origin, result.authority)

    def test_nsec_nxdomain(self) -> None:
        result, denial = self.denial("alpha.lab.", "nowhere.alpha.lab.", "A")
        self.assertEqual(result.rcode, 3)
        self.assertTrue(denial.nxdomain(N("nowhere.alpha.lab.")).secure)
        # The same NSECs cannot deny a name outside their range, nor give NODATA.
        self.assertEqual(denial.nxdomain(N("www.alpha.lab.")).ede, EDE.NSEC_MISSING)
        self.assertTrue(denial.nodata(N("nowhere.alpha.lab."), _T.A).bogus)

    def test_nsec_nxdomain_needs_wildcard_proof(self) -> None:
        result, _ = self.denial("alpha.lab.", "nowhere.alpha.lab.", "A")
        data, _sigs = split(result.authority)
        keys, _ = dnskeys("alpha.lab.")
        # Keep only the NSEC covering the name itself: the wildcard may still exist.
        covering = [
            rrset
            for (name, rdtype), rrset in data.items()
            if rdtype == _T.NSEC and nsec_covers(name, rrset[0].next, N("nowhere.alpha.lab."))
        ]
        self.assertEqual(len(covering), 1)
        covers_wild = nsec_covers(covering[0].name, covering[0][0].next, N("*.alpha.lab."))
        if not covers_wild:
            self.assertTrue(
                Denial(N("alpha.lab."), covering).nxdomain(N("nowhere.alpha.lab.")).bogus
            )
        self.assertTrue(keys)

    def test_nsec_nodata_ent_and_wildcards(self) -> None:
        _, denial = self.denial("alpha.lab.", "txt.alpha.lab.", "A")
        self.assertTrue(denial.nodata(N("txt.alpha.lab."), _T.A).secure)
        self.assertTrue(denial.nodata(N("txt.alpha.lab."), _T.TXT).bogus)
        _, denial = self.denial("alpha.lab.", "ent.alpha.lab.", "A")
        self.assertTrue(denial.nodata(N("ent.alpha.lab."), _T.A).secure)
        _, denial = self.denial("alpha.lab.", "anything.wild.alpha.lab.", "AAAA")
        self.assertTrue(denial.nodata(N("anything.wild.alpha.lab."), _T.AAAA).secure)
        self.assertTrue(denial.nodata(N("anything.wild.alpha.lab."), _T.TXT).bogus)
        _result, denial = self.denial("alpha.lab.", "anything.wild.alpha.lab.", "A")
        self.assertTrue(
            denial.wildcard_answer(N("anything.wild.alpha.lab."), N("*.wild.alpha.lab.")).secure
        )
        # A wildcard answer for a name that exists is a forgery: no NSEC covers it.
        _, denial = self.denial("alpha.lab.", "exact.wild.alpha.lab.", "A")
        self.assertTrue(
            denial.wildcard_answer(N("exact.wild.alpha.lab."), N("*.wild.alpha.lab.")).bogus
        )

    def test_nsec_insecure_delegation(self) -> None:
        _result, denial = self.denial("lab.", "www.gamma.lab.", "A")
        self.assertTrue(denial.no_ds(N("gamma.lab.")).secure)
        _result, denial = self.denial("lab.", "www.alpha.lab.", "A")
        self.assertTrue(denial.no_ds(N("alpha.lab.")).bogus)  # a DS is there: no proof
        # The child's apex NSEC cannot deny the parent's DS.
        _, denial = self.denial("alpha.lab.", "alpha.lab.", "TXT")
        self.assertTrue(denial.nodata(N("alpha.lab."), _T.DS).bogus)

    def test_nsec3(self) -> None:
        _, denial = self.denial("beta.kres.", "nowhere.beta.kres.", "A")
        self.assertTrue(denial.nxdomain(N("nowhere.beta.kres.")).secure)
        self.assertTrue(denial.nxdomain(N("www.beta.kres.")).bogus)
        _, denial = self.denial("beta.kres.", "www.beta.kres.", "TXT")
        self.assertTrue(denial.nodata(N("www.beta.kres."), _T.TXT).secure)
        self.assertTrue(denial.nodata(N("www.beta.kres."), _T.A).bogus)

    def test_nsec3_opt_out(self) -> None:
        _, denial = self.denial("optout.lab.", "www.unsigned.optout.lab.", "A")
        verdict = denial.no_ds(N("unsigned.optout.lab."))
        self.assertEqual(verdict.security, Security.INSECURE)
        _, denial = self.denial("optout.lab.", "nowhere.optout.lab.", "A")
        self.assertEqual(denial.nxdomain(N("nowhere.optout.lab.")).security, Security.INSECURE)
        _, denial = self.denial("optout.lab.", "unsigned.optout.lab.", "DS")
        self.assertEqual(
            denial.nodata(N("unsigned.optout.lab."), _T.DS).security, Security.INSECURE
        )

    def test_nsec3_iterations_cap(self) -> None:
        _, denial = self.denial("iter.lab.", "nowhere.iter.lab.", "A")
        verdict = denial.nxdomain(N("nowhere.iter.lab."))
        self.assertEqual(
            (verdict.security, verdict.ede),
            (Security.INSECURE, EDE.UNSUPPORTED_NSEC3_ITERATIONS),
        )

    def test_missing_denial(self) -> None:
        result, denial = self.denial("nonsec.lab.", "nowhere.nonsec.lab.", "A")
        self.assertEqual(result.rcode, 3)
        self.assertTrue(denial.empty)
        self.assertEqual(denial.nxdomain(N("nowhere.nonsec.lab.")).ede, EDE.NSEC_MISSING)

    def test_bitmap(self) -> None:
        result, _ = self.denial("alpha.lab.", "txt.alpha.lab.", "A")
        nsec = next(r for r in result.authority if r.rdtype == _T.NSEC)
        self.assertTrue(bitmap_has(nsec[0], _T.TXT))
        self.assertFalse(bitmap_has(nsec[0], _T.A))
        self.assertFalse(bitmap_has(nsec[0], 1000))


class OrderTests(unittest.TestCase):
    """The label tuples the proofs compare are dnspython's canonical order (RFC 4034 6.1)."""

    @settings(max_examples=300, deadline=None)
    @given(
        st.lists(
            st.lists(st.sampled_from([b"a", b"B", b"b", b"-", b"\x00", b"\xff", b"*", b"a0"]),
                     min_size=0, max_size=4),
            min_size=2, max_size=2,
        )
    )
    def test_order_key_is_canonical_order(self, parts: list[list[bytes]]) -> None:
        a, b = (dns.name.Name((*labels, b"")) for labels in parts)
        ka, kb = order_key(a), order_key(b)
        self.assertEqual((ka < kb, ka == kb, ka > kb), (a < b, a == b, a > b))
        self.assertEqual(ka[: len(kb)] == kb, a.is_subdomain(b))

    def test_nsec3_hash(self) -> None:
        for name, salt, iterations in (
            ("www.Beta.kres.", b"", 0),
            ("*.beta.kres.", bytes.fromhex("aabbccdd"), 5),
            (".", b"\x01", 1),
        ):
            self.assertEqual(
                nsec3_hash(order_key(N(name)), salt, iterations),
                dns.dnssec.nsec3_hash(name, salt, iterations, 1),
            )


class SigningTests(unittest.TestCase):
    def test_unknown_zone_and_fault(self) -> None:
        spec = hierarchy().spec
        with self.assertRaises(ValueError):
            sign_hierarchy(spec, {"nothere.lab.": ZonePlan()})
        from kresolver.testing.signing import dnssec_lab

        raw, _ = dnssec_lab("127.0.80.")
        with self.assertRaises(ValueError):
            sign_hierarchy(raw, {"alpha.lab.": ZonePlan(faults={"www.alpha.lab.": "melted"})})

    def test_validity_window_is_honoured(self) -> None:
        from kresolver.testing.signing import dnssec_lab

        raw, _ = dnssec_lab("127.0.80.")
        start = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
        signed = sign_hierarchy(raw, {"alpha.lab.": ZonePlan()}, start, start)
        self.assertEqual(signed.inception, start)
        text = signed.spec.servers["ns1.alpha.lab."].zones["alpha.lab."]
        self.assertIn("20200101000000", text)
