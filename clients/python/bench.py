"""Requests per second from one Python process: ``concurrency`` tasks on
one AsyncClient (one pipelined TLS connection) call ``devices`` for
enrolled users for ``duration`` seconds.

    SLS_BIN=target/release python3 clients/python/bench.py --duration 10

starts a daemon of its own (release binaries from SLS_BIN) unless
``--node HOST:PORT --data-dir DIR`` name a running one.
"""

import argparse
import asyncio
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "src"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "tests"))

import sls  # noqa: E402


async def run(node, certs, concurrency, duration):
    latencies = []
    async with sls.AsyncClient(node, **certs, max_in_flight=concurrency) as client:
        await client.devices("bench0")
        deadline = time.perf_counter() + duration

        async def worker(index):
            user = f"bench{index % 100}"
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                await client.devices(user)
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    at = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000  # noqa: E731
    print(
        f"{len(latencies)} requests in {elapsed:.1f} s: {len(latencies) / elapsed:,.0f} requests/s "
        f"from one Python process, {concurrency} in flight on one connection; "
        f"latency p50 {at(0.5):.2f} ms, p99 {at(0.99):.2f} ms; {os.cpu_count()} cores"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--node", help="a running daemon's TCP/TLS address")
    parser.add_argument("--data-dir", help="its data directory (for the certificates)")
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args()
    daemon = None
    if args.node:
        data = args.data_dir or "slsd-data"
        certs = {"ca": f"{data}/ca.pem", "cert": f"{data}/gateway.pem", "key": f"{data}/gateway.key"}
        node = args.node
    else:
        from daemon import Daemon

        daemon = Daemon()
        daemon.admin("enroll", "bench0", "scc")
        certs, node = daemon.certs(), daemon.tcp
    try:
        asyncio.run(run(node, certs, args.concurrency, args.duration))
    finally:
        if daemon is not None:
            daemon.close()


if __name__ == "__main__":
    main()
