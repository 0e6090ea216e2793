"""Scaling out: cache-hit answers per second with 1 and 2 worker processes, and per storage.

Three measurements, each with dnsperf against ``twistd -n kresolver`` on loopback:

1. workers: ``--workers 1`` against ``--workers 2``, on the popular-name path (whole
   answers from the fast path) and on the record-cache path (the fast path off); the
   ratio is the scaling factor.  dnsperf runs on the same machine and needs a core too:
   on a 2-core machine, where one worker already keeps dnsperf busy on the fast path,
   a second worker only adds contention; the heavier record-cache path shows the gain.
2. storages: the record-cache path (the fast path switched off, so every query reads the
   record cache through the cache layer) over memory, LMDB, Redis and memcached.  Redis
   and memcached sit behind the local memory layer, so this shows what the layering costs
   once the local layer is warm.
3. shared-cache hits: a second resolver with an empty local layer asks for names that a
   first resolver put into Redis / memcached: every query is a local miss answered from
   the backend (one round trip, bounded wait), the case of a fleet sharing a cache.

The record cache is filled by the config itself (``cache.put_rrset`` for each name), so
no upstream is involved and nothing leaves loopback.

    python bench/scale.py --seconds 5 --names 1000
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from bench import CHECKOUT, arguments, cpu_seconds, dnsperf, kresolver

ADDRESS, PORT = "127.0.90.60", 5390
SECOND_ADDRESS = "127.0.90.61"
OUTGOING = "127.0.90.62"
#: the root server of the bench configs: nothing listens there
NOWHERE = "127.0.90.63"


def names(count: int) -> list[tuple[str, str]]:
    return [(f"n{i}.scale.bench.", f"192.0.2.{i % 250 + 1}") for i in range(count)]


def config(filled: list[tuple[str, str]], storage: str | None, fast_path: bool,
           fill: bool = True) -> str:
    lines = [
        "import dns.rrset",
        "from kresolver.cache.cache import Rank",
        "log_level('warning')",
        "hints['localhost'] = '127.0.0.1'",
        # loopback only: a miss must never reach the real root; nothing listens there
        f"hints.root({{'a.root-servers.lab.': [{NOWHERE!r}]}})",
        f"net.outgoing_v4({OUTGOING!r})",
        "net.ipv6 = False",
    ]
    if storage:
        lines.append(f"cache.open(64 * MB, {storage!r})")
    if not fast_path:
        lines.append("engine.answers.enabled = False")
    if fill:
        # once the reactor runs, so that writes to a shared backend find it connected
        lines.append("def _fill():")
        lines.append(f"    for _name, _addr in {filled!r}:")
        lines.append("        cache.put_rrset(dns.rrset.from_text(_name, 86400, 'IN', 'A', "
                     "_addr), Rank.AUTH_ANSWER)")
        lines.append("_fill()" if not storage or "://" not in storage or
                     storage.startswith(("lmdb", "memory")) else
                     "engine.reactor.callLater(0.5, _fill)")
    return "\n".join(lines) + "\n"


def family_cpu(pid: int) -> float:
    """CPU seconds of C{pid} and its live children (the workers)."""
    total = cpu_seconds(pid)
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = [int(c) for c in f.read().split()]
    except OSError:
        children = []
    for child in children:
        try:
            total += cpu_seconds(child)
        except OSError:
            pass
    return total


def measure(label: str, cfg: str, queries: str, run: dict[str, Any],
            extra_args: tuple[str, ...] = (), address: str = ADDRESS,
            passes: int | None = None, warm: bool = True) -> Any:
    with kresolver(cfg, address, PORT, extra_args=extra_args) as daemon:
        assert daemon.pid is not None
        if warm:
            dnsperf(address, PORT, queries, seconds=1, clients=run["clients"])
            time.sleep(0.2)
        before = family_cpu(daemon.pid)
        result = dnsperf(address, PORT, queries, label=label, runs=passes, **run)
        spent = family_cpu(daemon.pid) - before
    result.cpu_per_1000 = spent / result.completed * 1000 if result.completed else None
    print(result.report(), flush=True)
    return result


@contextmanager
def backends(kinds: list[str]) -> Iterator[dict[str, str]]:
    """Start the backends asked for; yield {kind: storage URI}."""
    from kresolver.testing.services import MemcachedServer, RedisServer

    started: list[Any] = []
    uris: dict[str, str] = {}
    try:
        if "redis" in kinds and shutil.which("redis-server"):
            server = RedisServer(maxmemory="256mb")
            server.start()
            started.append(server)
            uris["redis"] = server.uri
        if "memcached" in kinds and shutil.which("memcached"):
            server = MemcachedServer()
            server.start()
            started.append(server)
            uris["memcached"] = server.uri
        yield uris
    finally:
        for server in started:
            server.cleanup()


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--names", type=int, default=1000, help="cached names (default 1000)")
    parser.add_argument("--only", choices=("workers", "storages", "shared"), default=None)
    parser.add_argument("--rounds", type=int, default=2, help="worker runs each (default 2)")
    options = parser.parse_args()
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (CHECKOUT, os.environ.get("PYTHONPATH")) if p
    )
    filled = names(options.names)
    workdir = tempfile.mkdtemp(prefix="kresolver-scale-")
    queries = os.path.join(workdir, "queries.txt")
    with open(queries, "w") as f:
        f.writelines(f"{name} A\n" for name, _ in filled)
    run = {"seconds": options.seconds, "clients": max(options.clients, 8),
           "outstanding": options.outstanding, "max_qps": options.max_qps, "tcp": options.tcp}
    summary: list[str] = []
    try:
        if options.only in (None, "workers"):
            # alternate the two, best of each: other load on the machine comes and goes
            for fast_path, path in ((True, "fast path"), (False, "record cache")):
                lmdb = f"lmdb://{workdir}/lmdb-workers"
                best: dict[int, Any] = {}
                for _ in range(options.rounds):
                    for count in (1, 2):
                        result = measure(f"{count} worker(s), {path}",
                                         config(filled, lmdb, fast_path), queries, run,
                                         ("--workers", str(count)))
                        if count not in best or result.qps > best[count].qps:
                            best[count] = result
                one, two = best[1].qps, best[2].qps
                summary.append(f"workers, {path} (best of {options.rounds}): 1 -> {one:,.0f}/s,"
                               f" 2 -> {two:,.0f}/s, scaling x{two / one:.2f} (dnsperf shares "
                               f"the {os.cpu_count()} cores)")
        with backends(["redis", "memcached"]) as uris:
            if options.only in (None, "storages"):
                results = {}
                storages = {"memory": None, "lmdb": f"lmdb://{workdir}/lmdb", **uris}
                for kind, uri in storages.items():
                    results[kind] = measure(f"record cache over {kind}",
                                            config(filled, uri, False), queries, run)
                base = results["memory"].qps
                summary.append("record-cache path: " + ", ".join(
                    f"{kind} {r.qps:,.0f}/s ({r.qps / base:.2f}x)" for kind, r in results.items()
                ))
            if options.only in (None, "shared"):
                for kind, uri in uris.items():
                    # the first resolver fills the backend, the second starts cold and
                    # reads every name from it once (dnsperf -n 1: no name asked twice)
                    with kresolver(config(filled, uri, False), ADDRESS, PORT):
                        time.sleep(2.0)  # the fill and its fire-and-forget writes are done
                    result = measure(f"shared {kind} hits (local layer cold)",
                                     config(filled, uri, False, fill=False), queries,
                                     {**run, "seconds": max(options.seconds, 30)},
                                     address=SECOND_ADDRESS, passes=1, warm=False)
                    summary.append(f"shared-cache hits from {kind}: {result.qps:,.0f}/s, "
                                   f"{result.rcodes}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print("\nsummary")
    for line in summary:
        print("  " + line)


if __name__ == "__main__":
    main()
