"""No route stores or logs a card number (issue 9, SPEC §3.6).

One session drives every route, with card numbers in every field, id and header and in every
layout recgate must recognise; then the database (the SQLite files, or every PostgreSQL row as
text), the media directory and the log are searched for the card digits. Searching the digits
alone, with every other character removed, also finds a number split across two fields or
written with separators recgate did not know.
"""

from __future__ import annotations

import io
import json
import logging
import random
import re
import unicodedata
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
import respx
import sqlalchemy as sa
from twilio.request_validator import RequestValidator

from app.domain.roles import Role
from app.logging import ScrubbingFilter
from tests.api.test_asterisk import ari_event, channel
from tests.conftest import CONTROL_URL, Harness, event

ACCOUNT_SID = "AC" + "0a1b2c3d4e5f6a7b" * 2
TWILIO_TOKEN = "twilio-auth-token-for-tests-0001"
PUBLIC = "https://recgate.council.example"
NOTIFY_TOKEN = "rtpengine-notify-token-for-tests"
FULLWIDTH = str.maketrans("0123456789", "０１２３４５６７８９")


def luhn_complete(partial: str) -> str:
    """``partial`` plus the check digit that makes it pass Luhn."""
    for check in "0123456789":
        digits = partial + check
        total = 0
        for i, ch in enumerate(reversed(digits)):
            d = int(ch) * (2 if i % 2 else 1)
            total += d - 9 if d > 9 else d
        if total % 10 == 0:
            return digits
    raise AssertionError("unreachable")


def card_numbers() -> list[str]:
    """Distinct Luhn-valid numbers of each network's shape, none of them a repeated digit."""
    rng = random.Random(20261203)
    shapes = [("4", 16), ("4", 13), ("4", 19), ("51", 16), ("55", 16), ("34", 15), ("37", 15)]
    shapes += [("6011", 16), ("35", 16), ("4", 16), ("4", 16), ("51", 16)]
    cards = []
    for prefix, length in shapes:
        body = prefix + "".join(rng.choice("0123456789") for _ in range(length - len(prefix) - 1))
        cards.append(luhn_complete(body))
    return cards


def grouped(digits: str, separator: str) -> str:
    return separator.join(digits[i : i + 4] for i in range(0, len(digits), 4))


LAYOUTS: dict[str, Callable[[str], str]] = {
    "plain": lambda d: d,
    "spaces": lambda d: grouped(d, " "),
    "dashes": lambda d: grouped(d, "-"),
    "dots": lambda d: grouped(d, "."),
    "slashes": lambda d: grouped(d, "/"),
    "underscores": lambda d: grouped(d, "_"),
    "zero-width": lambda d: grouped(d, "\u200b"),
    "nbsp": lambda d: grouped(d, "\u00a0"),
    "fullwidth": lambda d: d.translate(FULLWIDTH),
    "fullwidth-spaced": lambda d: grouped(d.translate(FULLWIDTH), " "),
    "phone-shaped": lambda d: "+" + d,
    "mixed": lambda d: d[:4] + "." + d[4:8] + "/" + d[8:12] + "_" + d[12:],
}


def digits_of(text: str) -> str:
    return "".join(
        ch for ch in unicodedata.normalize("NFKC", text) if ch.isascii() and ch.isdigit()
    )


@pytest.fixture
async def site(make_harness: Callable[..., Any]) -> AsyncIterator[Harness]:
    async with make_harness(
        twilio_account_sid=ACCOUNT_SID,
        twilio_auth_token=TWILIO_TOKEN,
        twilio_api_base="http://127.0.0.1:9/twilio-api",
        public_base_url=PUBLIC,
        ari_url="http://127.0.0.1:9/ari",
        ari_user="recgate",
        ari_password="ari-password-for-tests-0001",
        rtpengine_ng="127.0.0.1:9",
        rtpengine_notify_token=NOTIFY_TOKEN,
    ) as h:
        yield h


@pytest.fixture
def log_text() -> Iterator[io.StringIO]:
    """Everything logged, at every level, through recgate's own scrubbing filter."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(ScrubbingFilter())
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield out
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


class Session:
    def __init__(self, h: Harness) -> None:
        self.h = h
        self.statuses: list[tuple[str, int]] = []

    def saw(self, what: str, status: int) -> None:
        assert status < 500, f"{what} answered {status}"
        self.statuses.append((what, status))

    async def webhook(self, what: str, body: dict[str, Any], **kwargs: Any) -> int:
        response = await self.h.send_event(body, **kwargs)
        self.saw(what, response.status_code)
        return response.status_code

    async def twilio(self, what: str, params: dict[str, str]) -> int:
        path = "/v1/webhooks/twilio/call-status"
        signature = RequestValidator(TWILIO_TOKEN).compute_signature(PUBLIC + path, params)
        response = await self.h.client.post(
            path,
            content=urlencode(params),
            headers={
                "content-type": "application/x-www-form-urlencoded",
                "x-twilio-signature": signature,
            },
        )
        self.saw(what, response.status_code)
        return response.status_code

    async def call(self, what: str, method: str, path: str, role: Role, **kwargs: Any) -> Any:
        headers = {**self.h.auth(role), **kwargs.pop("headers", {})}
        response = await self.h.client.request(method, path, headers=headers, **kwargs)
        self.saw(what, response.status_code)
        return response


async def run_session(h: Harness, written: str, n: int) -> None:
    """Every route once, with ``written`` (a card number in some layout) wherever it fits."""
    s = Session(h)
    call_id, rec_id = f"s-{n}", f"r-{n}"
    # Generic and simulator webhooks: the card in every free field, a key and a value.
    started = event("call.started", call_id=call_id, agent_id=written, service_area="other")
    started["call"].update({"from": written, "to": written})
    started[written] = {"memo": written, "list": [written, {"deep": written}]}
    assert await s.webhook("call.started", started) == 200
    assert await s.webhook("answered", event("call.answered", call_id=call_id)) == 200
    recording = event("recording.started", call_id=call_id, recording_id=rec_id)
    recording["recording"]["media_url"] = f"https://pbx.example/media/{quote(written)}.wav"
    assert await s.webhook("recording.started", recording) == 200
    # Ids holding the card: refused, only a scrubbed dead letter is kept.
    assert await s.webhook("call id", event("call.started", call_id=f"x-{written}")) == 422
    bad_rec = event("recording.started", call_id=call_id, recording_id=f"rec-{written}")
    assert await s.webhook("recording id", bad_rec) == 422
    bad_format = event("recording.started", call_id=call_id, recording_id=f"{rec_id}-b")
    bad_format["recording"]["format"] = written[:16]
    await s.webhook("format", bad_format)
    # Header values travel as ASCII here (httpx); the id check itself is the same for any text.
    header_safe = written if written.isascii() else digits_of(written)
    assert await s.webhook("webhook id", event("call.answered"), msg_id=f"msg-{header_safe}") == 422
    sim = event("call.started", call_id=f"sim-{n}")
    sim["call"]["from"] = written
    assert await s.webhook("sim", sim, provider="sim") == 200

    # The IVR: a reference, a key, a call id and a JSON key holding the card.
    ivr = Role.IVR
    base = f"/v1/calls/generic/{call_id}/payment"
    await s.call("start", "POST", f"{base}/start", ivr, json={"reference": written})
    await s.call("end", "POST", f"{base}/end", ivr, json={"outcome": written})
    await s.call("end", "POST", f"{base}/end", ivr, json={})
    await s.call(
        "keyed", "POST", f"{base}/start", ivr, headers={"Idempotency-Key": written.encode()}
    )
    await s.call("json key", "POST", f"{base}/start", ivr, json={written: 1})
    await s.call("path", "POST", f"/v1/calls/generic/{quote(written)}/payment/start", ivr)
    await s.call("get", "GET", f"/v1/calls/generic/{quote(written)}", Role.SUPERVISOR)
    await s.call(
        "headers",
        "GET",
        f"/v1/calls/generic/{call_id}",
        Role.SUPERVISOR,
        headers={"user-agent": written.encode(), "x-request-id": written.encode()},
    )

    # Holds: the card split between reference and note; a caller hold on a card "number".
    listing = await s.call("list", "GET", "/v1/recordings", Role.DPO, params={"limit": 200})
    ids = [r["id"] for r in listing.json()["items"] if r["provider_recording_id"] == rec_id]
    half = len(written) // 2
    for recording_id in ids:
        await s.call(
            "hold",
            "POST",
            f"/v1/recordings/{recording_id}/holds",
            Role.DPO,
            json={"reason": "complaint", "reference": written[:half], "note": written[half:]},
        )
        await s.call("media", "GET", f"/v1/recordings/{recording_id}/media", Role.DPO)
    await s.call(
        "caller hold",
        "POST",
        "/v1/holds",
        Role.DPO,
        json={"reason": "complaint", "caller": written[:64], "note": f"caller {written}"},
    )
    await s.call("by caller", "GET", "/v1/recordings", Role.DPO, params={"caller": written[:64]})
    await s.call("audit", "GET", "/v1/audit", Role.ADMIN, params={"cursor": written})

    # Twilio, Asterisk and rtpengine, each with the card in an id and in a field.
    params = {
        "AccountSid": ACCOUNT_SID,
        "CallSid": "CA" + f"{n:02x}" * 16,
        "CallStatus": "ringing",
        "From": written,
        "To": written,
        "Direction": "inbound",
        "SequenceNumber": "0",
    }
    await s.twilio("twilio", params)
    await s.twilio("twilio sid", {**params, "CallSid": f"CA{written}"})
    stasis = ari_event("StasisStart", args=[], channel=channel(f"1764322800.{n}", "Ring"))
    stasis["channel"]["caller"]["number"] = written
    await s.webhook("asterisk", stasis, provider="asterisk")
    bad_channel = ari_event("StasisStart", args=[], channel=channel(f"chan-{written}", "Ring"))
    await s.webhook("asterisk id", bad_channel, provider="asterisk")
    for call in (f"rtp-{n}@pbx.example", f"{written}@pbx.example"):
        response = await h.client.post(
            f"/v1/webhooks/rtpengine?token={NOTIFY_TOKEN}",
            # httpx takes str and bytes values side by side; its annotation only allows one.
            headers={  # type: ignore[arg-type]
                "X-Recording-Call-ID": call.encode(),
                "X-Recording-File-Name": f"rtp-{n}-mix.wav",
                "X-Recording-Full-File-Name": f"/var/spool/rtpengine/rtp-{n}-mix.wav",
                "X-Recording-File-Format": "wav",
                "X-Recording-Kind": "mixed",
                "X-Recording-Call-Start-Time": "1795867200.125000",
                "X-Recording-Call-End-Time": "1795867512.250000",
            },
        )
        s.saw("rtpengine", response.status_code)


def where_found(planted: list[tuple[str, str]], text: str, width: int = 60) -> str:
    """Each planted card's surroundings where it was found, to say which field let it in."""
    normal = unicodedata.normalize("NFKC", text)
    lines = []
    for layout, card in planted:
        pattern = r"[^0-9]{0,3}".join(card)
        for match in re.finditer(pattern, normal):
            start, end = max(0, match.start() - width), match.end() + width
            lines.append(f"{layout}: …{normal[start:end]!r}…")
        if not any(line.startswith(f"{layout}: ") for line in lines):
            lines += _scattered(layout, card, normal, width)
    return "\n".join(lines)


def _scattered(layout: str, card: str, normal: str, width: int) -> list[str]:
    """Where a card's digits stand in order with more than a few characters between them (a
    row split across pages, or digits that only line up by chance): the text they span."""
    at = [i for i, ch in enumerate(normal) if ch.isascii() and ch.isdigit()]
    digits = "".join(normal[i] for i in at)
    found = digits.find(card)
    if found < 0:
        return []
    first, last = at[found], at[found + len(card) - 1]
    span = normal[max(0, first - width) : last + width + 1]
    return [f"{layout} (scattered over {last - first + 1} characters): …{span[:2000]!r}…"]


def media_text(media: Path) -> str:
    """Every file in the media directory, as text."""
    return "".join(
        p.read_bytes().decode("utf-8", "ignore") for p in media.rglob("*") if p.is_file()
    )


def stored_text(h: Harness) -> str:
    """The database as text: the SQLite files byte for byte, or every PostgreSQL row."""
    url = h.services.settings.database_url
    if url.startswith("sqlite"):
        path = Path(sa.engine.make_url(url).database or "")
        files = [path, path.with_name(path.name + "-wal")]
        return "".join(f.read_bytes().decode("utf-8", "ignore") for f in files if f.exists())
    return ""


async def postgres_text(h: Harness) -> str:
    if h.services.settings.is_sqlite:
        return ""
    out: list[str] = []
    async with h.services.engine.connect() as conn:
        tables = (
            await conn.execute(
                sa.text("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
            )
        ).scalars()
        for table in list(tables):
            rows = await conn.execute(sa.text(f'SELECT t::text FROM "{table}" t'))
            out.extend(str(row) for row in rows.scalars())
    return "\n".join(out)


async def test_no_card_number_survives_a_full_session(
    site: Harness, log_text: io.StringIO, pbx_answers: respx.MockRouter
) -> None:
    cards = card_numbers()
    planted: list[tuple[str, str]] = []
    for n, (layout, write) in enumerate(LAYOUTS.items()):
        card = cards[n % len(cards)]
        planted.append((layout, card))
        await run_session(site, write(card), n)
    await site.services.tasks.drain()

    text = stored_text(site) + await postgres_text(site)
    files = media_text(Path(site.services.settings.media_dir))
    sources = {
        "database": digits_of(text),
        "media": digits_of(files),
        "log": digits_of(log_text.getvalue()),
    }
    assert len(sources["database"]) > 1000, "the scan must see the stored rows"
    found = [
        f"{layout} card in the {where}"
        for layout, card in planted
        for where, digits in sources.items()
        if card in digits
    ]
    assert found == [], where_found(planted, text + "\n" + log_text.getvalue())


@pytest.fixture
async def pbx_answers() -> AsyncIterator[respx.MockRouter]:
    async with respx.mock(assert_all_called=False) as router:
        calls = re.escape(CONTROL_URL) + r"/calls/[^/]+/recording/"
        router.post(url__regex=calls + "pause$").respond(200, json={"state": "paused"})
        router.post(url__regex=calls + "resume$").respond(200, json={"state": "recording"})
        yield router


def test_the_corpus_is_what_it_claims() -> None:
    cards = card_numbers()
    assert len(set(cards)) == len(cards)
    assert {len(c) for c in cards} >= {13, 15, 16, 19}
    for layout, write in LAYOUTS.items():
        assert digits_of(write(cards[0])) == cards[0], layout
    assert json.dumps(LAYOUTS["zero-width"](cards[0]))  # serialisable as sent
