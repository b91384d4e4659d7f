"""The built-in consumer of FreeSWITCH's event socket (``mod_event_socket``, inbound mode).

Connects to ``RECGATE_FREESWITCH_ESL_HOST:PORT``, authenticates, subscribes with ``event
plain CHANNEL_ANSWER CHANNEL_HANGUP_COMPLETE RECORD_START RECORD_STOP HEARTBEAT``, parses each
event with :mod:`app.telephony.freeswitch` and hands it to the one ingestion path
(:meth:`EventIntake.accept`), so scrubbing, deduplication and the payment gate apply as for
every provider. Only the headers recgate reads are stored, never the channel variables.

FreeSWITCH keeps no events for a client that is not connected: what happens while the socket
is down is lost. The consumer reconnects with capped, jittered exponential backoff and
subscribes again; a ``RECORD_START`` it missed leaves that recording unknown: a payment on a
call with no known recording fails closed (``uuid_record`` needs the path), but one on a call
with another known recording masks that one only (docs/providers.md says so). A connection that has carried
nothing, not even FreeSWITCH's ``HEARTBEAT`` (every 20 s by default), for ``idle_timeout_s``
is taken for dead and replaced.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

from app.config import Settings
from app.domain.clock import Clock
from app.jobs.consumed import dead_letter, hand_over
from app.services.intake import EventIntake
from app.services.metrics import Metrics
from app.telephony import freeswitch
from app.telephony.base import ProviderRejected, ProviderUnavailable

log = logging.getLogger("recgate.freeswitch_events")

INITIAL_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0
# Four of FreeSWITCH's default heartbeats.
IDLE_TIMEOUT_S = 90.0
CONNECT_TIMEOUT_S = 10.0
SUBSCRIPTION = "event plain " + " ".join((*freeswitch.SUBSCRIBED, freeswitch.HEARTBEAT))
_PROVIDER = freeswitch.PROVIDER


class FreeSwitchEventConsumer:
    """Reads FreeSWITCH events until cancelled; one bad event or a dropped socket never ends it."""

    def __init__(
        self,
        settings: Settings,
        intake: EventIntake,
        clock: Clock,
        metrics: Metrics,
        *,
        initial_backoff_s: float = INITIAL_BACKOFF_S,
        max_backoff_s: float = MAX_BACKOFF_S,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        if not settings.freeswitch_esl_host:
            raise ValueError("the FreeSWITCH event consumer needs RECGATE_FREESWITCH_ESL_HOST")
        self.host = settings.freeswitch_esl_host
        self.port = settings.freeswitch_esl_port
        password = settings.freeswitch_esl_password
        self._password = password.get_secret_value() if password is not None else ""
        self.intake = intake
        self.clock = clock
        self.metrics = metrics
        self.initial_backoff_s = initial_backoff_s
        self.max_backoff_s = max_backoff_s
        self.idle_timeout_s = idle_timeout_s
        self.jitter = jitter
        self.where = f"{self.host}:{self.port}"
        self.subscriptions = 0

    def backoff(self, delay: float) -> float:
        """The pause before the next attempt: between half of ``delay`` and all of it, so
        replicas that lost FreeSWITCH together do not all come back at the same instant."""
        return delay * (0.5 + 0.5 * self.jitter())

    async def run(self) -> None:
        """Consume events, reconnecting with backoff, until the task is cancelled."""
        if not self._password:
            log.warning("FreeSWITCH event socket: RECGATE_FREESWITCH_ESL_PASSWORD is not set")
        delay = self.initial_backoff_s
        while True:
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow the
                # cancellation that stops the service when the read ends at the same moment.
                async with asyncio.timeout(CONNECT_TIMEOUT_S):
                    connection = await freeswitch.EslConnection.open(
                        self.host, self.port, self._password
                    )
                try:
                    await self._subscribe(connection)
                    self.subscriptions += 1
                    log.info("FreeSWITCH event socket at %s connected and subscribed", self.where)
                    delay = self.initial_backoff_s
                    await self._consume(connection)
                finally:
                    connection.close()
            except asyncio.CancelledError:
                raise
            except ProviderRejected as exc:
                # A wrong password or an ACL: nothing recgate can fix, but the PBX side can.
                log.error("FreeSWITCH event socket at %s refused: %s", self.where, exc)
            except (ProviderUnavailable, OSError, TimeoutError) as exc:
                log.warning(
                    "FreeSWITCH event socket at %s failed: %s",
                    self.where,
                    str(exc) or type(exc).__name__,
                )
            except Exception:  # never let one surprise end event intake for good
                log.exception("FreeSWITCH event socket at %s failed unexpectedly", self.where)
            pause = self.backoff(delay)
            log.info("FreeSWITCH event socket reconnecting in %.1fs", pause)
            await asyncio.sleep(pause)
            delay = min(delay * 2, self.max_backoff_s)

    async def _subscribe(self, connection: freeswitch.EslConnection) -> None:
        await connection.send(SUBSCRIPTION)
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            while True:
                frame = await connection.read()
                if frame.content_type == "command/reply":
                    break
        if not frame.reply_text.startswith("+OK"):
            # e.g. "-ERR permission denied": an ESL user whose esl-allowed-events leaves one out.
            raise ProviderRejected(f"subscription refused: {frame.reply_text[:80]}")

    async def _consume(self, connection: freeswitch.EslConnection) -> None:
        """Handle frames until the connection ends, says it is closing, or goes quiet."""
        while True:
            try:
                async with asyncio.timeout(self.idle_timeout_s):
                    frame = await connection.read()
            except TimeoutError:
                log.warning(
                    "FreeSWITCH event socket at %s silent for %.0fs (no HEARTBEAT); reconnecting",
                    self.where,
                    self.idle_timeout_s,
                )
                return
            if frame.content_type == "text/event-plain":
                await self.handle(frame.body)
            elif frame.content_type == "text/disconnect-notice":
                log.warning("FreeSWITCH event socket at %s is closing the connection", self.where)
                return

    async def handle(self, body: bytes) -> None:
        """Parse and apply one plain event. One that cannot be read is dead-lettered (its kept
        headers only); one that cannot be applied (database down) is logged. Neither stops the
        consumer."""
        headers = freeswitch.plain_event_headers(body)
        if headers.get("Event-Name") == freeswitch.HEARTBEAT:
            return
        stored = freeswitch.kept(headers)
        raw = freeswitch.kept_bytes(headers)
        try:
            event = freeswitch.parse_event(headers, now=self.clock())
        except freeswitch.MalformedEvent as exc:
            await self._dead_letter(str(exc), raw)
            return
        await hand_over(self.intake, self.metrics, log, _PROVIDER, event, stored, raw)

    async def _dead_letter(self, reason: str, raw: bytes) -> None:
        await dead_letter(self.intake, log, _PROVIDER, reason, raw)


def freeswitch_events_enabled(settings: Settings) -> bool:
    """Whether the service consumes FreeSWITCH's event socket (``RECGATE_FREESWITCH_EVENTS``)."""
    return bool(settings.freeswitch_events and settings.freeswitch_esl_host)
