"""recgate's provider transport (app/telephony/transport.py) against real sockets on
loopback: a server that answers each request with the next scripted reply, byte for byte."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import cast

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from app.telephony.transport import Http1Transport, provider_client

Reply = bytes | Callable[[asyncio.StreamWriter], Awaitable[None]] | None


def ok(body: bytes, *headers: str) -> bytes:
    extra = "".join(f"{h}\r\n" for h in headers)
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%b\r\n%b" % (len(body), extra.encode(), body)


class Scripted:
    """Answers each request with the next reply: bytes to write, a coroutine that writes, or
    None to close without answering. Keeps every request's head and body, and counts
    connections."""

    def __init__(self, replies: list[Reply]) -> None:
        self.replies = replies
        self.requests: list[tuple[bytes, bytes]] = []
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests.append((head, await _body(reader, head)))
                reply = self.replies.pop(0)
                if reply is None:
                    return
                if isinstance(reply, bytes):
                    writer.write(reply)
                    await writer.drain()
                    if b"connection: close" in reply.lower():
                        return
                else:
                    await reply(writer)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the client went, or the test is over
        finally:
            writer.close()


async def _body(reader: asyncio.StreamReader, head: bytes) -> bytes:
    lowered = head.lower()
    if b"transfer-encoding: chunked" in lowered:
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            parts.append(await reader.readexactly(size + 2))
            if size == 0:
                return b"".join(p[:-2] for p in parts)
    for line in lowered.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return await reader.readexactly(int(line.split(b":")[1]))
    return b""


@asynccontextmanager
async def serving(
    replies: list[Reply], tls: ssl.SSLContext | None = None
) -> AsyncIterator[tuple[Scripted, str]]:
    scripted = Scripted(replies)
    server = await asyncio.start_server(scripted.handle, "127.0.0.1", 0, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield scripted, f"{'https' if tls else 'http'}://127.0.0.1:{port}"


def client(
    base: str,
    *,
    timeout: float | httpx.Timeout = 2.0,
    limits: httpx.Limits | None = None,
    **kwargs: object,
) -> httpx.AsyncClient:
    transport = Http1Transport(limits or httpx.Limits(max_connections=10), **kwargs)  # type: ignore[arg-type]
    return httpx.AsyncClient(base_url=base, transport=transport, timeout=timeout)


async def test_a_connection_is_kept_alive_and_reused() -> None:
    replies: list[Reply] = [ok(b'{"state":"paused"}'), ok(b"second")]
    async with serving(replies) as (pbx, base), client(base) as http:
        first = await http.post("/calls/a/recording/pause", json={"behavior": "silence"})
        second = await http.get("/calls/a")
    assert first.status_code == 200 and first.json() == {"state": "paused"}
    assert second.text == "second"
    assert pbx.connections == 1
    head, body = pbx.requests[0]
    assert head.startswith(b"POST /calls/a/recording/pause HTTP/1.1\r\n")
    assert b"\r\nhost: 127.0.0.1:" in head.lower()
    assert body == b'{"behavior":"silence"}'


async def test_bodies_chunked_or_to_the_end_of_the_connection() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    to_close = b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end"
    async with serving([chunked, to_close, ok(b"fresh")]) as (pbx, base), client(base) as http:
        assert (await http.get("/a")).text == "hello world"
        assert (await http.get("/b")).text == "until the end"
        assert (await http.get("/c")).text == "fresh"
    # The chunked answer's connection served the next request; the one read to its close
    # could not, so the third went on a new connection.
    assert pbx.connections == 2


async def test_a_head_answer_has_no_body_whatever_its_length_says() -> None:
    # Bytes after the head are not its body, whatever its length says.
    head_answer = b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n" + b"not the body"
    async with serving([head_answer, ok(b"next")]) as (pbx, base), client(base) as http:
        head = await http.head("/media/1")
        after = await http.get("/b")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == "1000"
    assert after.text == "next"
    assert pbx.connections == 2


async def test_an_interim_answer_is_passed_over() -> None:
    interim = b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"final", "x-a: 1")
    async with serving([interim]) as (_, base), client(base) as http:
        answer = await http.post("/a", content=b"x")
    assert answer.status_code == 200 and answer.text == "final"
    assert answer.headers["x-a"] == "1"


async def test_a_streamed_request_body_goes_chunked() -> None:
    async def parts() -> AsyncIterator[bytes]:
        yield b"first,"
        yield b""
        yield b"second"

    async with serving([ok(b"got it")]) as (pbx, base), client(base) as http:
        answer = await http.post("/upload", content=parts())
    assert answer.text == "got it"
    head, body = pbx.requests[0]
    assert b"transfer-encoding: chunked" in head.lower()
    assert body == b"first,second"


async def test_a_large_body_is_streamed_whole() -> None:
    payload = bytes(range(256)) * (3 * 1024 * 4)  # 3 MiB: well over what is held unread

    async def slow_reader_reply(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(payload))
        for start in range(0, len(payload), 64 * 1024):
            writer.write(payload[start : start + 64 * 1024])
            await writer.drain()

    async with serving([slow_reader_reply, ok(b"after")]) as (pbx, base), client(base) as http:
        received = bytearray()
        async with http.stream("GET", "/media") as response:
            async for part in response.aiter_raw():
                received += part
                await asyncio.sleep(0)  # a reader slower than the socket
        assert bytes(received) == payload
        assert (await http.get("/next")).text == "after"
    assert pbx.connections == 1


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (None, "closed the connection before the response was complete"),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\nconnection: close\r\n\r\nshort",
            "closed the connection before",
        ),
        (b"NOT HTTP AT ALL\r\n\r\n", "malformed response"),
        (b"HTTP/1.1 200 OK\r\nx-big: " + b"a" * 70_000 + b"\r\n\r\n", "response head over"),
        (b"HTTP/1.1 200 OK\r\n" + b"x-h: 1\r\n" * 101 + b"\r\n", "more than 100 response headers"),
        (
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: ws\r\nconnection: upgrade\r\n\r\n",
            "switched",
        ),
    ],
)
async def test_a_broken_answer_is_a_protocol_error(reply: Reply, error: str) -> None:
    async with serving([reply]) as (_, base), client(base) as http:
        with pytest.raises(httpx.RemoteProtocolError, match=error):
            await http.get("/a")


async def test_a_header_that_never_ends_is_cut_off_at_the_head_limit() -> None:
    async def endless(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nx-endless: ")
        for _ in range(1000):  # 64 MiB if nobody stopped reading
            writer.write(b"a" * 65536)
            await writer.drain()

    async with serving([endless]) as (_, base), client(base, timeout=5.0) as http:
        with pytest.raises(httpx.RemoteProtocolError, match="response head over"):
            await http.get("/a")


async def test_a_reset_before_a_body_without_length_ended_is_an_error() -> None:
    partial_read = asyncio.Event()

    async def reset(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\npartial")
        await writer.drain()
        await partial_read.wait()
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # RST, not FIN: the body did not end here

    async with (
        serving([reset]) as (_, base),
        client(base) as http,
        http.stream("GET", "/media") as response,
    ):
        body = response.aiter_raw()
        assert await anext(body) == b"partial"
        partial_read.set()
        with pytest.raises(httpx.ReadError, match="before the response was complete"):
            await anext(body)


async def test_a_body_left_unread_keeps_its_connection_from_reuse() -> None:
    payload = b"x" * (1024 * 1024)
    async with serving([ok(payload), ok(b"next")]) as (pbx, base), client(base) as http:
        async with http.stream("GET", "/media") as response:
            async for _ in response.aiter_raw():
                break  # the caller gives up after its first piece
        assert (await http.get("/b")).text == "next"
    assert pbx.connections == 2


async def test_a_no_content_answer_leaves_the_connection_reusable() -> None:
    no_content = b"HTTP/1.1 204 No Content\r\n\r\n"
    async with serving([no_content, ok(b"next")]) as (pbx, base), client(base) as http:
        assert (await http.post("/a", content=b"x")).status_code == 204
        assert (await http.get("/b")).text == "next"
    assert pbx.connections == 1


async def test_no_answer_in_time_is_a_read_timeout_and_the_connection_is_dropped() -> None:
    async def never(writer: asyncio.StreamWriter) -> None:
        await asyncio.Event().wait()  # no answer, until the test is over

    async with serving([never, ok(b"later")]) as (pbx, base), client(base, timeout=0.2) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.get("/a")
        assert (await http.get("/b")).text == "later"
    assert pbx.connections == 2


async def test_nobody_listening_is_a_connect_error() -> None:
    async with serving([]) as (_, base):
        pass  # closed: the port is free again
    async with client(base) as http:
        with pytest.raises(httpx.ConnectError):
            await http.get("/a")


@pytest.mark.parametrize(
    "headers",
    [{"x-injected": "a\r\nx-evil: 1"}, {"x-nul": "a\x00b"}],
)
async def test_a_header_that_would_split_the_request_is_refused_unsent(
    headers: dict[str, str],
) -> None:
    async with serving([ok(b"")]) as (pbx, base), client(base) as http:
        with pytest.raises((httpx.LocalProtocolError, ValueError)):
            await http.get("/a", headers=headers)
    assert pbx.requests == []


async def test_a_method_that_would_split_the_request_is_refused_unsent() -> None:
    async with serving([ok(b"")]) as (pbx, base), client(base) as http:
        with pytest.raises(httpx.LocalProtocolError):
            await http.request("GET /x HTTP/1.1\r\nx-a: b\r\n\r\nGET", "/a")
    assert pbx.requests == []


async def test_bytes_nobody_asked_for_keep_the_connection_from_reuse() -> None:
    async with (
        serving([ok(b"one") + b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", ok(b"two")]) as (
            pbx,
            base,
        ),
        client(base) as http,
    ):
        assert (await http.get("/a")).text == "one"
        assert (await http.get("/b")).text == "two"
    assert pbx.connections == 2


ONE_CONNECTION = httpx.Limits(max_connections=1, max_keepalive_connections=1)


async def queued(http: httpx.AsyncClient, count: int) -> None:
    """Until ``count`` requests wait for a connection (the loop turned, no time passing)."""
    transport = cast(Http1Transport, http._transport)
    for _ in range(1000):
        if len(transport._waiters) >= count:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{count} requests never queued for a connection")


async def test_past_the_connection_limit_requests_wait_their_turn() -> None:
    release = asyncio.Event()

    async def held(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\na")
        await writer.drain()
        await release.wait()
        writer.write(b"b")
        await writer.drain()

    async with (
        serving([held, ok(b"second waiter")]) as (pbx, base),
        client(base, limits=ONE_CONNECTION) as http,
    ):
        async with http.stream("GET", "/held") as streaming:
            with pytest.raises(httpx.PoolTimeout):
                await http.get("/too-many", timeout=httpx.Timeout(2.0, pool=0.2))
            first = asyncio.create_task(http.get("/first"))
            second = asyncio.create_task(http.get("/second"))
            await queued(http, 2)
            release.set()
            assert await streaming.aread() == b"ab"
        # The connection is free and the first waiter woken; it gives up before it runs, and
        # the connection goes to the next.
        first.cancel()
        assert (await second).text == "second waiter"
        with pytest.raises(asyncio.CancelledError):
            await first
    assert pbx.connections == 1


def test_a_proxy_in_the_environment_keeps_httpx_own_transport(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert isinstance(provider_client(1.0)._transport, Http1Transport)
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:3128")
    assert not isinstance(provider_client(1.0)._transport, Http1Transport)


async def test_provider_calls_reach_a_proxy_named_in_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    refused = b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n"
    async with serving([refused]) as (proxy, base):
        monkeypatch.setenv("HTTPS_PROXY", base)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        async with provider_client(1.0) as http:
            with pytest.raises(httpx.ProxyError):
                await http.post("https://api.twilio.example/2010-04-01/x.json")
    assert proxy.requests[0][0].startswith(b"CONNECT api.twilio.example:443 HTTP/1.1")


def _self_signed(directory: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = directory / "cert.pem"
    key_pem = directory / "key.pem"
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_pem, key_pem)
    trusting = ssl.create_default_context(cafile=str(cert_pem))
    return server, trusting


async def test_tls_is_verified(tmp_path: Path) -> None:
    server_tls, trusting = _self_signed(tmp_path)
    async with serving([ok(b"secure"), ok(b"again")], tls=server_tls) as (pbx, base):
        async with client(base, ssl_context=trusting) as http:
            assert (await http.get("/a")).text == "secure"
            assert (await http.get("/b")).text == "again"
        assert pbx.connections == 1
        # Nor does it take the certificate for another address. An address, not a name:
        # looking "localhost" up once outlasted the connect timeout in CI.
        other = await asyncio.start_server(pbx.handle, "127.0.0.2", 0, ssl=server_tls)
        elsewhere = f"https://127.0.0.2:{other.sockets[0].getsockname()[1]}"
        async with other, client(elsewhere, ssl_context=trusting) as http:
            with pytest.raises(httpx.ConnectError, match=r"certificate|hostname|IP address"):
                await http.get("/c")
        # The default context does not trust a certificate nobody signed.
        async with client(base) as http:
            with pytest.raises(httpx.ConnectError):
                await http.get("/c")


def _idle_for(http: httpx.AsyncClient, seconds: float) -> None:
    """Age the client's idle connections as if ``seconds`` had passed."""
    transport = http._transport
    assert isinstance(transport, Http1Transport)
    for idle in transport._idle.values():
        for conn in idle:
            conn.idle_since -= seconds


async def test_a_provider_connection_outlives_a_quiet_spell_between_payments() -> None:
    """Payments come minutes apart: the connection a pause went on is reused by the next one
    30 s later (httpx's own default would have dropped it after 5 s), not after 50 s."""
    replies: list[Reply] = [ok(b"one"), ok(b"two"), ok(b"three")]
    async with serving(replies) as (pbx, base):
        http = provider_client(2.0)
        try:
            assert (await http.post(f"{base}/pause")).text == "one"
            _idle_for(http, 30)
            assert (await http.post(f"{base}/pause")).text == "two"
            assert pbx.connections == 1
            _idle_for(http, 51)
            assert (await http.post(f"{base}/pause")).text == "three"
            assert pbx.connections == 2
        finally:
            await http.aclose()


async def test_a_connection_the_provider_closed_while_idle_is_not_reused() -> None:
    async def answer_then_close(writer: asyncio.StreamWriter) -> None:
        writer.write(ok(b"one"))
        await writer.drain()
        writer.close()

    replies: list[Reply] = [answer_then_close, ok(b"two")]
    async with serving(replies) as (pbx, base):
        http = provider_client(2.0)
        try:
            assert (await http.post(f"{base}/pause")).text == "one"
            transport = http._transport
            assert isinstance(transport, Http1Transport)
            for _ in range(100):  # until the transport has read the close
                if all(conn.closed for idle in transport._idle.values() for conn in idle):
                    break
                await asyncio.sleep(0.01)
            else:
                pytest.fail("the provider's close was never seen")
            assert (await http.post(f"{base}/pause")).text == "two"
            assert pbx.connections == 2
            assert len(pbx.requests) == 2  # the closed one was not written to
        finally:
            await http.aclose()


async def test_a_kept_connection_closed_as_the_request_goes_is_tried_once_more() -> None:
    """The provider's own idle timeout ran out as the pause went: no byte of an answer came
    on the kept connection, so the request goes again, whole, on a new one."""
    replies: list[Reply] = [ok(b"one"), None, ok(b"two")]
    async with serving(replies) as (pbx, base), client(base) as http:
        assert (await http.post("/pause", json={"behavior": "silence"})).text == "one"
        second = await http.post("/pause", json={"behavior": "silence"})
    assert second.text == "two"
    assert pbx.connections == 2
    assert [body for _, body in pbx.requests] == [b'{"behavior":"silence"}'] * 3


async def test_a_new_connection_closed_without_an_answer_is_not_tried_again() -> None:
    replies: list[Reply] = [None, ok(b"never asked for")]
    async with serving(replies) as (pbx, base), client(base) as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.post("/pause", json={"behavior": "silence"})
    assert pbx.connections == 1 and len(pbx.requests) == 1


async def test_a_kept_connection_that_began_an_answer_is_not_tried_again() -> None:
    async def half_a_head(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-len")
        await writer.drain()
        writer.close()

    replies: list[Reply] = [ok(b"one"), half_a_head, ok(b"never asked for")]
    async with serving(replies) as (pbx, base), client(base) as http:
        assert (await http.get("/calls/a")).text == "one"
        with pytest.raises(httpx.RemoteProtocolError):
            await http.get("/calls/a")
    assert len(pbx.requests) == 2
