"""How a big RPZ block list costs: load time, memory, and policy time per query.

Writes an RPZ file of N triggers (mostly ``CNAME .``, some wildcards, NODATA,
passthru and local A records, as real feeds mix them), loads it through ``policy.rpz``
as a config would, and prints:

- load time and the growth of the process's resident memory (RSS) it caused;
- the policy layer's cost per query (``begin`` on a parsed request) for names the list
  does not hold, with and without the list loaded, and for blocked names.

    python bench/rpz.py --entries 1000000
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import tempfile
import time

import dns.message
from twisted.internet import reactor

from kresolver.engine import Engine
from kresolver.resolve.request import Request


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def write_rpz(path: str, entries: int, seed: int = 1) -> list[str]:
    """Write the list; return a sample of blocked names (text)."""
    rng = random.Random(seed)
    sample = []
    with open(path, "w") as f:
        f.write("$TTL 300\n$ORIGIN rpz.bench.\n")
        f.write("@ SOA ns.rpz.bench. hostmaster.rpz.bench. 1 3600 600 86400 300\n")
        f.write("@ NS ns.rpz.bench.\n")
        for i in range(entries):
            name = f"h{i:07d}.d{rng.randrange(10**6):06d}.example"
            kind = i % 100
            if kind < 90:
                f.write(f"{name} CNAME .\n")
            elif kind < 95:
                f.write(f"*.{name} CNAME .\n")
            elif kind < 97:
                f.write(f"{name} CNAME *.\n")
            elif kind < 98:
                f.write(f"{name} CNAME rpz-passthru.\n")
            else:
                f.write(f"{name} 60 IN A 192.0.2.{i % 250 + 1}\n")
            if i % (entries // 1000 or 1) == 0 and kind < 90:
                sample.append(name + ".")
    return sample


def requests(engine: Engine, names: list[str]) -> list[Request]:
    out = []
    for name in names:
        query = dns.message.make_query(name, "A")
        out.append(Request(engine, query.to_wire(), query, ("127.0.60.9", 5353),
                           ("127.0.60.1", 53), "udp", 0.0))
    return out


def per_query_us(engine: Engine, names: list[str], rounds: int) -> float:
    policy = engine.modules["policy"]
    reqs = requests(engine, names)
    begin = policy.begin
    best = float("inf")
    for _ in range(rounds):
        for req in reqs:  # fresh state for each pass
            req.state = 1
        start = time.perf_counter()
        for req in reqs:
            begin(req)
        best = min(best, (time.perf_counter() - start) / len(reqs))
    return best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    tmp = tempfile.mkdtemp(prefix="rpz-bench-")
    path = os.path.join(tmp, "block.rpz")
    start = time.perf_counter()
    sample = write_rpz(path, args.entries)
    size = os.path.getsize(path)
    print(f"wrote {args.entries:,} triggers ({size / 2**20:.1f} MiB) in "
          f"{time.perf_counter() - start:.1f} s")

    engine = Engine(reactor)
    engine.modules.load("policy")
    unrelated = [f"www{i}.unrelated{i % 97}.example.org." for i in range(args.queries)]
    before = per_query_us(engine, unrelated, args.rounds)

    gc.collect()
    rss0 = rss_mb()
    start = time.perf_counter()
    engine.run_config(f"policy.add(policy.rpz(policy.DENY, {path!r}, watch=False))")
    load = time.perf_counter() - start
    gc.collect()
    rss1 = rss_mb()
    rule = engine.namespace["policy"].rules[-1]
    print(f"loaded {len(rule.cb.zone):,} triggers in {load:.2f} s; "
          f"RSS +{rss1 - rss0:.0f} MiB ({rss1:.0f} MiB total)")

    after = per_query_us(engine, unrelated, args.rounds)
    blocked_names = (sample * (args.queries // max(1, len(sample)) + 1))[: args.queries]
    blocked = per_query_us(engine, blocked_names, args.rounds)
    print(f"policy per query, unrelated name: {before:.2f} us without the list, "
          f"{after:.2f} us with it (+{after - before:.2f} us)")
    print(f"policy per query, blocked name (NXDOMAIN built): {blocked:.2f} us")
    os.unlink(path)
    os.rmdir(tmp)


if __name__ == "__main__":
    main()
