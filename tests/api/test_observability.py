"""What operators read (docs/operations.md): /metrics on the Prometheus client, the request id,
and one structured log line per request carrying recgate's own ids."""

from __future__ import annotations

import io
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from app.config import Settings
from app.domain.roles import Role
from app.logging import ConsoleFormatter, JsonFormatter, ScrubbingFilter, bind, unbind
from app.main import create_app
from app.services.container import Services
from tests.conftest import CONTROL_URL, FakeClock, Harness, event

PAUSE = f"{CONTROL_URL}/calls/c-123/recording/pause"
RESUME = f"{CONTROL_URL}/calls/c-123/recording/resume"
START_ROUTE = "/v1/calls/{provider}/{provider_call_id}/payment/start"
CARD = "4111111111111111"
GENERATED_ID = re.compile(r"[0-9a-f]{32}")

# name → (type, label names): exactly what alert rules and the dashboard are written against.
CATALOGUE: dict[str, tuple[str, frozenset[str]]] = {
    "recgate_webhook_events_total": ("counter", frozenset({"provider", "type", "outcome"})),
    "recgate_pause_commands_total": ("counter", frozenset({"provider", "action", "outcome"})),
    "recgate_exposures_total": ("counter", frozenset({"kind"})),
    "recgate_retention_deleted_total": ("counter", frozenset()),
    "recgate_pause_confirm_seconds": ("histogram", frozenset()),
    "recgate_http_request_duration_seconds": (
        "histogram",
        frozenset({"method", "route", "status"}),
    ),
    "recgate_provider_command_duration_seconds": ("histogram", frozenset({"provider", "action"})),
    "recgate_active_calls": ("gauge", frozenset()),
    "recgate_open_payment_segments": ("gauge", frozenset()),
    "recgate_retention_overdue": ("gauge", frozenset()),
    "recgate_overlong_payment_segments": ("gauge", frozenset()),
    "recgate_stuck_resume_segments": ("gauge", frozenset()),
    "recgate_ready": ("gauge", frozenset()),
    "recgate_readiness_check_failed": ("gauge", frozenset({"check"})),
    "recgate_build_info": ("gauge", frozenset({"version"})),
}
OPERATIONS_DOC = Path(__file__).parents[2] / "docs" / "operations.md"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
async def pbx() -> AsyncIterator[respx.MockRouter]:
    async with respx.mock(assert_all_called=False) as router:
        router.get(f"{CONTROL_URL}/health").respond(204)
        router.post(PAUSE).respond(200, json={"state": "paused"})
        router.post(RESUME).respond(200, json={"state": "recording"})
        yield router


async def live_call(h: Harness, call_id: str = "c-123") -> None:
    for type_ in ("call.started", "call.answered"):
        assert (await h.send_event(event(type_, call_id=call_id))).status_code == 200
    started = event("recording.started", call_id=call_id, recording_id="r-1")
    assert (await h.send_event(started)).status_code == 200


async def pay(h: Harness, action: str, call_id: str = "c-123", **headers: str) -> httpx.Response:
    return await h.client.post(
        f"/v1/calls/generic/{call_id}/payment/{action}", headers={**h.auth(Role.IVR), **headers}
    )


async def scrape(h: Harness) -> str:
    response = await h.client.get("/metrics", headers=h.auth(Role.OPS))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return response.text


def samples(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def label_values(text: str, sample_name: str, label: str) -> set[str]:
    return {
        s.labels[label]
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == sample_name
    }


# ---- /metrics -----------------------------------------------------------------------------


async def test_metrics_expose_the_whole_catalogue(harness: Harness, pbx: respx.MockRouter) -> None:
    await live_call(harness)
    assert (await pay(harness, "start")).status_code == 200
    assert (await pay(harness, "end")).status_code == 200
    text = await scrape(harness)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, (kind, labels) in CATALOGUE.items():
        family = families.get(name.removesuffix("_total"))
        assert family is not None, f"{name} is not exported"
        assert family.type == kind, f"{name} is a {family.type}, not a {kind}"
        assert family.samples, f"{name} has no series"
        seen = {label for s in family.samples for label in s.labels} - {"le"}
        assert seen == labels, f"{name} has labels {seen}, not {labels}"
    values = samples(text)
    assert values[("recgate_ready", ())] == 1
    assert values[("recgate_readiness_check_failed", (("check", "provider:generic"),))] == 0
    assert values[("recgate_build_info", (("version", "0.1.0"),))] == 1
    assert values[("recgate_pause_confirm_seconds_count", ())] == 1
    for action in ("pause", "resume"):
        command = (("action", action), ("provider", "generic"))
        assert values[("recgate_provider_command_duration_seconds_count", command)] == 1
    for kind in ("pause_failed", "unexpected_resume", "late_recording"):
        assert ("recgate_exposures_total", (("kind", kind),)) in values, "present from the start"
    assert "c-123" not in text, "call ids are never labels"


async def test_operations_doc_lists_exactly_the_exported_metrics(harness: Harness) -> None:
    text = await scrape(harness)
    exported = {f.name for f in text_string_to_metric_families(text)}
    exported = {name + "_total" if name + "_total" in CATALOGUE else name for name in exported}
    documented = set(re.findall(r"`(recgate_[a-z_]+)", OPERATIONS_DOC.read_text()))
    assert set(CATALOGUE) <= documented
    assert (
        documented - {n + s for n in CATALOGUE for s in ("", "_bucket", "_count", "_sum")} == set()
    )
    assert exported <= documented


async def test_http_histogram_is_labelled_by_route_template(
    harness: Harness, pbx: respx.MockRouter
) -> None:
    await live_call(harness)
    await pay(harness, "start")
    await harness.client.get("/v1/calls/generic/c-123", headers=harness.auth(Role.SUPERVISOR))
    await harness.client.get(f"/v1/no/such/{CARD}")
    await harness.client.request("BREW", "/livez")
    text = await scrape(harness)
    series = [
        s.labels
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "recgate_http_request_duration_seconds_count"
    ]
    by_route = {(s["method"], s["route"], s["status"]) for s in series}
    assert ("POST", START_ROUTE, "200") in by_route
    assert ("POST", "/v1/webhooks/generic", "200") in by_route
    assert ("GET", "/v1/calls/{provider}/{provider_call_id}", "200") in by_route
    assert ("GET", "unmatched", "404") in by_route
    assert ("other", "/livez", "405") in by_route, "an unknown method is not a label value"
    routes = {s["route"] for s in series}
    assert not any("c-123" in r or CARD in r for r in routes), routes


async def test_gauges_count_overlong_and_stuck_payments(
    make_harness: Callable[..., Any], pbx: respx.MockRouter
) -> None:
    pbx.post(RESUME).respond(400)  # the PBX refuses the resume: the payment stays open
    clock = FakeClock()
    async with make_harness(clock=clock, max_pause_s=60) as h:
        await live_call(h)
        assert (await pay(h, "start")).status_code == 200
        assert (await pay(h, "end")).status_code >= 400
        before = samples(await scrape(h))
        clock.advance(seconds=61)
        after = samples(await scrape(h))
    assert before[("recgate_open_payment_segments", ())] == 1
    assert before[("recgate_active_calls", ())] == 1
    assert before[("recgate_overlong_payment_segments", ())] == 0
    assert before[("recgate_stuck_resume_segments", ())] == 0
    assert after[("recgate_overlong_payment_segments", ())] == 1
    assert after[("recgate_stuck_resume_segments", ())] == 1


async def test_metrics_keep_their_auth_rule(harness: Harness) -> None:
    # RECGATE_METRICS_PUBLIC=true opens them (tests/api/test_auth.py).
    assert (await harness.client.get("/metrics")).status_code == 401
    refused = await harness.client.get("/metrics", headers=harness.auth(Role.IVR))
    assert refused.status_code == 403


# ---- X-Request-ID --------------------------------------------------------------------------


async def test_a_sane_request_id_is_returned_as_given(harness: Harness) -> None:
    response = await harness.client.get("/livez", headers={"x-request-id": "lb-7f3a.9_X-1"})
    assert response.headers["x-request-id"] == "lb-7f3a.9_X-1"


@pytest.mark.parametrize(
    "given",
    [None, "", "x" * 129, "has space", "semi;colon", "caf\u00e9", CARD],
    ids=["absent", "empty", "too long", "space", "semicolon", "not ascii", "card number"],
)
async def test_otherwise_a_request_id_is_generated(harness: Harness, given: str | None) -> None:
    headers = {} if given is None else {b"x-request-id": given.encode()}
    first = await harness.client.get("/livez", headers=headers)
    second = await harness.client.get("/livez", headers=headers)
    assert GENERATED_ID.fullmatch(first.headers["x-request-id"]), first.headers
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


async def test_every_answer_carries_a_request_id(settings: Settings) -> None:
    async def boom() -> None:
        raise RuntimeError("a bug")

    app = create_app(settings)
    app.add_api_route("/boom", boom, methods=["GET"])
    async with app.router.lifespan_context(app):
        services: Services = app.state.services
        ivr = await services.tokens.create("test-ivr", Role.IVR)
        ops = await services.tokens.create("test-ops", Role.OPS)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://recgate.test") as client:
            answers = {
                "unmatched": await client.get("/nope"),
                "unauthenticated": await client.get("/v1/status"),
                "too large": await client.post(
                    "/v1/calls/generic/c-1/payment/start",
                    content=b"x" * (65 * 1024),
                    headers={"authorization": f"Bearer {ivr}", "content-type": "application/json"},
                ),
                "unhandled error": await client.get("/boom", headers={"x-request-id": "b-1"}),
            }
            text = (await client.get("/metrics", headers={"authorization": f"Bearer {ops}"})).text
    statuses = {name: r.status_code for name, r in answers.items()}
    assert statuses == {
        "unmatched": 404,
        "unauthenticated": 401,
        "too large": 413,
        "unhandled error": 500,
    }
    for name, response in answers.items():
        assert response.headers.get("x-request-id"), f"{name}: no X-Request-ID"
    assert answers["unhandled error"].headers["x-request-id"] == "b-1"
    counted = {
        (s.labels["method"], s.labels["route"], s.labels["status"])
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "recgate_http_request_duration_seconds_count"
    }
    assert {("GET", "/boom", "500"), ("POST", START_ROUTE, "413")} <= counted


# ---- structured logs -----------------------------------------------------------------------


class Lines:
    def __init__(self, stream: io.StringIO) -> None:
        self.stream = stream

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    def all(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text.splitlines() if line]

    def requests(self, request_id: str) -> list[dict[str, Any]]:
        return [
            line
            for line in self.all()
            if line["logger"] == "recgate.http" and line.get("request_id") == request_id
        ]


def _capture(formatter: logging.Formatter) -> Iterator[Lines]:
    logger = logging.getLogger("recgate")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(ScrubbingFilter())
    handler.setFormatter(formatter)
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield Lines(stream)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.fixture
def json_logs() -> Iterator[Lines]:
    yield from _capture(JsonFormatter())


@pytest.fixture
def console_logs() -> Iterator[Lines]:
    yield from _capture(ConsoleFormatter())


async def test_one_json_line_per_request(
    harness: Harness, pbx: respx.MockRouter, json_logs: Lines
) -> None:
    await live_call(harness)
    response = await pay(harness, "start", **{"x-request-id": "pay-1"})
    assert response.status_code == 200
    [line] = json_logs.requests("pay-1")
    assert line["level"] == "info"
    assert line["method"] == "POST" and line["route"] == START_ROUTE
    assert line["status"] == 200
    assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0
    assert "c-123" not in line["message"], "the route template, never the raw path"


async def test_payment_lines_carry_recgates_ids_and_one_line_per_provider_command(
    harness: Harness, pbx: respx.MockRouter, json_logs: Lines
) -> None:
    await live_call(harness)
    response = await pay(harness, "start", **{"x-request-id": "pay-2"})
    assert response.status_code == 200
    segment_id = response.json()["segment_id"]
    [line] = json_logs.requests("pay-2")
    assert line["segment_id"] == segment_id
    async with harness.services.engine.connect() as conn:
        call_id = (await conn.execute(sa.text("SELECT id FROM calls"))).scalar_one()
    assert line["call_id"] == str(uuid.UUID(str(call_id)))
    [command] = [x for x in json_logs.all() if x["logger"] == "recgate.provider"]
    assert command["segment_id"] == segment_id and command["request_id"] == "pay-2"
    assert "generic" in command["message"] and "pause" in command["message"]


async def test_webhook_lines_carry_recgates_call_id(harness: Harness, json_logs: Lines) -> None:
    response = await harness.send_event(event("call.started"), headers={"x-request-id": "wh-1"})
    assert response.status_code == 200
    [line] = json_logs.requests("wh-1")
    async with harness.services.engine.connect() as conn:
        found = (await conn.execute(sa.text("SELECT id FROM calls"))).scalar_one()
    assert line["call_id"] == str(uuid.UUID(str(found)))
    assert line["route"] == "/v1/webhooks/generic"


async def test_lines_written_while_serving_carry_the_request_id(
    harness: Harness, json_logs: Lines
) -> None:
    response = await harness.client.post(
        "/v1/webhooks/generic",
        content=b"{}",
        headers={"content-type": "application/json", "x-request-id": "forged-1"},
    )
    assert response.status_code == 401
    refused = [line for line in json_logs.all() if line["logger"] == "recgate.webhooks"]
    assert refused and all(line["request_id"] == "forged-1" for line in refused)
    assert [line["status"] for line in json_logs.requests("forged-1")] == [401]


async def test_no_card_number_reaches_the_logs(
    harness: Harness, json_logs: Lines, pbx: respx.MockRouter
) -> None:
    await pay(harness, "start", call_id=CARD, **{"x-request-id": CARD})
    await harness.client.get(f"/{CARD}", headers={"x-request-id": f"id-{CARD}"})
    assert json_logs.all(), "the requests were logged"
    assert CARD not in json_logs.text


async def test_console_lines_end_with_the_bound_ids(harness: Harness, console_logs: Lines) -> None:
    await harness.client.get("/nope", headers={"x-request-id": "con-1"})
    [line] = [line for line in console_logs.text.splitlines() if "recgate.http" in line]
    assert re.search(r"recgate\.http: GET unmatched 404 [0-9.]+ ms \[request_id=con-1\]$", line)


def test_bound_ids_and_provider_command_lines(json_logs: Lines) -> None:
    from app.logging import log_provider_command

    call_id, segment_id = uuid.uuid4(), uuid.uuid4()
    token = bind(call_id=call_id)
    try:
        log_provider_command("generic", "pause", "ok", 0.0123, segment_id=segment_id)
        log_provider_command("generic", "resume", "timeout", 1.5)
    finally:
        unbind(token)
    log_provider_command("sim", "pause", "ok", 0.001)
    ok, timeout, unbound = json_logs.all()
    assert ok["logger"] == "recgate.provider" and ok["level"] == "info"
    assert (ok["provider"], ok["action"], ok["outcome"]) == ("generic", "pause", "ok")
    assert ok["duration_ms"] == 12.3
    assert (ok["call_id"], ok["segment_id"]) == (str(call_id), str(segment_id))
    assert timeout["level"] == "warning" and timeout["call_id"] == str(call_id)
    assert "segment_id" not in timeout
    assert "call_id" not in unbound, "unbind restores what was bound before"


def test_generated_request_ids_are_unique_and_never_read_as_card_numbers() -> None:
    """Ids recgate makes up are logged and echoed: each unique, and left whole by the
    scrubber (its counter runs through digit-only stretches that alone could pass Luhn)."""
    from app.api.observe import request_id_from
    from app.domain.scrub import scrub_text

    made = [request_id_from([]) for _ in range(5000)]
    assert len(set(made)) == len(made)
    for request_id in made:
        assert re.fullmatch(r"[0-9a-f]{32}", request_id)
        assert scrub_text(request_id) == request_id
    # A caller's sane id is kept as it is.
    assert request_id_from([(b"x-request-id", b"ivr-42.a")]) == "ivr-42.a"
