"""PostgreSQL unreachable: every answer is a 503 problem, and nothing is lost (issue 8).

recgate runs under uvicorn on a loopback port, its database reached through a TCP proxy on
loopback that the test cuts and restores (the real server stays up for the other tests).
With the database gone, a webhook is not acknowledged (503, so the PBX retries), a payment
start says ``safe_to_collect: false``, and the keep-alive connection the answers came on
stays usable. Once the database is back, the service is too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from sqlalchemy.engine import make_url

from app.config import Settings
from app.domain.roles import Role
from app.main import create_app
from app.telephony.signing import signed_headers
from tests.conftest import SECRET, event


class Proxy:
    """A TCP proxy on loopback to the database server, that can be cut and restored."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.server: asyncio.Server | None = None
        self.port = 0
        self.pipes: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        if self.server is not None and self.server.is_serving():
            return
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Refuse new connections and drop every open one, as a stopped server would."""
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()
        for writer in list(self.pipes):
            writer.transport.abort()
        self.pipes.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.pipes |= {writer, up_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self.pipes -= {writer, up_writer}


class Client:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], dict[str, Any]]:
        lines = [f"{method} {path} HTTP/1.1", "host: 127.0.0.1", f"content-length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 10)
        status_line, *header_lines = head.decode().split("\r\n")
        answer_headers = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                answer_headers[name.strip().lower()] = value.strip()
        payload = await self.reader.readexactly(int(answer_headers.get("content-length", "0")))
        return int(status_line.split()[1]), answer_headers, json.loads(payload or b"null")


@pytest.fixture
def postgres_url(database_url: str) -> str:
    if database_url.startswith("sqlite"):
        pytest.skip("the proxy cuts a network connection: PostgreSQL only")
    return database_url


@pytest.fixture
async def service(
    postgres_url: str, tmp_path: Path
) -> AsyncIterator[tuple[Proxy, Client, dict[str, str]]]:
    url = make_url(postgres_url)
    proxy = Proxy((url.host or "127.0.0.1", url.port or 5432))
    await proxy.start()
    settings = Settings(
        database_url=url.set(host="127.0.0.1", port=proxy.port).render_as_string(
            hide_password=False
        ),
        media_dir=tmp_path / "media",
        generic_webhook_secret=SECRET,
        generic_control_url="http://127.0.0.1:9/pbx",
        background_jobs=False,
        _env_file=None,
    )
    app = create_app(settings)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    )
    serving = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started:
            break
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    token = await app.state.services.tokens.create("ivr", Role.IVR)
    client = Client(*await asyncio.open_connection("127.0.0.1", port))
    try:
        yield proxy, client, {"authorization": f"Bearer {token}"}
    finally:
        client.writer.close()
        server.should_exit = True
        await proxy.start()  # let the service close its pool cleanly
        await serving
        await proxy.cut()


def signed(body: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    raw = json.dumps(body).encode()
    key = Settings(generic_webhook_secret=SECRET, _env_file=None).generic_secret_key
    assert key is not None
    headers = signed_headers(key, raw, datetime.now(UTC))
    headers["content-type"] = "application/json"
    return raw, headers


async def test_database_down_is_503_fail_closed_on_a_surviving_connection(
    service: tuple[Proxy, Client, dict[str, str]],
) -> None:
    proxy, client, ivr = service
    started, headers = signed(event("call.started", call_id="db-down"))
    status, _, _ = await client.request("POST", "/v1/webhooks/generic", started, headers)
    assert status == 200

    await proxy.cut()

    answered, headers = signed(event("call.answered", call_id="db-down"))
    status, answer_headers, problem = await client.request(
        "POST", "/v1/webhooks/generic", answered, headers
    )
    assert status == 503, problem
    assert answer_headers["content-type"].startswith("application/problem+json")
    assert problem["type"].endswith("/database-unavailable")
    assert answer_headers.get("retry-after") == "1", "the PBX should retry, not give up"

    status, _, problem = await client.request(
        "POST", "/v1/calls/generic/db-down/payment/start", b"{}", ivr
    )
    assert status == 503, problem
    assert problem["safe_to_collect"] is False
    assert problem["type"].endswith("/database-unavailable")

    status, _, problem = await client.request(
        "POST", "/v1/calls/generic/db-down/payment/end", b"{}", ivr
    )
    assert status == 503 and problem["safe_to_collect"] is False

    status, _, live = await client.request("GET", "/livez")
    assert (status, live) == (200, {"status": "pass"}), "the keep-alive connection was dropped"

    # The database comes back: the PBX's retry of the unacknowledged webhook is applied.
    await proxy.start()
    for _ in range(3):  # a pooled connection cut with the proxy may fail once more
        status, _, ack = await client.request("POST", "/v1/webhooks/generic", answered, headers)
        if status == 200:
            break
    assert (status, ack) == (200, {"status": "applied"})
