"""/readyz probes every enabled provider for real (SPEC §3.5, docs/operations.md).

Twilio, ARI and the generic PBX are played by respx, answering as their documentation shows;
rtpengine by the scripted ng daemon of test_rtpengine.py on a real UDP socket. "Nothing
listens" is a real closed port on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import respx
from prometheus_client.parser import text_string_to_metric_families

from app.domain.roles import Role
from app.telephony.signing import verify
from tests.api.test_rtpengine import FakeNg, ng  # noqa: F401  (the fixture)
from tests.conftest import CONTROL_URL, Harness

AC = "AC" + "0123456789abcdef" * 2
TWILIO_TOKEN = "twilio-auth-token-for-probes-01"
TWILIO_API = "http://127.0.0.1:9/twilio-api"
ACCOUNT = f"{TWILIO_API}/2010-04-01/Accounts/{AC}.json"
ARI = "http://127.0.0.1:9/ari"
ARI_USER, ARI_PASSWORD = "recgate", "ari-password-for-probes"


def twilio_account(status: str = "active") -> dict[str, Any]:
    """The Account resource as Twilio answers ``GET /2010-04-01/Accounts/{Sid}.json``."""
    return {
        "auth_token": TWILIO_TOKEN,
        "date_created": "Thu, 30 Jul 2015 20:00:00 +0000",
        "date_updated": "Thu, 30 Jul 2015 20:00:00 +0000",
        "friendly_name": "council contact centre",
        "owner_account_sid": AC,
        "sid": AC,
        "status": status,
        "subresource_uris": {"calls": f"/2010-04-01/Accounts/{AC}/Calls.json"},
        "type": "Full",
        "uri": f"/2010-04-01/Accounts/{AC}.json",
    }


ASTERISK_INFO = {
    "build": {"os": "Linux", "kernel": "6.1.0", "machine": "x86_64", "user": "root"},
    "system": {"version": "20.5.0", "entity_id": "02:42:ac:11:00:02"},
    "config": {"name": "", "default_language": "en", "setid": {"user": "", "group": ""}},
    "status": {
        "startup_time": "2026-08-06T09:00:00.000+0000",
        "last_reload_time": "2026-08-06T09:00:00.000+0000",
    },
}


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def closed_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    """A port on 127.0.0.1 that nothing listens on (bound once, then released)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
async def mock() -> AsyncIterator[respx.MockRouter]:
    async with respx.mock(assert_all_called=False) as router:
        router.get(f"{CONTROL_URL}/health").respond(204)
        yield router


async def ready(h: Harness) -> httpx.Response:
    return await h.client.get("/readyz", headers=h.auth(Role.OPS))


def check(response: httpx.Response, name: str) -> dict[str, Any]:
    entries: list[dict[str, Any]] = response.json()["checks"][name]
    assert len(entries) == 1
    return entries[0]


def assert_timed(entry: dict[str, Any]) -> None:
    assert entry["observedUnit"] == "ms" and isinstance(entry["observedValue"], int | float)
    assert entry["observedValue"] >= 0 and entry["time"], entry


# ---- each provider's probe -----------------------------------------------------------------


async def test_twilio_probe_reads_the_account_with_basic_auth(
    make_harness: Callable[..., Any], mock: respx.MockRouter
) -> None:
    account = mock.get(ACCOUNT).respond(200, json=twilio_account())
    async with make_harness(
        twilio_account_sid=AC, twilio_auth_token=TWILIO_TOKEN, twilio_api_base=TWILIO_API
    ) as h:
        response = await ready(h)
    assert response.status_code == 200, response.text
    entry = check(response, "provider:twilio")
    assert entry["status"] == "pass" and "account active" in entry["output"]
    assert_timed(entry)
    assert account.call_count == 1
    assert account.calls.last.request.headers["authorization"] == basic(AC, TWILIO_TOKEN)
    assert TWILIO_TOKEN not in response.text, "the account resource holds the auth token"


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (httpx.Response(401, json={"code": 20003, "message": "Authenticate"}), "refused"),
        (httpx.Response(200, json=twilio_account("suspended")), "suspended"),
        (httpx.Response(503), "HTTP 503"),
    ],
    ids=["wrong credentials", "suspended account", "twilio down"],
)
async def test_twilio_probe_fails_readiness(
    make_harness: Callable[..., Any], mock: respx.MockRouter, answer: httpx.Response, why: str
) -> None:
    mock.get(ACCOUNT).mock(return_value=answer)
    async with make_harness(
        twilio_account_sid=AC, twilio_auth_token=TWILIO_TOKEN, twilio_api_base=TWILIO_API
    ) as h:
        response = await ready(h)
        public = await h.client.get("/readyz")
    assert response.status_code == 503 and response.json()["status"] == "fail"
    entry = check(response, "provider:twilio")
    assert entry["status"] == "fail" and why in entry["output"], entry
    assert public.json()["checks"]["provider:twilio"] == [{"status": "fail"}]
    assert TWILIO_TOKEN not in response.text


async def test_ari_probe_asks_asterisk_info(
    make_harness: Callable[..., Any], mock: respx.MockRouter
) -> None:
    info = mock.get(f"{ARI}/asterisk/info").respond(200, json=ASTERISK_INFO)
    async with make_harness(ari_url=ARI, ari_user=ARI_USER, ari_password=ARI_PASSWORD) as h:
        response = await ready(h)
    entry = check(response, "provider:asterisk")
    assert entry["status"] == "pass", entry
    assert entry["output"] == "asterisk ARI at 127.0.0.1: Asterisk 20.5.0"
    assert_timed(entry)
    assert info.calls.last.request.headers["authorization"] == basic(ARI_USER, ARI_PASSWORD)
    assert ARI_PASSWORD not in response.text


async def test_ari_probe_with_a_refused_password_fails(
    make_harness: Callable[..., Any], mock: respx.MockRouter
) -> None:
    mock.get(f"{ARI}/asterisk/info").respond(401, json={"message": "Authentication required"})
    async with make_harness(ari_url=ARI, ari_user=ARI_USER, ari_password=ARI_PASSWORD) as h:
        response = await ready(h)
    assert response.status_code == 503
    entry = check(response, "provider:asterisk")
    assert entry["status"] == "fail" and "RECGATE_ARI_PASSWORD is refused" in entry["output"]


async def test_generic_probe_is_a_signed_get_of_the_health_path(
    harness: Harness, mock: respx.MockRouter
) -> None:
    response = await ready(harness)
    assert response.status_code == 200, response.text
    entry = check(response, "provider:generic")
    assert entry["status"] == "pass"
    assert_timed(entry)
    [call] = mock.calls
    assert call.request.method == "GET" and str(call.request.url) == f"{CONTROL_URL}/health"
    key = harness.services.settings.generic_secret_key
    assert key is not None
    # Signed as the PBX checks commands: Standard Webhooks over the (empty) body.
    assert verify(key, call.request.headers, b"", harness.services.clock()).startswith("probe_")


async def test_generic_pbx_without_the_health_path_fails(
    harness: Harness, mock: respx.MockRouter
) -> None:
    mock.get(f"{CONTROL_URL}/health").respond(404)
    response = await ready(harness)
    assert response.status_code == 503
    entry = check(response, "provider:generic")
    assert entry["status"] == "fail" and "/health" in entry["output"]


async def test_rtpengine_probe_is_an_ng_ping(
    make_harness: Callable[..., Any],
    mock: respx.MockRouter,
    ng: FakeNg,  # noqa: F811
) -> None:
    async with make_harness(rtpengine_ng=ng.address) as h:
        response = await ready(h)
    entry = check(response, "provider:rtpengine")
    assert entry["status"] == "pass" and entry["output"].endswith(": pong"), entry
    assert_timed(entry)
    assert ng.commands() == ["ping"]


async def test_sim_passes_without_a_probe(harness: Harness, mock: respx.MockRouter) -> None:
    entry = check(await ready(harness), "provider:sim")
    assert entry["status"] == "pass" and "simulated" in entry["output"]


# ---- nothing listening -----------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["twilio", "asterisk", "generic", "rtpengine"])
async def test_nothing_listening_fails_closed(
    make_harness: Callable[..., Any], provider: str
) -> None:
    tcp = f"http://127.0.0.1:{closed_port()}"
    per_provider: dict[str, dict[str, Any]] = {
        "twilio": {
            "twilio_account_sid": AC,
            "twilio_auth_token": TWILIO_TOKEN,
            "twilio_api_base": tcp,
        },
        "asterisk": {"ari_url": f"{tcp}/ari", "ari_user": ARI_USER, "ari_password": ARI_PASSWORD},
        "generic": {"generic_control_url": f"{tcp}/pbx"},
        # No answer to a ping is only known at the timeout: keep it short.
        "rtpengine": {
            "rtpengine_ng": f"127.0.0.1:{closed_port(socket.SOCK_DGRAM)}",
            "provider_request_timeout_s": 0.3,
        },
    }
    async with make_harness(**per_provider[provider]) as h:
        response = await ready(h)
        public = await h.client.get("/readyz")
        metrics = await h.client.get("/metrics", headers=h.auth(Role.OPS))
    assert response.status_code == 503 and public.status_code == 503
    entry = check(response, f"provider:{provider}")
    assert entry["status"] == "fail", entry
    assert_timed(entry)
    assert public.json()["checks"][f"provider:{provider}"] == [{"status": "fail"}]
    values = {
        (s.name, tuple(s.labels.items())): s.value
        for family in text_string_to_metric_families(metrics.text)
        for s in family.samples
    }
    assert values[("recgate_ready", ())] == 0
    assert values[("recgate_readiness_check_failed", (("check", f"provider:{provider}"),))] == 1
    assert values[("recgate_readiness_check_failed", (("check", "database:connection"),))] == 0


# ---- caching -------------------------------------------------------------------------------


async def test_probes_are_cached_for_a_few_seconds(
    make_harness: Callable[..., Any],
    mock: respx.MockRouter,
    ng: FakeNg,  # noqa: F811
) -> None:
    health = mock.get(f"{CONTROL_URL}/health").respond(204)
    account = mock.get(ACCOUNT).respond(200, json=twilio_account())
    async with make_harness(
        rtpengine_ng=ng.address,
        twilio_account_sid=AC,
        twilio_auth_token=TWILIO_TOKEN,
        twilio_api_base=TWILIO_API,
    ) as h:
        first = await ready(h)
        # A load balancer polling hard, and a scrape, within the window: no new probe.
        polls = await asyncio.gather(*(h.client.get("/readyz") for _ in range(5)))
        await h.client.get("/metrics", headers=h.auth(Role.OPS))
        second = await ready(h)
        assert (health.call_count, account.call_count, ng.commands()) == (1, 1, ["ping"])
        assert {p.status_code for p in polls} == {200}
        assert check(second, "provider:generic")["time"] == check(first, "provider:generic")["time"]
        h.services.health.cache_s = 0  # the window has passed
        await ready(h)
        assert (health.call_count, account.call_count, ng.commands()) == (2, 2, ["ping", "ping"])


async def test_a_recovered_provider_is_ready_again_once_the_cache_expires(
    harness: Harness, mock: respx.MockRouter
) -> None:
    health = mock.get(f"{CONTROL_URL}/health")
    health.side_effect = [httpx.Response(503), httpx.Response(204)]
    assert (await ready(harness)).status_code == 503
    assert (await ready(harness)).status_code == 503, "cached"
    harness.services.health.cache_s = 0
    assert (await ready(harness)).status_code == 200
