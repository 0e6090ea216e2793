"""Zones and dnsperf query files for the cache-miss and cache-hit benchmarks.

The cache-miss workload asks each of N names (``n000123.bench.lab.``) once, in a shuffled
order, so every query makes the resolver go to the authoritative server; the cache-hit
workload repeats a small set of names, so after the first round everything comes from the
cache. dnsperf loops over its query file when it reaches the end, so a cache-miss run must
stop before it has sent N queries (``dnsperf -n 1`` or ``-l`` short enough): the names of a
second pass are cached.

``lab_hierarchy`` gives the zones of a whole loopback hierarchy (root, ``lab.``, the bench
zone), in the ``{address: {origin: text}}`` shape that ``kresolver.testing.nsd`` serves.

    python bench/zonegen.py --names 100000 --out-dir /tmp/bench
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from collections.abc import Sequence

from kresolver.testing.nsd import zone_file_name

DEFAULT_ORIGIN = "bench.lab."
DEFAULT_ROOT_ADDRESS = "127.0.30.21"
DEFAULT_TLD_ADDRESS = "127.0.30.22"
DEFAULT_BENCH_ADDRESS = "127.0.30.23"
ROOT_NS = "a.root-servers.lab."
_SOA_TIMERS = "1 3600 600 86400 300"


def _absolute(origin: str) -> str:
    origin = origin.strip().lower()
    if not origin or origin == ".":
        raise ValueError("the bench zone cannot be the root")
    return origin if origin.endswith(".") else origin + "."


def name_width(count: int) -> int:
    """Digits in a name's number: at least six, so names look alike across sizes."""
    if count < 1:
        raise ValueError(f"need at least one name, got {count}")
    return max(6, len(str(count - 1)))


def name_for(index: int, count: int, origin: str = DEFAULT_ORIGIN) -> str:
    return f"n{index:0{name_width(count)}d}.{_absolute(origin)}"


def address_for(index: int) -> str:
    """A distinct IPv4 address per name (data only: nothing is ever sent there)."""
    if not 0 <= index < 1 << 24:
        raise ValueError(f"index {index} out of range for 10.0.0.0/8")
    return f"10.{index >> 16 & 255}.{index >> 8 & 255}.{index & 255}"


def bench_zone(
    count: int = 100_000,
    origin: str = DEFAULT_ORIGIN,
    ns_address: str = DEFAULT_BENCH_ADDRESS,
    ttl: int = 3600,
) -> str:
    """The zone text: SOA, NS with glue, and ``count`` A records."""
    origin = _absolute(origin)
    width = name_width(count)
    lines = [
        f"$ORIGIN {origin}",
        f"$TTL {ttl}",
        f"@ IN SOA ns.{origin} hostmaster.{origin} {_SOA_TIMERS}",
        f"@ IN NS ns.{origin}",
        f"ns IN A {ns_address}",
    ]
    lines.extend(f"n{i:0{width}d} IN A {address_for(i)}" for i in range(count))
    return "\n".join(lines) + "\n"


def lab_hierarchy(
    count: int = 100_000,
    origin: str = DEFAULT_ORIGIN,
    root_address: str = DEFAULT_ROOT_ADDRESS,
    tld_address: str = DEFAULT_TLD_ADDRESS,
    bench_address: str = DEFAULT_BENCH_ADDRESS,
    ttl: int = 3600,
) -> dict[str, dict[str, str]]:
    """Root, the bench zone's TLD and the bench zone, one server address each.

    The resolver's root hints are ``{ROOT_NS: [root_address]}``.
    """
    origin = _absolute(origin)
    labels = origin.rstrip(".").split(".")
    if len(labels) < 2:
        raise ValueError(f"the bench zone must be below a TLD, got {origin}")
    tld = labels[-1] + "."
    root = "\n".join(
        [
            "$TTL 86400",
            f". IN SOA {ROOT_NS} hostmaster.{tld} {_SOA_TIMERS}",
            f". IN NS {ROOT_NS}",
            f"{ROOT_NS} IN A {root_address}",
            f"{tld} IN NS ns.{tld}",
            f"ns.{tld} IN A {tld_address}",
        ]
    )
    tld_zone = "\n".join(
        [
            f"$ORIGIN {tld}",
            "$TTL 86400",
            f"@ IN SOA ns.{tld} hostmaster.{tld} {_SOA_TIMERS}",
            f"@ IN NS ns.{tld}",
            f"ns IN A {tld_address}",
            f"{origin} IN NS ns.{origin}",
            f"ns.{origin} IN A {bench_address}",
        ]
    )
    zones = {
        root_address: {".": root + "\n"},
        tld_address: {tld: tld_zone + "\n"},
        bench_address: {origin: bench_zone(count, origin, bench_address, ttl)},
    }
    if len(zones) != 3:
        raise ValueError("root, TLD and bench zone need three different addresses")
    return zones


def miss_queries(count: int = 100_000, origin: str = DEFAULT_ORIGIN, seed: int = 1) -> list[str]:
    """Every name once, shuffled so that the order does not follow the zone's sort order."""
    width = name_width(count)
    origin = _absolute(origin)
    order = list(range(count))
    random.Random(seed).shuffle(order)
    return [f"n{i:0{width}d}.{origin} A" for i in order]


def hit_queries(
    count: int = 100_000, distinct: int = 100, origin: str = DEFAULT_ORIGIN
) -> list[str]:
    """A few names spread over the zone, for dnsperf to repeat."""
    if not 1 <= distinct <= count:
        raise ValueError(f"distinct names must be between 1 and {count}, got {distinct}")
    width = name_width(count)
    origin = _absolute(origin)
    step = count // distinct
    return [f"n{i * step:0{width}d}.{origin} A" for i in range(distinct)]


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--names", type=int, default=100_000, help="names in the zone")
    parser.add_argument("--origin", default=DEFAULT_ORIGIN, help="the bench zone")
    parser.add_argument("--ttl", type=int, default=3600)
    parser.add_argument("--hit-names", type=int, default=100, help="names in the hit set")
    parser.add_argument("--seed", type=int, default=1, help="shuffle seed of the miss set")
    parser.add_argument("--root-address", default=DEFAULT_ROOT_ADDRESS)
    parser.add_argument("--tld-address", default=DEFAULT_TLD_ADDRESS)
    parser.add_argument("--bench-address", default=DEFAULT_BENCH_ADDRESS)
    parser.add_argument("--out-dir", required=True, help="where zone and query files go")
    args = parser.parse_args(argv)
    try:
        zones = lab_hierarchy(
            args.names,
            args.origin,
            args.root_address,
            args.tld_address,
            args.bench_address,
            args.ttl,
        )
        hits = hit_queries(args.names, args.hit_names, args.origin)
    except ValueError as e:
        parser.error(str(e))
    os.makedirs(args.out_dir, exist_ok=True)
    for address, served in zones.items():
        for origin, text in served.items():
            file_name = zone_file_name(origin)
            _write(os.path.join(args.out_dir, file_name), text)
            print(f"{address}: {origin} -> {file_name}")
    _write(
        os.path.join(args.out_dir, "queries-miss.txt"),
        "\n".join(miss_queries(args.names, args.origin, args.seed)) + "\n",
    )
    _write(os.path.join(args.out_dir, "queries-hit.txt"), "\n".join(hits) + "\n")
    print(f"root hints: {ROOT_NS} {args.root_address}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
