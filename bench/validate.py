"""Validated cache misses: unique names in a signed zone, kresolver and kresd in one run.

The hierarchy of L{zonegen.lab_hierarchy} (root, ``lab.``, ``bench.lab.`` with C{--names}
A records) is signed at start with fresh keys (ECDSAP256SHA256, NSEC;
L{kresolver.testing.signing}) and served by NSD, one process per address.  Both
resolvers get the root's DS as their only trust anchor, so every answer's RRSIG is
verified and the chain of trust (root, lab., bench.lab. DNSKEY and DS) is built during
the warm-up.  dnsperf then asks names never asked before, each once: every answer costs
an upstream query and a signature check.

Before measuring, one DO query to each resolver must come back with AD: a benchmark of a
resolver that does not validate would measure the wrong thing.

    python bench/validate.py --seconds 10 --names 30000
"""

from __future__ import annotations

import os
import shutil
import tempfile

import dns.flags
import dns.message
import dns.query

# run as a script: its directory (bench/) is first on sys.path, so these are bench/*.py
from recursion import running, write_lines
from zonegen import ROOT_NS, lab_hierarchy, miss_queries

from bench import Result, arguments, dnsperf, run_settings
from kresolver.testing.daemon import DaemonOwner, missing_software
from kresolver.testing.nsd import NSD, NSDHierarchy
from kresolver.testing.reference import KRESD, KresdReference
from kresolver.testing.resolver import KresolverProcess
from kresolver.testing.signing import ZonePlan, sign_hierarchy
from kresolver.testing.zones import LabSpec, ServerSpec

ROOT, TLD, ZONE = "127.0.83.21", "127.0.83.22", "127.0.83.23"
KRESOLVER, KRESOLVER_OUTGOING = "127.0.83.31", "127.0.83.32"
KRESD_ADDRESS, KRESD_OUTGOING = "127.0.83.33", "127.0.83.34"
PORT = 53
#: names asked before the measured run (never again): keys, delegations, warm code paths
WARM = 1000


def signed_zones(names: int) -> tuple[dict[str, dict[str, str]], str]:
    """The bench hierarchy, every zone signed; and the root's DS (the trust anchor)."""
    zones = lab_hierarchy(names, root_address=ROOT, tld_address=TLD, bench_address=ZONE)
    spec = LabSpec({a: ServerSpec(a, a, z) for a, z in zones.items()})
    origins = [origin for z in zones.values() for origin in z]
    signed = sign_hierarchy(spec, {origin: ZonePlan() for origin in origins})
    return signed.spec.by_address(), signed.trust_anchor


def check_validates(address: str, name: str) -> None:
    query = dns.message.make_query(name, "A", want_dnssec=True)
    response = dns.query.udp(query, address, port=PORT, timeout=5)
    if not response.flags & dns.flags.AD:
        raise SystemExit(f"{address} answered {name} without AD: it does not validate")


def measure(
    label: str,
    daemon: DaemonOwner,
    files: dict[str, str],
    run: dict[str, object],
    probe: str | None,
) -> Result:
    """The warm-up, the AD check (unless C{probe} is None), then the measured run."""
    with running(daemon) as pid:
        dnsperf(daemon.address, PORT, files["warm"], seconds=30, runs=1, pid=pid)
        if probe is not None:
            check_validates(daemon.address, probe)
        result = dnsperf(
            daemon.address,
            PORT,
            files["miss"],
            runs=1,
            pid=pid,
            label=f"{label}, cache miss",
            **run,
        )
        print(result.report(), flush=True)
    return result


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--names", type=int, default=30_000, help="names in the signed zone")
    parser.add_argument(
        "--unvalidated",
        action="store_true",
        help="also run kresolver with validate unloaded: what validation itself costs",
    )
    options = parser.parse_args()
    missing = missing_software(NSD)
    if missing:
        raise SystemExit(missing)
    if options.names <= WARM:
        parser.error(f"--names must be above {WARM}")
    run = run_settings(options)
    workdir = tempfile.mkdtemp(prefix="kresolver-bench-validate-")
    try:
        names = miss_queries(options.names)
        files = {
            "warm": write_lines(os.path.join(workdir, "warm.txt"), names[:WARM]),
            "miss": write_lines(os.path.join(workdir, "miss.txt"), names[WARM:]),
        }
        probe = names[0].split()[0]
        zones, anchor = signed_zones(options.names)
        hints = {ROOT_NS: [ROOT]}
        print(
            f"NSD: {options.names:,} signed names; dnsperf -l {options.seconds:g} "
            f"-c {options.clients} -q {options.outstanding}; "
            f"{len(names) - WARM:,} names, each asked at most once",
            flush=True,
        )
        with NSDHierarchy(zones, os.path.join(workdir, "nsd")):
            kresolver = KresolverProcess(
                KRESOLVER,
                PORT,
                hints,
                os.path.join(workdir, "kresolver"),
                KRESOLVER_OUTGOING,
                trust_anchor=anchor,
                extra_config="log_level('warning')",
            )
            kresolver.cache_size_mb = 500
            ours = measure("kresolver validating", kresolver, files, run, probe)
            if options.unvalidated:
                plain = KresolverProcess(
                    KRESOLVER,
                    PORT,
                    hints,
                    os.path.join(workdir, "kresolver-plain"),
                    KRESOLVER_OUTGOING,
                    extra_config="log_level('warning')\nmodules.unload('validate')",
                )
                plain.cache_size_mb = 500
                unvalidated = measure("kresolver not validating", plain, files, run, None)
                if ours.cpu_per_1000 and unvalidated.cpu_per_1000:
                    extra = (ours.cpu_per_1000 - unvalidated.cpu_per_1000) * 1000
                    print(f"validation costs {extra:.0f} us of CPU per answer", flush=True)
            if options.no_kresd or missing_software(KRESD):
                print("no kresd comparison" + (" (not installed)" if not options.no_kresd else ""))
                return
            kresd = KresdReference(
                KRESD_ADDRESS,
                PORT,
                hints,
                os.path.join(workdir, "kresd"),
                KRESD_OUTGOING,
                trust_anchor=anchor,
            )
            kresd.cache_size_mb = 500
            theirs = measure("kresd validating", kresd, files, run, probe)
        ratio = ours.qps / theirs.qps if theirs.qps else float("nan")
        cpu = (
            f", {ours.cpu_per_1000 / theirs.cpu_per_1000:.2f}x the CPU per answer"
            if ours.cpu_per_1000 and theirs.cpu_per_1000
            else ""
        )
        print(
            f"\nkresolver / kresd, validated cache miss: {ratio:.2f}x the answers/s "
            f"({ours.qps:,.0f} vs {theirs.qps:,.0f}){cpu}"
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
