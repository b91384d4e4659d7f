"""The app against its own OpenAPI document, with schemathesis: every operation, fed valid and
invalid requests, must not fail with a 5xx it does not document and must answer only statuses
and bodies the document declares.

The app runs in one event loop of its own (a blocking portal) with the harness's database and
tokens; hypothesis drives each operation from the test's thread, and every request carries the
admin token, so the checks reach past authentication.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import schemathesis
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.config import Settings
from app.domain.roles import Role
from app.main import create_app
from tests.conftest import Harness, event

BASE_URL = "http://recgate.test"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
# Small and fixed, for CI: the same examples every run, a few seconds per operation at most.
MAX_EXAMPLES = 15
# Statuses that are answers, not failures: the payment endpoints answer 503 (pause not
# confirmed) and 502 (resume not confirmed) by design, and every endpoint that uses the
# database answers 503 while it is unreachable. The document declares each one where it can
# happen; status_code_conformance holds them to that.
EXPECTED_STATUSES = ["2xx", "3xx", "4xx", "502", "503"]

# Every operation, none left out. The webhooks document no body (each provider signs its own
# raw format), so here they only meet unsigned requests (401, or 404 for a provider that is not
# enabled); tests/api/test_webhooks.py and the provider tests cover what a signature lets in.
OPERATIONS = sorted(
    (method.upper(), path)
    for path, operations in create_app(Settings(_env_file=None)).openapi()["paths"].items()
    for method in operations
)


@dataclass
class LiveApp:
    portal: BlockingPortal
    harness: Harness
    schema: Any
    # Path parameter values that name something that exists, so that some examples get past
    # "not found" into the operation's real work.
    known: dict[str, str]

    def send(self, case: schemathesis.Case[Any]) -> httpx.Response:
        request = case.as_transport_kwargs(base_url=BASE_URL, headers=self.harness.auth(Role.ADMIN))
        response: httpx.Response = self.portal.call(_send, self.harness.client, request)
        return response


async def _send(client: httpx.AsyncClient, request: dict[str, Any]) -> httpx.Response:
    """Send requests-style keyword arguments (what schemathesis serialises to) with httpx."""
    data = request.get("data")
    return await client.request(
        request["method"],
        request["url"],
        params=request.get("params"),
        headers=request.get("headers"),
        cookies=request.get("cookies") or None,
        json=request.get("json"),
        content=data if isinstance(data, bytes | str) else None,
        data=data if isinstance(data, dict) else None,
    )


async def _seed(harness: Harness) -> dict[str, str]:
    """A call with a stopped recording, a held caller and a sim call with a payment."""
    for type_ in ("call.started", "recording.started", "recording.stopped", "call.ended"):
        recording = None if type_.startswith("call.") else "r-contract"
        sent = await harness.send_event(
            event(type_, call_id="c-contract", recording_id=recording), msg_id=f"msg-{type_}"
        )
        assert sent.status_code == 200, sent.text
    admin = harness.auth(Role.ADMIN)
    recordings = (await harness.client.get("/v1/recordings", headers=admin)).json()["items"]
    hold = await harness.client.post(
        "/v1/holds", json={"reason": "complaint", "caller": "+441632960001"}, headers=admin
    )
    started = await harness.client.post("/v1/calls/sim/c-contract/payment/start", headers=admin)
    assert started.status_code == 200, started.text
    return {
        "provider": "sim",
        "provider_call_id": "c-contract",
        "recording_id": recordings[0]["id"],
        "hold_id": hold.json()["id"],
        "service_area": "council_tax",
    }


@pytest.fixture
def live_app(make_harness: Callable[..., Any]) -> Iterator[LiveApp]:
    with (
        start_blocking_portal() as portal,
        portal.wrap_async_context_manager(make_harness()) as harness,
    ):
        document = portal.call(harness.client.get, "/openapi.json").json()
        config = schemathesis.Config.from_dict(
            {"checks": {"not_a_server_error": {"expected-statuses": EXPECTED_STATUSES}}}
        )
        schema = schemathesis.openapi.from_dict(document, config=config)
        yield LiveApp(portal, harness, schema, portal.call(_seed, harness))


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_operation_honours_its_documented_contract(
    live_app: LiveApp, method: str, path: str
) -> None:
    operation = live_app.schema[path][method]
    cases = st.one_of(
        operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
        operation.as_strategy(generation_mode=GenerationMode.NEGATIVE),
    )
    # Each path parameter is either generated or one that exists.
    known = {name: value for name, value in live_app.known.items() if f"{{{name}}}" in path}
    replacements = st.fixed_dictionaries(
        {name: st.sampled_from([value, None]) for name, value in known.items()}
    )

    @st.composite
    def strategy(draw: st.DrawFn) -> schemathesis.Case[Any]:
        case: schemathesis.Case[Any] = draw(cases)
        for name, value in draw(replacements).items():
            if value is not None:
                case.path_parameters = {**(case.path_parameters or {}), name: value}
        return case

    @settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        # The app is built once per operation, not once per example, on purpose.
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(case=strategy())
    def honours_contract(case: schemathesis.Case[Any]) -> None:
        response = live_app.send(case)
        case.validate_response(response, checks=CHECKS)

    honours_contract()
