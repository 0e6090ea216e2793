"""The answer-from-hints path on one process: kresolver, and kresd doing the same work.

Both resolvers get the same hints (C{--names} names, A records) and dnsperf asks for them
in a loop for a bounded time; after the first round every kresolver answer comes from the
fast path (the whole-answer cache), which is what a popular name costs.

    python bench/hints.py --seconds 10
"""

from __future__ import annotations

import os
import tempfile

# run as a script: its directory (bench/) is first on sys.path, so this is bench/bench.py
from bench import arguments, dnsperf, kresd, kresolver, run_settings, warm_up

ADDRESS, PORT = "127.0.40.200", 5353
KRESD_ADDRESS = "127.0.40.201"
TARGET = 30_000


def names(count: int) -> list[tuple[str, str]]:
    return [(f"h{i}.hints.bench", f"127.0.{40 + i // 250}.{i % 250 + 1}") for i in range(count)]


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--names", type=int, default=100, help="hinted names (default 100)")
    options = parser.parse_args()
    hinted = names(options.names)
    fd, queries = tempfile.mkstemp(prefix="hints-bench-", suffix=".txt")
    with os.fdopen(fd, "w") as f:
        f.writelines(f"{name} A\n" for name, _ in hinted)
    run = run_settings(options)
    try:
        config = "".join(f"hints[{name!r}] = {addr!r}\n" for name, addr in hinted)
        config += "hints['localhost'] = '127.0.0.1'\nlog_level('warning')\n"
        with kresolver(config, ADDRESS, PORT) as daemon:
            assert daemon.pid is not None
            warm_up(ADDRESS, PORT, queries, daemon.pid)
            ours = dnsperf(ADDRESS, PORT, queries, pid=daemon.pid, label="kresolver", **run)
        print(ours.report())
        verdict = "meets" if ours.qps >= TARGET else "is BELOW"
        print(f"  {verdict} the target of {TARGET:,} answers/s from one process")
        if options.no_kresd:
            return
        lua = "".join(f"hints[{name!r}] = {addr!r}\n" for name, addr in hinted)
        try:
            with kresd(lua, KRESD_ADDRESS, PORT) as pid:
                warm_up(KRESD_ADDRESS, PORT, queries, pid)
                theirs = dnsperf(KRESD_ADDRESS, PORT, queries, pid=pid, label="kresd", **run)
        except FileNotFoundError:
            print("kresd is not installed: no comparison")
            return
        print(theirs.report())
        print(f"kresolver/kresd: {ours.qps / theirs.qps:.2f}x the answers/s", end="")
        if ours.cpu_per_1000 and theirs.cpu_per_1000:
            print(f", {ours.cpu_per_1000 / theirs.cpu_per_1000:.2f}x the CPU per answer")
        else:
            print()
    finally:
        os.unlink(queries)


if __name__ == "__main__":
    main()
