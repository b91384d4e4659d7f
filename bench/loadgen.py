"""A small HTTP/1.1 load generator for the benchmarks, run as its own process.

    python bench/loadgen.py SPEC.pickle   # prints one JSON object of results

It writes prebuilt request bytes on keep-alive connections and reads each response (status
line, headers, ``content-length`` body), so its own cost per request is a few tens of
microseconds and the same for every server it is pointed at. A connection the server closes
(``connection: close``, or a reset) is reopened; a request that got no answer counts as
``no_answer``.

Two modes:

- ``closed``: ``connections`` workers; each takes the next *group* of requests (e.g. one
  call's events, sent in order) and sends them one after another. Throughput is counted over
  ``duration`` seconds after ``warmup``.
- ``open``: a schedule of ``(offset_s, target, request, tag)``; each request is sent at its
  offset whatever the previous ones are doing (on an idle connection, or a new one), and its
  latency is measured from the moment it was written.
"""

from __future__ import annotations

import asyncio
import json
import pickle
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any


class NoAnswer(Exception):
    """The connection closed before a whole response arrived."""


@dataclass(slots=True)
class Response:
    status: int
    body: bytes
    close: bool


async def read_response(reader: asyncio.StreamReader) -> Response:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        raise NoAnswer() from exc
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = 0
    close = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"connection" and value.strip().lower() == b"close":
            close = True
    try:
        body = await reader.readexactly(length) if length else b""
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        raise NoAnswer() from exc
    return Response(status, body, close)


@dataclass
class Connection:
    host: str
    port: int
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes) -> Response:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        try:
            self.writer.write(raw)
            response = await read_response(self.reader)
        except (NoAnswer, ConnectionError):
            self.close()
            raise NoAnswer() from None
        if response.close:
            self.close()
        return response

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def percentiles(samples: list[float]) -> dict[str, float]:
    """p50/p95/p99/max in milliseconds (nearest rank)."""
    if not samples:
        return {"n": 0}
    ordered = sorted(samples)

    def rank(q: float) -> float:
        index = min(len(ordered) - 1, max(0, int(-(-len(ordered) * q // 100)) - 1))
        return round(ordered[index] * 1000, 3)

    return {
        "n": len(ordered),
        "p50": rank(50),
        "p95": rank(95),
        "p99": rank(99),
        "max": round(ordered[-1] * 1000, 3),
    }


async def closed_loop(spec: dict[str, Any]) -> dict[str, Any]:
    groups: list[list[bytes]] = spec["groups"]
    targets: list[tuple[str, int]] = spec["targets"]
    connections: int = spec["connections"]
    warmup: float = spec["warmup"]
    duration: float = spec["duration"]
    loop = asyncio.get_running_loop()
    began = loop.time()
    start, stop = began + warmup, began + warmup + duration
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    counted = 0
    next_group = 0
    exhausted = False

    async def worker(n: int) -> None:
        nonlocal counted, next_group, exhausted
        host, port = targets[n % len(targets)]
        conn = Connection(host, port)
        while loop.time() < stop:
            if next_group >= len(groups):
                exhausted = True
                return
            group = groups[next_group]
            next_group += 1
            for raw in group:
                sent = time.perf_counter()
                try:
                    response = await conn.request(raw)
                    outcome = str(response.status)
                except NoAnswer:
                    outcome = "no_answer"
                done = loop.time()
                if start <= done < stop:
                    counted += 1
                    statuses[outcome] += 1
                    latencies.append(time.perf_counter() - sent)
        conn.close()

    await asyncio.gather(*(worker(n) for n in range(connections)))
    return {
        "mode": "closed",
        "requests": counted,
        "rate": counted / duration,
        "statuses": dict(statuses),
        "latency_ms": percentiles(latencies),
        "exhausted": exhausted,
    }


# Servers close idle keep-alive connections (uvicorn after 5 s); a client reusing one as it
# closes gets no answer. Like any HTTP client pool, do not reuse one idle this long.
_MAX_IDLE_S = 3.0


@dataclass
class Pool:
    host: str
    port: int
    idle: list[tuple[float, Connection]] = field(default_factory=list)

    def take(self) -> Connection:
        while self.idle:
            since, conn = self.idle.pop()
            if time.monotonic() - since < _MAX_IDLE_S:
                return conn
            conn.close()
        return Connection(self.host, self.port)

    def give(self, conn: Connection) -> None:
        if conn.writer is not None:
            self.idle.append((time.monotonic(), conn))


async def open_loop(spec: dict[str, Any]) -> dict[str, Any]:
    schedule: list[tuple[float, str, bytes, str]] = spec["schedule"]
    pools = {name: Pool(host, port) for name, (host, port) in spec["targets"].items()}
    # Warm one connection per target up front, so the first request does not pay a connect.
    for pool in pools.values():
        for _ in range(spec.get("preconnect", 4)):
            conn = pool.take()
            conn.reader, conn.writer = await asyncio.open_connection(conn.host, conn.port)
            pool.give(conn)
    loop = asyncio.get_running_loop()
    began = loop.time() + 0.2
    results: dict[str, list[dict[str, Any]]] = defaultdict(list)
    lag: list[float] = []

    async def one(target: str, raw: bytes, tag: str) -> None:
        pool = pools[target]
        conn = pool.take()
        at = loop.time() - began
        # perf_counter, not loop.time(): uvloop's clock moves in whole milliseconds.
        sent = time.perf_counter()
        try:
            response = await conn.request(raw)
            status, body = response.status, response.body[:300].decode(errors="replace")
        except NoAnswer:
            status, body = 0, "no answer"
        results[tag].append(
            {"at": at, "latency": time.perf_counter() - sent, "status": status, "body": body}
        )
        pool.give(conn)

    tasks = []
    for offset, target, raw, tag in schedule:
        delay = began + offset - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        lag.append(loop.time() - (began + offset))
        tasks.append(asyncio.create_task(one(target, raw, tag)))
    await asyncio.gather(*tasks)
    for pool in pools.values():
        for _, conn in pool.idle:
            conn.close()
    return {"mode": "open", "results": dict(results), "send_lag_ms": percentiles(lag)}


def main() -> None:
    with open(sys.argv[1], "rb") as handle:
        spec = pickle.load(handle)  # the spec file is written by the benchmark itself
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    run = closed_loop if spec["mode"] == "closed" else open_loop
    began = time.perf_counter()
    result = asyncio.run(run(spec))
    result["wall_s"] = time.perf_counter() - began
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
