"""Scaling out: cache-hit answers per second with 1 and 2 worker processes, and per storage.

Three measurements, each with dnsperf against ``twistd -n kresolver`` on loopback:

1. workers: ``--workers 1`` against ``--workers 2`` (and one process without a
   supervisor), on the popular-name path (whole answers from the fast path) and on the
   record-cache path (the fast path off); the ratio is the scaling factor.  In the same
   run, the yardstick: kresd with 1 and with 2 processes sharing the port (SO_REUSEPORT,
   each with its own rundir and cache) on the same names, cache hits after a warm-up,
   resolved from an NSD root on LAB_ROOT (never the real root).  dnsperf runs on the
   same machine and needs a core too, so the table shows where the cores go: each
   resolver process, dnsperf, and everything else (other users of the machine), sampled
   from /proc inside the load period.  If kresd does not scale on this machine either,
   the limit is the machine, not kresolver.
2. storages: the record-cache path (the fast path switched off, so every query reads the
   record cache through the cache layer) over memory, LMDB, Redis and memcached.  Redis
   and memcached sit behind the local memory layer, so this shows what the layering costs
   once the local layer is warm.
3. shared-cache hits: a second resolver with an empty local layer asks for names that a
   first resolver put into Redis / memcached: every query is a local miss answered from
   the backend (one round trip, bounded wait), the case of a fleet sharing a cache.

The record cache is filled by the config itself (``cache.put_rrset`` for each name), so
no upstream is involved and nothing leaves loopback.

    python bench/scale.py --seconds 8 --names 1000 --only workers
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from bench import (
    CHECKOUT,
    CLOCK_TICKS,
    arguments,
    cpu_seconds,
    dnsperf,
    kresolver,
    run_settings,
)

ADDRESS, PORT = "127.0.95.60", 5395
SECOND_ADDRESS = "127.0.95.61"
OUTGOING = "127.0.95.62"
#: the root server of the bench configs: nothing listens there
NOWHERE = "127.0.95.63"
#: the yardstick: kresd on KRESD_ADDRESS, resolving from an NSD root on LAB_ROOT
LAB_ROOT = "127.0.96.10"
KRESD_ADDRESS = "127.0.96.20"
KRESD_OUTGOING = "127.0.96.21"


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


def processes(pid: int) -> list[int]:
    """C{pid} and its children (a supervisor's workers)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [pid, *(int(child) for child in f.read().split())]
    except OSError:
        return [pid]


def cpu_by_process(pids: list[int]) -> dict[int, float]:
    found = {}
    for pid in pids:
        try:
            found[pid] = cpu_seconds(pid)
        except OSError:  # ended meanwhile
            pass
    return found


def machine_busy() -> tuple[float, float]:
    """CPU seconds all cores spent on anything but idling since boot, and of those, what
    the hypervisor took for others (steal) and interrupts took (/proc/stat)."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = (
            int(v) for v in f.readline().split()[1:9]
        )
    busy = user + nice + system + irq + softirq + steal
    return busy / CLOCK_TICKS, (steal + irq + softirq) / CLOCK_TICKS


def udp_listeners(address: str, port: int) -> int:
    """How many UDP sockets are bound to address@port (``ss``), SO_REUSEPORT siblings
    each counted."""
    lines = subprocess.run(["ss", "-Huan"], capture_output=True, text=True,
                           check=True).stdout.splitlines()
    return sum(1 for line in lines if f" {address}:{port} " in f" {line} ")


def dnsperf_pid() -> int | None:
    """The dnsperf this script runs now (a child of one of its threads)."""
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as f:
                children = [int(c) for c in f.read().split()]
        except OSError:
            continue
        for child in children:
            try:
                with open(f"/proc/{child}/comm") as f:
                    if f.read().strip() == "dnsperf":
                        return child
            except OSError:
                pass
    return None


@dataclasses.dataclass
class Sample:
    """Cumulative CPU seconds at one moment: each resolver process, dnsperf, the machine."""

    at: float
    resolver: dict[int, float]
    dnsperf: float
    busy: float
    steal: float

    @classmethod
    def take(cls, pids: list[int], client: int | None) -> Sample:
        try:
            client_cpu = cpu_seconds(client) if client else 0.0
        except OSError:  # dnsperf ended
            client_cpu = 0.0
        return cls(time.monotonic(), cpu_by_process(pids), client_cpu, *machine_busy())


@dataclasses.dataclass
class Measured:
    """One dnsperf run against one configuration, and where the machine's cores went
    (in cores: CPU seconds per second, over a window inside dnsperf's load period)."""

    config: str
    #: runs of the same kind are compared: 2 processes against 1
    kind: str
    processes: int
    result: Any
    #: each resolver process (supervisor first, then its workers)
    resolver: list[float]
    dnsperf: float
    #: the whole machine: these processes and everyone else's
    busy: float
    #: of which the hypervisor's steal and interrupt handling
    steal: float

    @classmethod
    def between(cls, config: str, kind: str, count: int, result: Any, first: Sample,
                last: Sample) -> Measured:
        span = last.at - first.at
        resolver = [(last.resolver[pid] - first.resolver[pid]) / span
                    for pid in first.resolver if pid in last.resolver]
        dnsperf_cores = max(last.dnsperf - first.dnsperf, 0.0) / span
        return cls(config, kind, count, result, resolver, dnsperf_cores,
                   (last.busy - first.busy) / span, (last.steal - first.steal) / span)

    @property
    def cpu_per_1000(self) -> float | None:
        """Resolver CPU seconds per 1,000 answers, all its processes together."""
        return sum(self.resolver) / self.result.qps * 1000 if self.result.qps else None

    def row(self, scaling: str, ideal: str = "") -> str:
        per_1000 = self.cpu_per_1000
        split = "+".join(f"{c:.2f}" for c in self.resolver)
        others = max(self.busy - sum(self.resolver) - self.dnsperf - self.steal, 0.0)
        return (f"{self.config:<36} {self.result.qps:>9,.0f} "
                f"{per_1000 * 1000 if per_1000 is not None else float('nan'):>8.1f} ms "
                f"{split:>15} {self.dnsperf:>7.2f} "
                f"{self.dnsperf / self.busy if self.busy else 0:>6.0%} "
                f"{self.steal:>6.2f} {others:>6.2f} {scaling:>7} {ideal:>7}")


HEADER = (f"{'config':<36} {'answers/s':>9} {'CPU/1000':>11} {'resolver cores':>15} "
          f"{'dnsperf':>7} {'share':>6} {'steal':>6} {'others':>6} {'scaling':>7} {'per-CPU':>7}")
LEGEND = ("CPU/1000: resolver CPU (all its processes) per 1,000 answers; resolver cores: CPU "
          "seconds per second of each process (supervisor first); dnsperf: its cores; share: "
          "dnsperf's part of all the CPU the machine spent; steal: cores the hypervisor gave "
          "to other guests plus interrupt handling; others: cores used by everything else "
          f"(other users, kernel threads) of the {os.cpu_count()}; scaling: answers/s over "
          "the 1-process run of the same kind; per-CPU: the scaling if every process had a "
          "core of its own (processes x CPU per answer of 1 / CPU per answer of this run): "
          "what the processes cost each other. Cores are sampled inside the load period.")


def measure_processes(config: str, kind: str, count: int, roots: list[int], address: str,
                      queries: str, run: dict[str, Any], passes: int | None = None,
                      warmups: int = 1) -> Measured:
    """dnsperf against the resolver processes C{roots} (and their children)."""
    for _ in range(warmups):
        dnsperf(address, PORT, queries, seconds=1, clients=run["clients"])
    if warmups:
        time.sleep(0.2)
    pids = [pid for root in roots for pid in processes(root)]
    outcome: dict[str, Any] = {}
    done = threading.Event()

    def load() -> None:
        try:
            outcome["result"] = dnsperf(address, PORT, queries, label=config, runs=passes,
                                        **run)
        except BaseException as error:  # re-raised below, in the main thread
            outcome["error"] = error
        finally:
            done.set()

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    # sampled inside the load period: not dnsperf's start, nor its wait for late answers
    margin = min(0.5, run["seconds"] / 10)
    done.wait(margin)
    client = dnsperf_pid()
    first = Sample.take(pids, client)
    done.wait(run["seconds"] - 2 * margin)
    last = Sample.take(pids, client)
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    result = outcome["result"]
    measured = Measured.between(config, kind, count, result, first, last)
    result.cpu_per_1000 = measured.cpu_per_1000
    print(result.report(), flush=True)
    print(f"  {HEADER}\n  {measured.row('')}", flush=True)
    return measured


def measure(label: str, cfg: str, queries: str, run: dict[str, Any],
            extra_args: tuple[str, ...] = (), address: str = ADDRESS,
            passes: int | None = None, warm: bool = True, kind: str = "",
            count: int = 1) -> Measured:
    """One kresolver (``twistd -n kresolver``, with C{extra_args}) under dnsperf."""
    with kresolver(cfg, address, PORT, extra_args=extra_args) as daemon:
        assert daemon.pid is not None
        if "--workers" in extra_args:
            listening = udp_listeners(address, PORT)
            if listening != count:
                raise RuntimeError(f"{label}: {listening} UDP sockets on {address}@{PORT}, "
                                   f"expected one per worker ({count})")
        return measure_processes(label, kind or label, count, [daemon.pid], address, queries,
                                 run, passes, 1 if warm else 0)


def lab_root_zone(filled: list[tuple[str, str]]) -> str:
    """The yardstick's root zone: the bench names themselves, answered by the root."""
    lines = [
        ". 86400 IN SOA a.root-servers.lab. hostmaster.lab. 1 3600 600 86400 3600",
        ". 86400 IN NS a.root-servers.lab.",
        f"a.root-servers.lab. 86400 IN A {LAB_ROOT}",
    ]
    lines += [f"{name} 86400 IN A {addr}" for name, addr in filled]
    return "\n".join(lines) + "\n"


def shared_port_kresd() -> type[Any]:
    from kresolver.testing.reference import KresdReference

    class SharedPortKresd(KresdReference):
        """A further kresd on the address@port the first one holds: kresd binds with
        SO_REUSEPORT, so the kernel spreads clients over them (kresd's multi-process
        model); the first instance holds the address lock for all of them."""

        def _claim_address(self) -> None:
            pass

    return SharedPortKresd


@contextmanager
def kresd_processes(count: int, workdir: str) -> Iterator[list[int]]:
    """C{count} kresd processes sharing KRESD_ADDRESS@PORT, each with its own rundir and
    cache, resolving from the lab root (never the real one); yields their PIDs."""
    from kresolver.testing.reference import KresdReference

    started: list[Any] = []
    try:
        for index in range(count):
            kind = KresdReference if index == 0 else shared_port_kresd()
            instance = kind(KRESD_ADDRESS, PORT, {"a.root-servers.lab.": [LAB_ROOT]},
                            os.path.join(workdir, f"kresd-{count}-{index}"), KRESD_OUTGOING)
            instance.start(timeout=30)
            started.append(instance)
        # the first process answers the later ones' readiness probes: wait for their sockets
        deadline = time.monotonic() + 10
        while (listening := udp_listeners(KRESD_ADDRESS, PORT)) < count:
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        if listening != count:
            raise RuntimeError(f"{listening} UDP sockets on {KRESD_ADDRESS}@{PORT} for "
                               f"{count} kresd processes: no SO_REUSEPORT?")
        yield [instance.pid for instance in started]
    finally:
        for instance in reversed(started):
            instance.stop()


def measure_kresd(count: int, workdir: str, queries: str, run: dict[str, Any]) -> Measured:
    with kresd_processes(count, workdir) as pids:
        # twice: each process must have resolved every name its clients will ask
        return measure_processes(f"kresd, {count} process(es)", "kresd", count, pids,
                                 KRESD_ADDRESS, queries, run, warmups=2)


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


def workers(options: Any, filled: list[tuple[str, str]], workdir: str, queries: str,
            run: dict[str, Any]) -> list[str]:
    """kresolver with 1 and 2 workers, and kresd with 1 and 2 processes on the same port,
    in one run; the table's rows."""
    from kresolver.testing.nsd import NSDServer
    from kresolver.testing.reference import KRESD

    lmdb = f"lmdb://{workdir}/lmdb-workers"
    fast, slow = config(filled, lmdb, True), config(filled, lmdb, False)
    # (config, kind, processes, how to measure it)
    plan: list[tuple[str, str, int, Any]] = [
        ("kresolver fast path, no --workers", "kresolver, one process", 0,
         lambda: measure("kresolver fast path, no --workers", fast, queries, run,
                         kind="kresolver, one process", count=1)),
    ]
    for kind, cfg in (("kresolver fast path", fast), ("kresolver record cache", slow)):
        for count in (1, 2):
            label = f"{kind}, --workers {count}"
            plan.append((label, kind, count,
                         lambda label=label, cfg=cfg, kind=kind, count=count: measure(
                             label, cfg, queries, run, ("--workers", str(count)),
                             kind=kind, count=count)))
    lab = None
    if not options.no_kresd and os.path.exists(KRESD):
        lab = NSDServer(LAB_ROOT, {".": lab_root_zone(filled)}, os.path.join(workdir, "lab"))
        for count in (1, 2):
            plan.append((f"kresd, {count} process(es)", "kresd", count,
                         lambda count=count: measure_kresd(count, workdir, queries, run)))
    best: dict[str, Measured] = {}
    try:
        if lab is not None:
            lab.start(timeout=30)
        # alternate, best of each: other load on the machine comes and goes
        for _ in range(options.rounds):
            for label, _kind, _count, how in plan:
                measured = how()
                if label not in best or measured.result.qps > best[label].result.qps:
                    best[label] = measured
    finally:
        if lab is not None:
            lab.stop()
    rows = []
    for label, kind, count, _ in plan:
        measured = best[label]
        one = next((m for m in best.values() if m.kind == kind and m.processes == 1
                    and count), None)
        scaling = f"x{measured.result.qps / one.result.qps:.2f}" if one else "-"
        # what the processes would answer with a free core each, from CPU per answer
        mine, theirs = measured.cpu_per_1000, one.cpu_per_1000 if one else None
        ideal = f"x{count * theirs / mine:.2f}" if mine and theirs else "-"
        rows.append(measured.row(scaling, ideal))
    rows.append(f"(best of {options.rounds} alternating runs of {options.seconds:g} s each, "
                f"dnsperf -c {run['clients']})")
    return rows


def wrap(text: str, width: int = 100) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width)


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
    run = run_settings(options, clients=max(options.clients, 16))
    summary: list[str] = []
    try:
        if options.only in (None, "workers"):
            table = workers(options, filled, workdir, queries, run)
            summary += ["", HEADER, *table, "", *wrap(LEGEND)]
        with backends(["redis", "memcached"]) as uris:
            if options.only in (None, "storages"):
                storages = {"memory": None, "lmdb": f"lmdb://{workdir}/lmdb", **uris}
                results = {
                    kind: measure(f"record cache over {kind}", config(filled, uri, False),
                                  queries, run).result
                    for kind, uri in storages.items()
                }
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
                                     address=SECOND_ADDRESS, passes=1, warm=False).result
                    summary.append(f"shared-cache hits from {kind}: {result.qps:,.0f}/s, "
                                   f"{result.rcodes}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print("\nsummary")
    for line in summary:
        print("  " + line)


if __name__ == "__main__":
    main()
