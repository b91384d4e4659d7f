"""Every endpoint refuses a missing token (401) and a wrong role (403)."""

from __future__ import annotations

import asyncio

import pytest

from app.domain.roles import Role
from app.main import create_app
from tests.conftest import Harness

# Every route and who may use it (admin may use all). Webhooks authenticate by signature and
# the probes are open; everything else must appear here.
PROTECTED: dict[tuple[str, str], frozenset[Role]] = {
    ("POST", "/v1/calls/{provider}/{provider_call_id}/payment/start"): frozenset({Role.IVR}),
    ("POST", "/v1/calls/{provider}/{provider_call_id}/payment/end"): frozenset({Role.IVR}),
    ("GET", "/v1/calls/{provider}/{provider_call_id}"): frozenset(
        {Role.IVR, Role.SUPERVISOR, Role.DPO}
    ),
    ("GET", "/v1/status"): frozenset({Role.OPS}),
    ("GET", "/metrics"): frozenset({Role.OPS}),
    ("GET", "/v1/recordings"): frozenset({Role.SUPERVISOR, Role.DPO}),
    ("GET", "/v1/recordings/{recording_id}"): frozenset({Role.SUPERVISOR, Role.DPO}),
    ("GET", "/v1/recordings/{recording_id}/media"): frozenset({Role.SUPERVISOR, Role.DPO}),
    ("DELETE", "/v1/recordings/{recording_id}"): frozenset({Role.DPO}),
    ("POST", "/v1/recordings/{recording_id}/holds"): frozenset({Role.DPO}),
    ("POST", "/v1/recordings/{recording_id}/holds/{hold_id}/release"): frozenset({Role.DPO}),
    ("POST", "/v1/holds"): frozenset({Role.DPO}),
    ("POST", "/v1/holds/{hold_id}/release"): frozenset({Role.DPO}),
    ("GET", "/v1/retention/policy"): frozenset({Role.DPO}),
    ("PUT", "/v1/retention/policy/{service_area}"): frozenset({Role.DPO}),
    ("GET", "/v1/retention/due"): frozenset({Role.DPO}),
    ("POST", "/v1/retention/sweep"): frozenset({Role.DPO}),
    ("GET", "/v1/audit"): frozenset({Role.DPO}),
    ("GET", "/v1/audit/verify"): frozenset({Role.DPO}),
    ("POST", "/v1/recordings/{recording_id}/disclosures"): frozenset({Role.DPO}),
    ("GET", "/v1/recordings/{recording_id}/disclosures"): frozenset({Role.DPO}),
    ("GET", "/v1/disclosures"): frozenset({Role.DPO}),
    ("GET", "/v1/subject-access"): frozenset({Role.DPO}),
}
OPEN = {
    ("GET", "/livez"),
    ("GET", "/readyz"),
    ("POST", "/v1/webhooks/generic"),
    ("POST", "/v1/webhooks/sim"),
    ("POST", "/v1/webhooks/asterisk"),
    ("POST", "/v1/webhooks/twilio/call-status"),
    ("POST", "/v1/webhooks/twilio/recording-status"),
    ("POST", "/v1/webhooks/rtpengine"),
    ("POST", "/v1/webhooks/sip-proxy"),
    ("POST", "/v1/webhooks/amazon-connect"),
    ("POST", "/v1/webhooks/genesys"),
}


def _concrete(path: str) -> str:
    return (
        path.replace("{provider}", "generic")
        .replace("{provider_call_id}", "c-auth")
        .replace("{recording_id}", "00000000-0000-0000-0000-000000000001")
        .replace("{hold_id}", "00000000-0000-0000-0000-000000000002")
        .replace("{service_area}", "council_tax")
    )


def test_every_route_is_classified() -> None:
    schema = create_app().openapi()
    routes = {(method.upper(), path) for path, ops in schema["paths"].items() for method in ops}
    assert routes == set(PROTECTED) | OPEN, "a new endpoint needs an entry in PROTECTED or OPEN"


@pytest.mark.parametrize(("method", "path"), sorted(PROTECTED))
async def test_missing_or_unknown_token_is_401(harness: Harness, method: str, path: str) -> None:
    for headers in (
        {},
        {"authorization": "Bearer rg_not-a-real-token"},
        {"authorization": "Basic abc"},
    ):
        response = await harness.client.request(method, _concrete(path), headers=headers)
        assert response.status_code == 401, f"{method} {path} with {headers or 'no header'}"
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(("method", "path"), sorted(PROTECTED))
async def test_wrong_role_is_403_and_right_role_passes_auth(
    harness: Harness, method: str, path: str
) -> None:
    allowed = PROTECTED[(method, path)] | {Role.ADMIN}
    for role in Role:
        response = await harness.client.request(method, _concrete(path), headers=harness.auth(role))
        if role in allowed:
            assert response.status_code not in (401, 403), (
                f"{role} must be admitted to {method} {path}"
            )
        else:
            assert response.status_code == 403, f"{role} must be refused {method} {path}"
            assert response.json()["type"].endswith("/forbidden")


async def test_revoked_token_stops_working(harness: Harness) -> None:
    await harness.services.tokens.revoke("test-ops")
    response = await harness.client.get("/v1/status", headers=harness.auth(Role.OPS))
    assert response.status_code == 401


async def test_token_revoked_here_stops_working_at_once_though_it_was_kept(
    harness: Harness,
) -> None:
    ops = harness.auth(Role.OPS)
    assert (await harness.client.get("/v1/status", headers=ops)).status_code == 200
    await harness.services.tokens.revoke("test-ops")
    assert (await harness.client.get("/v1/status", headers=ops)).status_code == 401


async def test_token_revoked_by_another_process_stops_working_within_the_cache_time(
    harness: Harness,
) -> None:
    import sqlalchemy as sa

    harness.services.auth.ttl_s = 0.2
    ops = harness.auth(Role.OPS)
    assert (await harness.client.get("/v1/status", headers=ops)).status_code == 200
    # As `recgate tokens revoke` on another replica does: only the row changes.
    async with harness.services.engine.begin() as conn:
        await conn.execute(
            sa.text("UPDATE api_tokens SET revoked_at = created_at WHERE name = 'test-ops'")
        )
    assert (await harness.client.get("/v1/status", headers=ops)).status_code == 200, "kept"
    await asyncio.sleep(0.25)
    assert (await harness.client.get("/v1/status", headers=ops)).status_code == 401


async def test_tokens_are_stored_only_as_hashes(harness: Harness) -> None:
    import sqlalchemy as sa

    async with harness.services.engine.connect() as conn:
        hashes = (await conn.execute(sa.text("SELECT token_hash FROM api_tokens"))).scalars().all()
    assert len(hashes) == len(Role)
    assert not set(hashes) & set(harness.tokens.values())


async def test_public_metrics_need_no_token(make_harness) -> None:  # type: ignore[no-untyped-def]
    async with make_harness(metrics_public=True) as h:
        assert (await h.client.get("/metrics")).status_code == 200


async def test_a_check_that_read_its_row_before_a_revoke_here_does_not_keep_it() -> None:
    """On PostgreSQL the read awaits: a revoke may land while it is in flight."""
    from app.services.tokens import TokenAuthenticator

    class SlowDatabase:
        def __init__(self) -> None:
            self.reading = asyncio.Event()
            self.release = asyncio.Event()
            self.reads = 0

        async def read(self, work: object) -> tuple[str, str]:
            self.reads += 1
            self.reading.set()
            await self.release.wait()
            return ("test-ops", "ops")

    db = SlowDatabase()
    auth = TokenAuthenticator(db)  # type: ignore[arg-type]
    token = "rg_" + "x" * 43
    check = asyncio.create_task(auth.authenticate(token))
    await db.reading.wait()
    auth.forget()  # the token was revoked in this process meanwhile
    db.release.set()
    assert (await check) is not None, "read before the revoke: answered as read"
    await auth.authenticate(token)
    assert db.reads == 2, "but not kept: the next check reads the row again"
