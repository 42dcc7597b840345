"""A small HTTP/1.1 keep-alive load generator, used when ``wrk`` is not on PATH.

``python -m bench.loadgen --port P --path /x [--header 'K: V'] --connections N
--duration S --warmup W`` opens N connections to 127.0.0.1, each sending GET
and reading the whole response (by Content-Length) in a loop, and prints one
JSON line: completed requests and non-2xx counts inside the measured window
(after the warm-up), its length in seconds, and requests per second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time


class _Counts:
    def __init__(self) -> None:
        self.ok = 0
        self.non_2xx = 0
        self.errors = 0


async def _connection(
    host: str, port: int, request: bytes, start: float, end: float, counts: _Counts
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < end:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            status = int(lines[0].split(b" ", 2)[1])
            length = None
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            if length is None:
                raise RuntimeError("response without Content-Length")
            await reader.readexactly(length)
            now = time.perf_counter()
            if start <= now <= end:
                if 200 <= status < 300:
                    counts.ok += 1
                else:
                    counts.non_2xx += 1
    except (OSError, asyncio.IncompleteReadError, RuntimeError, ValueError, IndexError):
        counts.errors += 1
    finally:
        writer.close()


async def run(
    host: str,
    port: int,
    path: str,
    headers: list[str],
    connections: int,
    duration: float,
    warmup: float,
) -> dict[str, float | int]:
    """Load ``path`` and return the counts of the measured window."""
    head = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", *headers, "", ""]
    request = "\r\n".join(head).encode()
    start = time.perf_counter() + warmup
    end = start + duration
    counts = _Counts()
    await asyncio.gather(
        *(_connection(host, port, request, start, end, counts) for _ in range(connections))
    )
    return {
        "requests": counts.ok,
        "non_2xx": counts.non_2xx,
        "errors": counts.errors,
        "seconds": duration,
        "rps": counts.ok / duration,
    }


def main() -> None:
    """Parse arguments, run, print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--header", action="append", default=[])
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    args = parser.parse_args()
    result = asyncio.run(
        run(
            args.host,
            args.port,
            args.path,
            args.header,
            args.connections,
            args.duration,
            args.warmup,
        )
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
