"""recgate's HTTP/1.1 connections to the providers, under ``httpx``'s client.

The payment gate's one provider command is on the IVR's path, and ``httpx``'s own transport
(its connection pool, ``anyio``'s streams and cancel scopes, ``h11``'s state machine) cost
more CPU than the rest of the command: on the 2-core benchmark machine a command to a PBX on
loopback cost 0.55-0.64 ms of CPU through it and 0.28 ms through this one, under the same
client (docs/gate.md). This transport keeps to what recgate's calls need: HTTP/1.1 with
keep-alive, TLS, bodies of known length or chunked, responses read by ``httptools`` (the C
parser uvicorn reads recgate's own requests with) and streamed to the caller (media copies)
with back-pressure. The client above it is unchanged: authentication, redirects, cookies,
decoding, and the timeouts it hands down (connect, read, write, pool), whose expiry raises
the same ``httpx`` exceptions as its own transport. Behind a proxy named in the environment
the client keeps ``httpx``'s own transport (:func:`provider_client`).

What it refuses rather than half-does: a method that is not an HTTP token, header names or
values with CR, LF or NUL (no request splitting); an upgrade (101), a response head over
64 KiB or with more than 100 headers, a body without a length ended by a reset rather than
an orderly close (never taken as whole).
"""

from __future__ import annotations

import asyncio
import re
import ssl
import sys
import time
import urllib.request
from collections import deque
from collections.abc import AsyncIterator
from contextlib import suppress
from dataclasses import dataclass, field
from typing import cast

import httptools
import httpx

_MAX_HEAD = 64 * 1024
_MAX_HEADERS = 100
# Body bytes held for a caller who reads slower than the provider sends: reading from the
# socket stops above this.
_HIGH_WATER = 256 * 1024
_FORBIDDEN = (b"\r", b"\n", b"\0")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")

Origin = tuple[str, str, int]


@dataclass
class _Exchange:
    """One response as it arrives: the head (once complete), the body's chunks."""

    head_only: bool
    status: int = 0
    reason: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    head_size: int = 0
    fed: int = 0
    version: str = "1.1"
    chunks: deque[bytes] = field(default_factory=deque)
    buffered: int = 0
    complete: bool = False
    keep_alive: bool = False
    error: Exception | None = None


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; one exchange at a time."""

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: _Exchange | None = None
        self.closed = False
        self.idle_since = time.monotonic()
        self._wake: asyncio.Future[None] | None = None
        self._writable: asyncio.Future[None] | None = None
        self._paused = False

    # ---- the socket --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio's classes, only alike.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None or exchange.complete:
            # Bytes nobody asked for: the connection cannot be trusted with the next request.
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(httpx.RemoteProtocolError("the server switched protocols"))
            return
        except httptools.HttpParserError as exc:
            # A callback's own exception comes out as the parser's, the callback's as context.
            cause = exc.__context__
            if isinstance(cause, _Unasked):
                self.close()  # the exchange is complete; the connection is not to be reused
            elif isinstance(cause, _HeadTooLarge):
                self._fail(httpx.RemoteProtocolError(str(cause)))
            else:
                self._fail(httpx.RemoteProtocolError(f"malformed response: {exc}"))
            return
        if not exchange.status and exchange.error is None:
            # The parser holds a header cut short until its end: count what it was given.
            exchange.fed += len(data)
            if exchange.fed > _MAX_HEAD:
                self._fail(httpx.RemoteProtocolError(f"response head over {_MAX_HEAD} bytes"))

    def eof_received(self) -> bool | None:
        self._lost(None)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost(exc)

    def pause_writing(self) -> None:
        loop = asyncio.get_running_loop()
        if self._writable is None or self._writable.done():
            self._writable = loop.create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def _lost(self, exc: Exception | None) -> None:
        self.closed = True
        exchange = self.exchange
        if exchange is not None and not exchange.complete and exchange.error is None:
            if exc is None and exchange.status and _ends_at_close(exchange):
                # No length given: the body ran to the (orderly) end of the connection.
                exchange.complete = True
            else:
                cause = "closed the connection" if exc is None else f"failed: {exc}"
                kind = httpx.RemoteProtocolError if exc is None else httpx.ReadError
                exchange.error = kind(f"the server {cause} before the response was complete")
        self.resume_writing()
        self._signal()

    def _fail(self, error: Exception) -> None:
        if self.exchange is not None and self.exchange.error is None:
            self.exchange.error = error
        self.close()
        self._signal()

    def _signal(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    # ---- httptools' callbacks ----------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.exchange is None or self.exchange.complete:
            raise _Unasked

    def on_status(self, status: bytes) -> None:
        assert self.exchange is not None
        self.exchange.reason += status
        self._grow(len(status))

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.exchange is not None
        self._grow(len(name) + len(value))
        if len(self.exchange.headers) >= _MAX_HEADERS:
            raise _HeadTooLarge(f"more than {_MAX_HEADERS} response headers")
        self.exchange.headers.append((name, value))

    def on_headers_complete(self) -> None:
        exchange = self.exchange
        assert exchange is not None
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            # An interim answer (100 Continue): the real one follows.
            exchange.reason, exchange.headers, exchange.head_size, exchange.fed = b"", [], 0, 0
            return
        exchange.status = status
        exchange.version = self.parser.get_http_version()
        if exchange.head_only:
            # No body follows a HEAD's answer whatever its length says; the parser does not
            # know the request was a HEAD, so the connection is not used again.
            exchange.complete = True
            self.close()
        self._signal()

    def on_body(self, body: bytes) -> None:
        exchange = self.exchange
        assert exchange is not None
        if exchange.complete:
            return  # after a HEAD's answer: not its body
        exchange.chunks.append(body)
        exchange.buffered += len(body)
        if exchange.buffered > _HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._signal()

    def on_message_complete(self) -> None:
        exchange = self.exchange
        assert exchange is not None
        if exchange.status == 0:
            return  # the end of an interim answer
        exchange.complete = True
        # Asked now: once the message is over, the parser has forgotten it.
        exchange.keep_alive = self.parser.should_keep_alive()
        self._signal()

    def _grow(self, size: int) -> None:
        assert self.exchange is not None
        self.exchange.head_size += size
        if self.exchange.head_size > _MAX_HEAD:
            raise _HeadTooLarge(f"response head over {_MAX_HEAD} bytes")

    # ---- the caller's side -------------------------------------------------------------

    def reusable(self, expiry: float) -> bool:
        return (
            not self.closed
            and self.transport is not None
            and not self.transport.is_closing()
            and time.monotonic() - self.idle_since < expiry
        )

    async def send(
        self,
        head: bytes,
        body: bytes | None,
        stream: httpx.SyncByteStream | httpx.AsyncByteStream,
        write_s: float | None,
        method: str,
    ) -> None:
        """Write the request: head and a body in memory in one write, a streamed body chunked
        when its headers say so (``httpx`` sets them), as it is read."""
        self.exchange = _Exchange(head_only=method == "HEAD")
        assert self.transport is not None
        if self.closed or self.transport.is_closing():
            raise httpx.WriteError("the connection closed before the request was sent")
        if body is not None:
            self.transport.write(head + body)
            await self._drained(write_s)
            return
        assert isinstance(stream, httpx.AsyncByteStream)
        chunked = b"\r\ntransfer-encoding: chunked\r\n" in head.lower()
        self.transport.write(head)
        async for part in stream:
            if part:
                self.transport.write(b"%x\r\n%b\r\n" % (len(part), part) if chunked else part)
                await self._drained(write_s)
        if chunked:
            self.transport.write(b"0\r\n\r\n")
        await self._drained(write_s)

    async def _drained(self, write_s: float | None) -> None:
        if self._writable is None or self._writable.done():
            return
        try:
            async with asyncio.timeout(write_s):
                await asyncio.shield(self._writable)
        except TimeoutError:
            raise httpx.WriteTimeout("timed out sending the request") from None

    async def head(self, read_s: float | None) -> None:
        """Until the response's head is in (or the exchange failed)."""
        exchange = self.exchange
        assert exchange is not None
        while not exchange.status and exchange.error is None:
            await self._more(read_s)
        if exchange.error is not None:
            raise exchange.error

    async def chunk(self, read_s: float | None) -> bytes | None:
        """The next piece of the body; None at its end."""
        exchange = self.exchange
        assert exchange is not None
        while not exchange.chunks:
            if exchange.error is not None:
                raise exchange.error
            if exchange.complete:
                return None
            await self._more(read_s)
        part = exchange.chunks.popleft()
        exchange.buffered -= len(part)
        if self._paused and exchange.buffered <= _HIGH_WATER // 2 and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return part

    async def _more(self, read_s: float | None) -> None:
        if self.closed and self.exchange is not None and self.exchange.error is None:
            # Closed with the exchange neither complete nor failed: cannot happen, but a
            # wait here would never end.
            if not self.exchange.complete:
                self.exchange.error = httpx.ReadError("connection closed")
            return
        self._wake = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(read_s):
                await self._wake
        except TimeoutError:
            self.close()
            raise httpx.ReadTimeout("timed out reading the response") from None
        finally:
            self._wake = None


class _HeadTooLarge(Exception):
    pass


class _Unasked(Exception):
    """A response after the one asked for."""


def _ends_at_close(exchange: _Exchange) -> bool:
    names = {name.lower() for name, _ in exchange.headers}
    return b"content-length" not in names and b"transfer-encoding" not in names


class _Body(httpx.AsyncByteStream):
    """A response's body, read from its connection as the caller asks for it; the connection
    goes back to the pool once the body has been read to its end."""

    def __init__(self, pool: Http1Transport, conn: _Connection, read_s: float | None) -> None:
        self.pool, self.conn, self.read_s = pool, conn, read_s
        self.done = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while (part := await self.conn.chunk(self.read_s)) is not None:
            yield part

    async def aclose(self) -> None:
        if self.done:
            return
        self.done = True
        exchange = self.conn.exchange
        keep = exchange is not None and exchange.keep_alive and not exchange.chunks
        self.pool.release(self.conn, keep=keep)


class Http1Transport(httpx.AsyncBaseTransport):
    """HTTP/1.1 connections kept alive per origin: at most ``limits.max_connections`` open,
    ``limits.max_keepalive_connections`` of them idle, each idle ``limits.keepalive_expiry``
    seconds at most (5 by default)."""

    def __init__(self, limits: httpx.Limits, ssl_context: ssl.SSLContext | None = None) -> None:
        self.ssl_context = ssl_context or httpx.create_ssl_context()
        # None: no limit, as httpx reads it.
        self.max_open = sys.maxsize if limits.max_connections is None else limits.max_connections
        kept = limits.max_keepalive_connections
        self.max_idle = self.max_open if kept is None else kept
        self.expiry = 5.0 if limits.keepalive_expiry is None else limits.keepalive_expiry
        self._idle: dict[Origin, list[_Connection]] = {}
        self._idle_count = 0
        self._open = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        scheme = request.url.scheme
        if scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {scheme!r}")
        timeouts = request.extensions.get("timeout", {})
        port = request.url.port or (443 if scheme == "https" else 80)
        head, body = _serialise(request)
        # The host as it goes on the wire (an international name in its IDNA form).
        host = request.url.raw_host.decode("ascii")
        origin, reuse = (scheme, host, port), True
        while True:
            conn, reused = await self._acquire(origin, timeouts, reuse=reuse)
            try:
                await conn.send(head, body, request.stream, timeouts.get("write"), request.method)
                await conn.head(timeouts.get("read"))
                break
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
                unanswered = conn.exchange is not None and not conn.exchange.fed
                self.release(conn, keep=False)
                if not (reused and unanswered and body is not None):
                    raise
                # A kept connection the server closed as the request went (its own idle
                # timeout ran out first): no byte of an answer came, so the request goes once
                # more, whole, on a new connection. Provider commands bear repeating.
                reuse = False
            except BaseException:
                self.release(conn, keep=False)
                raise
        exchange = conn.exchange
        assert exchange is not None
        return httpx.Response(
            exchange.status,
            headers=exchange.headers,
            stream=_Body(self, conn, timeouts.get("read")),
            extensions={
                "http_version": b"HTTP/" + exchange.version.encode("ascii"),
                "reason_phrase": exchange.reason,
            },
            request=request,
        )

    async def _acquire(
        self, origin: Origin, timeouts: dict[str, float | None], *, reuse: bool
    ) -> tuple[_Connection, bool]:
        """A connection to ``origin``, and whether it was kept from an earlier request: an
        idle one when ``reuse``, else a new one as soon as there is room."""
        pool_s = timeouts.get("pool")
        loop = asyncio.get_running_loop()
        by = None if pool_s is None else loop.time() + pool_s
        while True:
            if self._closed:
                raise httpx.ConnectError("the transport is closed")
            conn = self._take_idle(origin) if reuse else None
            if conn is not None:
                return conn, True
            if self._open < self.max_open or self._close_an_idle():
                break
            await self._room(by)
        self._open += 1
        try:
            return await self._connect(origin, timeouts.get("connect")), False
        except BaseException:
            self._open -= 1
            self._wake_one()
            raise

    def _take_idle(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            self._idle_count -= 1
            if conn.reusable(self.expiry):
                return conn
            self._drop(conn)
        return None

    async def _room(self, by: float | None) -> None:
        """Until a connection is released or closed (``by``: the pool timeout's end)."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout_at(by):
                await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                # Woken, but leaving (cancelled, out of time): the room is the next one's.
                self._wake_one()
            else:
                waiter.cancel()
                with suppress(ValueError):
                    self._waiters.remove(waiter)
            if isinstance(exc, TimeoutError):
                raise httpx.PoolTimeout("no connection free in time") from None
            raise

    async def _connect(self, origin: Origin, connect_s: float | None) -> _Connection:
        scheme, host, port = origin
        secure = scheme == "https"
        try:
            async with asyncio.timeout(connect_s):
                _, conn = await asyncio.get_running_loop().create_connection(
                    lambda: _Connection(origin),
                    host,
                    port,
                    ssl=self.ssl_context if secure else None,
                    server_hostname=host if secure else None,
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"connecting to {host}:{port} timed out") from None
        except OSError as exc:  # ssl.SSLError among them
            raise httpx.ConnectError(f"connecting to {host}:{port}: {exc}") from exc
        return conn

    def release(self, conn: _Connection, *, keep: bool) -> None:
        """Take back a connection whose exchange is over: kept idle when ``keep`` and there
        is room, closed otherwise."""
        conn.exchange = None
        if keep and not self._closed and conn.reusable(self.expiry):
            if self._idle_count >= self.max_idle and not self._close_an_idle():
                self._drop(conn)
                return
            conn.idle_since = time.monotonic()
            self._idle.setdefault(conn.origin, []).append(conn)
            self._idle_count += 1
            self._wake_one()
            return
        self._drop(conn)

    def _close_an_idle(self) -> bool:
        """Close the connection idle longest, if any: room for another."""
        oldest: list[_Connection] | None = None
        for idle in self._idle.values():
            if idle and (oldest is None or idle[0].idle_since < oldest[0].idle_since):
                oldest = idle
        if oldest is None:
            return False
        self._idle_count -= 1
        self._drop(oldest.pop(0))
        return True

    def _drop(self, conn: _Connection) -> None:
        conn.close()
        self._open -= 1
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def aclose(self) -> None:
        """Close the idle connections; a request waiting for room fails, and one in flight
        closes its connection when it is done."""
        self._closed = True
        for idle in self._idle.values():
            while idle:
                self._drop(idle.pop())
        self._idle_count = 0
        while self._waiters:
            self._wake_one()


def _serialise(request: httpx.Request) -> tuple[bytes, bytes | None]:
    """The request's head, and its body when that is in memory (None: stream it)."""
    if not _TOKEN.fullmatch(request.method):
        raise httpx.LocalProtocolError("the request method is not an HTTP token")
    target = request.url.raw_path
    if any(c in target for c in (*_FORBIDDEN, b" ")):
        raise httpx.LocalProtocolError("the request target holds a forbidden byte")
    lines = [request.method.encode("ascii") + b" " + target + b" HTTP/1.1"]
    for name, value in request.headers.raw:
        if b":" in name or any(c in name or c in value for c in _FORBIDDEN):
            raise httpx.LocalProtocolError("a request header holds a forbidden byte")
        lines.append(name + b": " + value)
    body = bytes(request.content) if isinstance(request.stream, httpx.ByteStream) else None
    return b"\r\n".join(lines) + b"\r\n\r\n", body


# How long an idle provider connection is kept. A council's payments come seconds or minutes
# apart per replica: after httpx's default of 5 s nearly every payment start would open a new
# connection first (TCP and TLS: two or three more round trips to a cloud provider). Under
# the 60 s idle timeout common to providers' load balancers. A connection whose close the
# transport has read is not reused; one closed as a request goes on it (a provider whose own
# timeout is shorter) sends the request again on a new one (handle_async_request).
PROVIDER_KEEPALIVE_S = 50.0


def provider_client(timeout_s: float) -> httpx.AsyncClient:
    """The client every provider call shares: explicit timeouts, no redirects followed, at
    most 100 connections (20 idle, each for :data:`PROVIDER_KEEPALIVE_S`), on
    :class:`Http1Transport`. When the environment names a proxy (``HTTP_PROXY``,
    ``HTTPS_PROXY``, ``ALL_PROXY``) it keeps ``httpx``'s own transport: ``httpx`` honours
    those only on a client given no transport."""
    limits = httpx.Limits(
        max_connections=100, max_keepalive_connections=20, keepalive_expiry=PROVIDER_KEEPALIVE_S
    )
    proxied = any(scheme in ("http", "https", "all") for scheme in urllib.request.getproxies())
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout_s, connect=min(1.0, timeout_s)),
        limits=limits,
        transport=None if proxied else Http1Transport(limits),
        follow_redirects=False,
    )
