"""The whole gate against an independent model of a PBX (hypothesis stateful testing).

The model is a PBX of its own: it keeps each recording's real state (recording, paused,
stopped), pauses and resumes it when recgate's control requests reach it, pauses or resumes
it on its own, starts and stops recordings, and reports all of it in webhooks that it
delivers late, out of order and twice, stamped by a clock that is off by up to two seconds
and sometimes truncated to whole seconds. Its control answers can fail (5xx) or refuse.
It shares no code with recgate: it reads recgate only through HTTP answers and the call
recgate shows a supervisor.

The invariant, after every step: while the IVR has been told ``safe_to_collect: true`` and
has not ended the payment, every recording of the call that the PBX has reported on is
paused at the PBX, or recgate has an open exposure recording the gap. Identical starts sent
at once all get one answer. No answer is ever a 500.

Two PBXs: the generic contract (one command pauses everything on the call) and Asterisk ARI
(recordings paused by name, on the caller's channel, the bridge and an agent's channel; the
events that make the bridge and the agent's channel the caller's are delivered late and out
of order like the rest, and until one arrives recgate cannot know whose its recordings are).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
import respx
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from app.config import Settings
from app.domain.roles import Role
from app.main import create_app
from app.telephony.signing import signed_headers
from tests.conftest import ASTERISK_SECRET, CONTROL_URL, SECRET, FakeClock, emptied

ARI = "http://127.0.0.1:9/ari"
CALL = "model-call"
BRIDGE = "model-bridge"
AGENT = "model-agent"
GENERIC_OK = {"pause": "paused", "resume": "recording"}


class PbxModel:
    """A PBX's own idea of its recordings; recgate's bookkeeping never enters it."""

    def __init__(self) -> None:
        self.state: dict[str, str] = {}  # recording -> recording | paused | stopped
        self.mode = "ok"  # ok | fail | refuse
        self.pending: list[dict[str, Any]] = []  # reports not yet delivered
        self.delivered: list[dict[str, Any]] = []
        self.commands = 0

    def live(self) -> list[str]:
        return [name for name, state in self.state.items() if state != "stopped"]

    def undelivered(self, name: str) -> bool:
        return any(r["recording"] == name for r in self.pending)


class GateMachine(RuleBasedStateMachine):
    """One call on one recgate; subclasses speak one PBX's language."""

    template: ClassVar[Path]
    workdir: ClassVar[Path]
    # A PostgreSQL database to run on (emptied for each example), instead of SQLite.
    postgres: ClassVar[str | None] = None
    provider: ClassVar[str]

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.pbx = PbxModel()
        self.clock = FakeClock(datetime.now(UTC))
        self.skew = timedelta(0)
        self.whole_seconds = False
        self.names = 0
        # The IVR's view: has it been told safe, and has it not ended the payment since?
        self.told_safe = False
        self.paying = False
        if self.postgres is not None:
            url = emptied(self.postgres)
        else:
            path = self.workdir / f"{uuid.uuid4().hex}.db"
            shutil.copyfile(self.template, path)
            url = f"sqlite+aiosqlite:///{path}"
        self.loop.run_until_complete(self._open(url))

    async def _open(self, url: str) -> None:
        app = create_app(
            Settings(
                database_url=url,
                media_dir=self.workdir / "media",
                generic_webhook_secret=SECRET,
                asterisk_webhook_secret=ASTERISK_SECRET,
                generic_control_url=CONTROL_URL,
                ari_url=ARI,
                ari_user="recgate",
                ari_password="ari-password-for-tests-0001",
                pause_timeout_ms=250,
                provider_request_timeout_s=0.2,
                background_jobs=False,
                # In-process batches: a worker per example would cost each a second
                # interpreter (the worker is tested in tests/integration/test_ingest_worker.py).
                ingest_worker=False,
                _env_file=None,
            ),
            clock=self.clock,
        )
        self.lifespan = app.router.lifespan_context(app)
        await self.lifespan.__aenter__()
        self.services = app.state.services
        self.ivr = await self.services.tokens.create("ivr", Role.IVR)
        self.reader = await self.services.tokens.create("supervisor", Role.SUPERVISOR)
        self.router = respx.mock(assert_all_called=False)
        self.router.start()
        self.mock_control(self.router)
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
            base_url="http://recgate.test",
        )

    def teardown(self) -> None:
        async def close() -> None:
            await self.client.aclose()
            await self.services.tasks.drain()
            await self.lifespan.__aexit__(None, None, None)

        self.loop.run_until_complete(close())
        self.router.stop()
        self.loop.close()

    def run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(coroutine)

    # ---- what a subclass supplies ----------------------------------------------------------

    def mock_control(self, router: respx.MockRouter) -> None:
        raise NotImplementedError

    def report(self, kind: str, name: str) -> dict[str, Any]:
        """A webhook body for ``kind`` (started, paused, resumed, stopped) of ``name``."""
        raise NotImplementedError

    async def deliver_body(self, body: dict[str, Any], msg_id: str) -> httpx.Response:
        raw = json.dumps(body).encode()
        key = self.services.settings.webhook_key(self.webhook)
        headers = signed_headers(key, raw, self.clock(), msg_id)
        headers["content-type"] = "application/json"
        return await self.client.post(f"/v1/webhooks/{self.webhook}", content=raw, headers=headers)

    webhook: ClassVar[str]

    # ---- the PBX's clock -------------------------------------------------------------------

    def pbx_now(self) -> datetime:
        at = self.clock() + self.skew
        return at.replace(microsecond=0) if self.whole_seconds else at

    def happen(self, kind: str, name: str) -> None:
        self.pbx.pending.append(
            {"recording": name, "body": self.report(kind, name), "id": uuid.uuid4().hex}
        )

    # ---- rules -----------------------------------------------------------------------------

    @initialize(
        skew_ms=st.integers(-2000, 2000),
        whole_seconds=st.booleans(),
        recordings=st.integers(0, 2),
    )
    def set_up(self, skew_ms: int, whole_seconds: bool, recordings: int) -> None:
        self.skew = timedelta(milliseconds=skew_ms)
        self.whole_seconds = whole_seconds
        self.run(self.setup_call())
        for _ in range(recordings):
            self.start_recording()

    async def setup_call(self) -> None:
        """Whatever the PBX reports before anything is recorded."""

    @rule()
    def start_recording(self) -> None:
        self.names += 1
        name = f"rec-{self.names}"
        self.pbx.state[name] = "recording"
        self.happen("started", name)

    @precondition(lambda self: bool(self.pbx.live()))
    @rule(data=st.data())
    def pbx_acts_alone(self, data: st.DataObject) -> None:
        """The PBX pauses, resumes or stops a recording on its own, and reports it."""
        name = data.draw(st.sampled_from(sorted(self.pbx.live())))
        kind = data.draw(st.sampled_from(self.reported_kinds))
        self.pbx.state[name] = {"paused": "paused", "resumed": "recording", "stopped": "stopped"}[
            kind
        ]
        self.happen(kind, name)

    # What the PBX reports of its own doing (only what it reports can recgate act on).
    reported_kinds: ClassVar[tuple[str, ...]] = ("paused", "resumed", "stopped")

    @precondition(lambda self: bool(self.pbx.pending))
    @rule(data=st.data())
    def deliver_one(self, data: st.DataObject) -> None:
        """A report arrives, perhaps out of order."""
        index = data.draw(st.integers(0, len(self.pbx.pending) - 1))
        self._deliver(self.pbx.pending.pop(index))

    @precondition(lambda self: bool(self.pbx.delivered))
    @rule(data=st.data())
    def deliver_again(self, data: st.DataObject) -> None:
        """A report the PBX sends twice (its retry)."""
        self._deliver(data.draw(st.sampled_from(self.pbx.delivered)), again=True)

    def _deliver(self, report: dict[str, Any], again: bool = False) -> None:
        response = self.run(self.deliver_body(report["body"], report["id"]))
        assert response.status_code == 200, response.text
        if not again:
            self.pbx.delivered.append(report)
        self.settle()

    @rule(mode=st.sampled_from(["ok", "ok", "fail", "refuse"]))
    def pbx_control_mode(self, mode: str) -> None:
        self.pbx.mode = mode

    @rule(seconds=st.sampled_from([0.05, 0.5, 3, 40]))
    def time_passes(self, seconds: float) -> None:
        """Time passes; the upkeep drives whatever is due (retries, backoffs)."""
        self.clock.advance(seconds=seconds)
        self.run(self.services.gate.run_due())
        self.settle()

    @rule(copies=st.integers(1, 3))
    def ivr_starts(self, copies: int) -> None:
        url = f"/v1/calls/{self.provider}/{CALL}/payment/start"

        async def at_once() -> list[httpx.Response]:
            headers = {"authorization": f"Bearer {self.ivr}"}
            return list(
                await asyncio.gather(
                    *(self.client.post(url, headers=headers) for _ in range(copies))
                )
            )

        answers = self.run(at_once())
        codes = {a.status_code for a in answers}
        assert codes <= {200, 409, 503}, [a.text for a in answers]
        bodies = [a.json() for a in answers]
        assert len(codes) == 1, f"identical starts answered differently: {bodies}"
        assert len({b.get("segment_id") for b in bodies}) == 1, bodies
        assert {b.get("safe_to_collect") for b in bodies} == {codes == {200}}, bodies
        if codes == {200}:
            self.told_safe = self.paying = True
        elif codes == {503}:
            # Told not to collect: the IVR keeps the payment open and tries again.
            self.paying = True
        self.settle()

    @precondition(lambda self: self.paying)
    @rule()
    def ivr_ends(self) -> None:
        response = self.run(
            self.client.post(
                f"/v1/calls/{self.provider}/{CALL}/payment/end",
                headers={"authorization": f"Bearer {self.ivr}"},
            )
        )
        assert response.status_code in (200, 502, 503), response.text
        # Whatever the answer, the IVR takes no more card details.
        self.paying = self.told_safe = False
        self.settle()

    def settle(self) -> None:
        self.run(self.services.tasks.drain())

    # ---- the promise -----------------------------------------------------------------------

    @invariant()
    def safe_means_paused_or_on_record(self) -> None:
        if not (self.told_safe and self.paying):
            return
        unpaused = [
            name
            for name, state in self.pbx.state.items()
            if state == "recording" and not self.pbx.undelivered(name)
        ]
        if not unpaused:
            return
        call = self.run(
            self.client.get(
                f"/v1/calls/{self.provider}/{CALL}",
                headers={"authorization": f"Bearer {self.reader}"},
            )
        ).json()
        ids = {r["id"]: r["provider_recording_id"] for r in call["recordings"]}
        open_exposures = {
            ids.get(e["recording_id"], "*") if e["recording_id"] else "*"
            for e in call["exposures"]
            if e["ended_at"] is None
        }
        missing = [n for n in unpaused if n not in open_exposures and "*" not in open_exposures]
        assert not missing, (
            f"told safe, yet {missing} records unpaused at the PBX with no open exposure "
            f"(PBX {self.pbx.state}, recgate {[(r['provider_recording_id'], r['state']) for r in call['recordings']]}, "
            f"exposures {call['exposures']}, segments {[s['state'] for s in call['segments']]})"
        )


class GenericPbx(GateMachine):
    """The generic contract: one signed command pauses every recording on the call."""

    provider = webhook = "generic"

    def mock_control(self, router: respx.MockRouter) -> None:
        for action in ("pause", "resume"):
            router.post(f"{CONTROL_URL}/calls/{CALL}/recording/{action}").mock(
                side_effect=lambda request, action=action: self.control(action)
            )

    def control(self, action: str) -> httpx.Response:
        self.pbx.commands += 1
        if self.pbx.mode == "fail":
            return httpx.Response(503)
        if self.pbx.mode == "refuse":
            return httpx.Response(403)
        live = self.pbx.live()
        for name in live:
            self.pbx.state[name] = "paused" if action == "pause" else "recording"
        return httpx.Response(200, json={"state": GENERIC_OK[action] if live else "not_recording"})

    def report(self, kind: str, name: str) -> dict[str, Any]:
        return {
            "type": f"recording.{kind}",
            "occurred_at": self.pbx_now().isoformat(),
            "call": {"id": CALL, "from": "+441632960001", "service_area": "council_tax"},
            "recording": {"id": name, "format": "wav"},
        }


class AriModel(PbxModel):
    """Recordings on the bridge or the agent's channel are the caller's call's only once the
    event that says so (the bridge link, the agent's StasisStart) has been delivered."""

    def undelivered(self, name: str) -> bool:
        link = {"bridge": "link:bridge", "agent": "link:agent"}.get(AsteriskPbx.target_of(name))
        return super().undelivered(name) or (link is not None and super().undelivered(link))


class AsteriskPbx(GateMachine):
    """ARI: recordings paused by name on the caller's channel, the bridge (an alias of the
    caller's call once linked) and an agent's channel (a leg, by linkedid)."""

    provider = webhook = "asterisk"
    # ARI publishes no event when a recording is paused or resumed.
    reported_kinds = ("stopped",)

    def __init__(self) -> None:
        super().__init__()
        self.pbx = AriModel()

    async def setup_call(self) -> None:
        response = await self.deliver_body(
            self.ari("StasisStart", args=[], channel=self.channel()), uuid.uuid4().hex
        )
        assert response.status_code == 200, response.text
        # The agent dialled for the caller, and the caller's bridge: reported like everything
        # else, so they may arrive after recordings they place on the caller's call.
        agent = self.channel(AGENT)
        agent["channelvars"] = {"CHANNEL(linkedid)": CALL}
        self.pbx.pending.append(
            {
                "recording": "link:agent",
                "body": self.ari("StasisStart", args=[], channel=agent),
                "id": uuid.uuid4().hex,
            }
        )
        self.pbx.pending.append(
            {
                "recording": "link:bridge",
                "body": self.ari(
                    "ChannelEnteredBridge",
                    bridge={"id": BRIDGE, "technology": "simple_bridge", "channels": [CALL]},
                    channel=self.channel(),
                ),
                "id": uuid.uuid4().hex,
            }
        )

    def channel(self, channel_id: str = CALL) -> dict[str, Any]:
        return {
            "id": channel_id,
            "name": "PJSIP/trunk-00000001",
            "state": "Up",
            "caller": {"name": "", "number": "+441632960001"},
            "connected": {"name": "", "number": ""},
            "accountcode": "",
            "dialplan": {"context": "from-trunk", "exten": "01632960999", "priority": 1},
            "creationtime": self.stamp(),
            "language": "en",
        }

    def stamp(self) -> str:
        at = self.pbx_now()
        return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}+0000"

    def ari(self, kind: str, **fields: Any) -> dict[str, Any]:
        return {"type": kind, "application": "recgate", "timestamp": self.stamp(), **fields}

    def mock_control(self, router: respx.MockRouter) -> None:
        router.route(url__regex=rf"^{ARI}/recordings/live/([^/]+)/(mute|pause)$").mock(
            side_effect=self.control
        )

    def control(self, request: httpx.Request) -> httpx.Response:
        self.pbx.commands += 1
        name = request.url.path.split("/")[-2]
        if self.pbx.state.get(name, "stopped") == "stopped":
            return httpx.Response(404, json={"message": "Recording not found"})
        if self.pbx.mode == "fail":
            return httpx.Response(500)
        if self.pbx.mode == "refuse":
            return httpx.Response(401, text="Authentication required")
        self.pbx.state[name] = "paused" if request.method == "POST" else "recording"
        return httpx.Response(204)

    @staticmethod
    def target_of(name: str) -> str:
        """Recordings take turns: on the caller's channel, on the bridge (named by the bridge,
        an alias), on the agent's channel (a leg)."""
        if not name.startswith("rec-"):
            return "link"
        return ("caller", "bridge", "agent")[(int(name.split("-")[1]) - 1) % 3]

    def report(self, kind: str, name: str) -> dict[str, Any]:
        target = {
            "caller": f"channel:{CALL}",
            "bridge": f"bridge:{BRIDGE}",
            "agent": f"channel:{AGENT}",
        }[self.target_of(name)]
        recording = {"name": name, "format": "wav", "target_uri": target}
        if kind == "started":
            return self.ari("RecordingStarted", recording={**recording, "state": "recording"})
        return self.ari("RecordingFinished", recording={**recording, "state": "canceled"})


MODEL_SETTINGS = settings(
    max_examples=int(__import__("os").environ.get("GATE_MODEL_EXAMPLES", "12")),
    stateful_step_count=25,
    deadline=None,
    derandomize=not __import__("os").environ.get("GATE_MODEL_RANDOM"),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.mark.parametrize("machine", [GenericPbx, AsteriskPbx], ids=["generic", "asterisk"])
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_safe_means_every_recording_is_paused_or_the_gap_is_on_record(
    machine: type[GateMachine],
    backend: str,
    sqlite_template: Path,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """On PostgreSQL the gate writes optimistically (docs/gate.md), so the model runs there
    too, with the same examples."""
    machine.template = sqlite_template
    machine.workdir = tmp_path
    machine.postgres = (
        request.getfixturevalue("postgres_database") if backend == "postgres" else None
    )
    try:
        run_state_machine_as_test(machine, settings=MODEL_SETTINGS)
    finally:
        machine.postgres = None
