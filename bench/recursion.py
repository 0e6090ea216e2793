"""Recursion on one process: the cache-miss and cache-hit workloads, kresolver and kresd.

A loopback hierarchy (root, ``lab.``, and ``bench.lab.`` with C{--names} A records, from
L{zonegen}) is served by NSD, one process per address. Each resolver runs as one process
(``twistd -n kresolver``, ``kresd -n``) with the lab's root hints, and dnsperf asks it:

- cache miss: names of the bench zone in a shuffled order, each once (dnsperf ``-n 1``
  over a file of names never asked before), so every answer needs an upstream query to
  NSD (the delegations are cached by a short warm-up on other names);
- cache hit: C{--hit-names} names asked over and over after a warm-up round, so every
  answer comes from the cache.

It prints answers per second, latency percentiles (from dnsperf's per-query lines) and
CPU seconds per 1,000 answers (utime + stime of the resolver's process) for both
resolvers, and kresolver's ratios to kresd against the targets: cache hit at least half
of kresd's answers per second, cache miss at least a quarter.

    python bench/recursion.py --seconds 10
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

# run as a script: its directory (bench/) is first on sys.path, so these are bench/*.py
from zonegen import ROOT_NS, hit_queries, lab_hierarchy, miss_queries

from bench import Result, arguments, dnsperf, run_settings
from kresolver.testing.daemon import DaemonOwner, missing_software
from kresolver.testing.nsd import NSD, NSDHierarchy
from kresolver.testing.reference import KRESD, KresdReference
from kresolver.testing.resolver import KresolverProcess

ROOT, TLD, ZONE = "127.0.33.21", "127.0.33.22", "127.0.33.23"
KRESOLVER, KRESOLVER_OUTGOING = "127.0.33.31", "127.0.33.32"
KRESD_ADDRESS, KRESD_OUTGOING = "127.0.33.33", "127.0.33.34"
PORT = 53
#: kresolver's answers per second as a share of kresd's, per workload (issue 3)
TARGETS = {"miss": 0.25, "hit": 0.5}
#: names asked before the cache-miss run (never again): delegations and warm code paths
WARM_MISS = 2000


def write_lines(path: str, lines: list[str]) -> str:
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


@contextmanager
def running(daemon: DaemonOwner) -> Iterator[int]:
    daemon.start(timeout=30)
    try:
        assert daemon.pid is not None
        yield daemon.pid
    finally:
        daemon.stop()


def measure(
    label: str, daemon: DaemonOwner, files: dict[str, str], run: dict[str, object]
) -> dict[str, Result]:
    """Both workloads against one resolver: miss first (a cold cache), then hit."""
    address = daemon.address
    results: dict[str, Result] = {}
    with running(daemon) as pid:
        dnsperf(address, PORT, files["warm-miss"], seconds=30, runs=1, pid=pid)
        results["miss"] = dnsperf(
            address, PORT, files["miss"], runs=1, pid=pid, label=f"{label} cache miss", **run
        )
        print(results["miss"].report(), flush=True)
        dnsperf(address, PORT, files["hit"], seconds=1, pid=pid)
        results["hit"] = dnsperf(
            address, PORT, files["hit"], pid=pid, label=f"{label} cache hit", **run
        )
        print(results["hit"].report(), flush=True)
    return results


def compare(ours: dict[str, Result], theirs: dict[str, Result]) -> None:
    print("\nkresolver / kresd:")
    for workload in ("miss", "hit"):
        a, b = ours[workload], theirs[workload]
        ratio = a.qps / b.qps if b.qps else float("nan")
        target = TARGETS[workload]
        verdict = "meets" if ratio >= target else "is BELOW"
        cpu = (
            f", {a.cpu_per_1000 / b.cpu_per_1000:.2f}x the CPU per answer"
            if a.cpu_per_1000 and b.cpu_per_1000
            else ""
        )
        p50 = a.percentiles_ms[50] / b.percentiles_ms[50] if b.percentiles_ms[50] else float("nan")
        print(
            f"  cache {workload}: {ratio:.2f}x the answers/s ({a.qps:,.0f} vs {b.qps:,.0f}; "
            f"{verdict} the target of {target:g}x){cpu}, {p50:.2f}x the median latency"
        )


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--names", type=int, default=100_000, help="names in the bench zone")
    parser.add_argument("--hit-names", type=int, default=100, help="names of the hit set")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    options = parser.parse_args()
    missing = missing_software(NSD)
    if missing:
        raise SystemExit(missing)
    if options.names <= WARM_MISS:
        parser.error(f"--names must be above {WARM_MISS}")
    run = run_settings(options)
    workdir = tempfile.mkdtemp(prefix="kresolver-bench-recursion-")
    try:
        misses = miss_queries(options.names)
        files = {
            "warm-miss": write_lines(os.path.join(workdir, "warm-miss.txt"), misses[:WARM_MISS]),
            "miss": write_lines(os.path.join(workdir, "miss.txt"), misses[WARM_MISS:]),
            "hit": write_lines(
                os.path.join(workdir, "hit.txt"), hit_queries(options.names, options.hit_names)
            ),
        }
        zones = lab_hierarchy(
            options.names, root_address=ROOT, tld_address=TLD, bench_address=ZONE
        )
        hints = {ROOT_NS: [ROOT]}
        print(
            f"NSD: {options.names:,} names in the bench zone; dnsperf -l {options.seconds:g} "
            f"-c {options.clients} -q {options.outstanding}; "
            f"{len(misses) - WARM_MISS:,} cache-miss names, each asked at most once",
            flush=True,
        )
        with NSDHierarchy(zones, os.path.join(workdir, "nsd")):
            kresolver = KresolverProcess(
                KRESOLVER, PORT, hints, os.path.join(workdir, "kresolver"), KRESOLVER_OUTGOING,
                extra_config="log_level('warning')",
            )
            kresolver.cache_size_mb = 500
            ours = measure("kresolver", kresolver, files, run)
            if options.no_kresd or missing_software(KRESD):
                print("no kresd comparison" + (" (not installed)" if not options.no_kresd else ""))
                return
            kresd = KresdReference(
                KRESD_ADDRESS, PORT, hints, os.path.join(workdir, "kresd"), KRESD_OUTGOING,
            )
            kresd.cache_size_mb = 500
            theirs = measure("kresd", kresd, files, run)
        compare(ours, theirs)
    finally:
        if options.keep:
            print(f"work directory: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
