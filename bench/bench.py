"""The generic benchmark runner: a resolver in a subprocess, dnsperf against it, figures.

A bench script (``bench/hints.py`` ...) says what to serve and what to ask; this module
starts ``twistd -n kresolver`` (or ``kresd``) as one process, runs dnsperf for a bounded
time, and reports:

- answers per second, and how many queries were lost;
- latency: dnsperf's own average, min, max and standard deviation, and percentiles
  computed from its per-query lines (``-v`` prints the latency of every answer);
- CPU seconds the resolver process spent per 1,000 answers (utime + stime from
  ``/proc/PID/stat`` before and after the run): what one answer costs, whatever the
  client's speed.

Everything listens on loopback; the runs are bounded by ``-l SECONDS``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import dns.exception
import dns.message
import dns.query
import dns.rcode

from kresolver.testing.daemon import Daemon

# Benchmarks run on loopback labs only: every kresolver they start (as a subprocess, which
# inherits this) refuses to ask anything but loopback addresses, whatever its config says.
os.environ.setdefault("KRESOLVER_LOOPBACK_ONLY", "1")

DNSPERF = "dnsperf"
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PERCENTILES = (50, 90, 99, 99.9)


@dataclasses.dataclass
class Result:
    """What one dnsperf run measured."""

    label: str
    sent: int
    completed: int
    lost: int
    qps: float
    avg_ms: float
    min_ms: float
    max_ms: float
    stddev_ms: float
    percentiles_ms: dict[float, float]
    cpu_per_1000: float | None
    rcodes: str

    def report(self) -> str:
        pct = "  ".join(f"p{p:g} {v:.3f}" for p, v in self.percentiles_ms.items())
        cpu = (f"{self.cpu_per_1000 * 1000:.1f} ms CPU per 1,000 answers "
               f"({self.cpu_per_1000 * 1e6 / 1000:.1f} us each)"
               if self.cpu_per_1000 is not None else "CPU: n/a")
        return (
            f"{self.label}: {self.qps:,.0f} answers/s "
            f"({self.completed:,} of {self.sent:,} answered, {self.lost:,} lost; {self.rcodes})\n"
            f"  latency ms: avg {self.avg_ms:.3f} (min {self.min_ms:.3f}, max {self.max_ms:.3f}, "
            f"stddev {self.stddev_ms:.3f})\n"
            f"  percentiles ms (dnsperf -v): {pct}\n"
            f"  {cpu}"
        )


def cpu_seconds(pid: int) -> float:
    """utime + stime of process C{pid}, in seconds (its threads included)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    # fields[0] is the state (field 3 of proc(5)); utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def percentile(sorted_values: Sequence[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(p / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


_STAT = {
    "sent": re.compile(r"Queries sent:\s+(\d+)"),
    "completed": re.compile(r"Queries completed:\s+(\d+)"),
    "lost": re.compile(r"Queries lost:\s+(\d+)"),
    "qps": re.compile(r"Queries per second:\s+([\d.]+)"),
    "avg": re.compile(r"Average Latency \(s\):\s+([\d.]+) \(min ([\d.]+), max ([\d.]+)\)"),
    "stddev": re.compile(r"Latency StdDev \(s\):\s+([\d.]+)"),
    "rcodes": re.compile(r"Response codes:\s+(.*)"),
}


def dnsperf(
    address: str,
    port: int,
    queries: str,
    seconds: float = 10.0,
    clients: int = 4,
    outstanding: int = 200,
    max_qps: int | None = None,
    pid: int | None = None,
    label: str = "",
    tcp: bool = False,
    runs: int | None = None,
) -> Result:
    """Run dnsperf against C{address}@C{port} with the query file C{queries}.

    C{runs} stops dnsperf after that many passes over the file (``-n``), whichever of
    that and C{seconds} comes first: a cache-miss run must not ask a name twice.
    """
    if shutil.which(DNSPERF) is None:
        raise SystemExit("dnsperf is not installed (Debian package dnsperf)")
    argv = [DNSPERF, "-s", address, "-p", str(port), "-d", queries, "-l", str(seconds),
            "-c", str(clients), "-q", str(outstanding), "-v"]
    if max_qps:
        argv += ["-Q", str(max_qps)]
    if tcp:
        argv += ["-m", "tcp"]
    if runs:
        argv += ["-n", str(runs)]
    before = cpu_seconds(pid) if pid else None
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    latencies: list[float] = []
    summary: list[str] = []
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("> "):
            try:
                latencies.append(float(line.rsplit(None, 1)[1]) * 1000)
            except ValueError:
                summary.append(line)
        else:
            summary.append(line)
    if process.wait(timeout=seconds + 30) != 0:
        raise RuntimeError("dnsperf failed:\n" + "".join(summary))
    after = cpu_seconds(pid) if pid else None
    text = "".join(summary)
    found = {key: pattern.search(text) for key, pattern in _STAT.items()}
    missing = [key for key, match in found.items() if match is None]
    if missing:
        raise RuntimeError(f"cannot read {missing} from dnsperf's output:\n{text}")
    completed = int(found["completed"].group(1))  # type: ignore[union-attr]
    latencies.sort()
    avg = found["avg"]
    return Result(
        label=label or f"{address}@{port}",
        sent=int(found["sent"].group(1)),  # type: ignore[union-attr]
        completed=completed,
        lost=int(found["lost"].group(1)),  # type: ignore[union-attr]
        qps=float(found["qps"].group(1)),  # type: ignore[union-attr]
        avg_ms=float(avg.group(1)) * 1000,  # type: ignore[union-attr]
        min_ms=float(avg.group(2)) * 1000,  # type: ignore[union-attr]
        max_ms=float(avg.group(3)) * 1000,  # type: ignore[union-attr]
        stddev_ms=float(found["stddev"].group(1)) * 1000,  # type: ignore[union-attr]
        percentiles_ms={p: percentile(latencies, p) for p in PERCENTILES},
        cpu_per_1000=((after - before) / completed * 1000
                      if before is not None and after is not None and completed else None),
        rcodes=found["rcodes"].group(1).strip(),  # type: ignore[union-attr]
    )


def answers(address: str, port: int, name: str = "localhost.", rdtype: str = "A") -> bool:
    try:
        response = dns.query.udp(dns.message.make_query(name, rdtype), address, port=port,
                                 timeout=0.3)
    except (OSError, dns.exception.DNSException):
        return False
    return response.rcode() == dns.rcode.NOERROR


@contextmanager
def kresolver(config: str, address: str, port: int, probe: str = "localhost.",
              extra_args: Sequence[str] = ()) -> Iterator[Daemon]:
    """``twistd -n kresolver`` with C{config} (Python) on address@port, one process."""
    workdir = tempfile.mkdtemp(prefix="kresolver-bench-")
    config_path = os.path.join(workdir, "kresolver.conf")
    with open(config_path, "w") as f:
        f.write(config)
    env_path = os.pathsep.join(p for p in (CHECKOUT, os.environ.get("PYTHONPATH")) if p)
    os.environ["PYTHONPATH"] = env_path
    daemon = Daemon(
        "kresolver",
        [*TWISTD, "-n", "--pidfile=", "kresolver", "-c", config_path,
         "--listen", f"{address}@{port}", *extra_args],
        os.path.join(workdir, "kresolver.log"),
        workdir,
    )
    try:
        daemon.start(lambda: answers(address, port, probe), timeout=30)
        yield daemon
    finally:
        daemon.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def kresd(extra_config: str, address: str, port: int) -> Iterator[int]:
    """kresd on address@port with C{extra_config} (Lua), loopback root hints only, no
    trust anchor and none of the modules that query by themselves (see
    L{kresolver.testing.reference.KresdReference}).  Yields its PID."""
    from kresolver.testing.reference import KRESD, KresdReference

    if not os.path.exists(KRESD):
        raise FileNotFoundError(KRESD)
    workdir = tempfile.mkdtemp(prefix="kresd-bench-")
    # nothing listens there: kresd must never need the root for what a bench asks
    reference = KresdReference(address, port, {"a.root-servers.lab.": ["127.0.40.254"]},
                               workdir, address, extra_config=extra_config)
    try:
        reference.start(timeout=30)
        assert reference.pid is not None
        yield reference.pid
    finally:
        reference.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def arguments(description: str) -> argparse.ArgumentParser:
    """The options every bench script shares."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--seconds", type=float, default=10.0, help="dnsperf -l (default 10)")
    parser.add_argument("--clients", type=int, default=4, help="dnsperf -c (default 4)")
    parser.add_argument("--outstanding", type=int, default=200, help="dnsperf -q (default 200)")
    parser.add_argument("--max-qps", type=int, default=None, help="dnsperf -Q")
    parser.add_argument("--tcp", action="store_true", help="query over TCP")
    parser.add_argument("--no-kresd", action="store_true", help="skip the kresd comparison")
    return parser


def run_settings(options: argparse.Namespace, **overrides: Any) -> dict[str, Any]:
    """The dnsperf keyword arguments the shared options stand for."""
    run = {
        "seconds": options.seconds,
        "clients": options.clients,
        "outstanding": options.outstanding,
        "max_qps": options.max_qps,
        "tcp": options.tcp,
    }
    run.update(overrides)
    return run


def warm_up(address: str, port: int, queries: str, pid: int) -> None:
    """A short run first: the answer cache fills and Python's caches warm."""
    dnsperf(address, port, queries, seconds=1, pid=pid)
    time.sleep(0.2)
