"""The built-in consumer of the Asterisk ARI event WebSocket (SPEC §3.2).

Connects to ``ws(s)://…/ari/events?app=RECGATE_ARI_APP&subscribeAll=false`` with HTTP Basic
auth, parses each event with :mod:`app.telephony.asterisk` and hands it to the one ingestion
path (:meth:`EventIntake.accept`), exactly as a relayed ``POST /v1/webhooks/asterisk`` would;
the event ids are the same both ways, so running both stores each event once.

ARI does not buffer events for a disconnected application: what happens while the socket is
down is lost. The consumer reconnects with capped exponential backoff, and a recording it
missed cannot be paused by name, so a payment on that call fails closed rather than open.
"""

from __future__ import annotations

import asyncio
import base64
import logging

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from app.config import Settings
from app.domain.clock import Clock
from app.jobs.consumed import dead_letter, hand_over
from app.services.intake import EventIntake
from app.services.metrics import Metrics
from app.telephony import asterisk

log = logging.getLogger("recgate.ari_events")
# websockets logs every handshake header (the Authorization one included) and every frame
# (caller numbers, DTMF digits) at DEBUG. Its own logger, capped at INFO, keeps them out of
# the logs whatever the root level.
_ws_log = logging.getLogger("recgate.ari_events.websocket")
_ws_log.setLevel(logging.INFO)

INITIAL_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0
_PROVIDER = asterisk.PROVIDER


def events_url(ari_url: str, app: str) -> str:
    """The event WebSocket URL for the ARI base ``ari_url`` (which includes ``/ari``).

    Credentials written into ``ari_url`` are dropped from it: ``RECGATE_ARI_USER`` and
    ``RECGATE_ARI_PASSWORD`` travel in the Authorization header, never in a URL that might be
    logged.
    """
    base = httpx.URL(ari_url)
    scheme = {"https": "wss", "wss": "wss"}.get(base.scheme, "ws")
    url = base.copy_with(
        scheme=scheme,
        username=None,
        password=None,
        path=base.path.rstrip("/") + "/events",
        params={"app": app, "subscribeAll": "false"},
    )
    return str(url)


class AriEventConsumer:
    """Reads ARI events until cancelled; one bad message or a dropped socket never ends it."""

    def __init__(
        self,
        settings: Settings,
        intake: EventIntake,
        clock: Clock,
        metrics: Metrics,
        *,
        initial_backoff_s: float = INITIAL_BACKOFF_S,
        max_backoff_s: float = MAX_BACKOFF_S,
    ) -> None:
        if not settings.ari_url:
            raise ValueError("the ARI event consumer needs RECGATE_ARI_URL")
        self.settings = settings
        self.ari_url = settings.ari_url
        self.intake = intake
        self.clock = clock
        self.metrics = metrics
        self.url = events_url(settings.ari_url, settings.ari_app)
        # For logs: host and port only, never the URL with its query or any credential.
        parsed = httpx.URL(self.url)
        self.where = f"{parsed.host}:{parsed.port or ''}".rstrip(":")
        self.initial_backoff_s = initial_backoff_s
        self.max_backoff_s = max_backoff_s

    def _headers(self) -> dict[str, str]:
        user, password = self.settings.ari_user, self.settings.ari_password
        if not user or password is None:
            return {}
        token = base64.b64encode(f"{user}:{password.get_secret_value()}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    async def run(self) -> None:
        """Consume events, reconnecting with backoff, until the task is cancelled."""
        if not self._headers():
            log.warning("ARI event socket: RECGATE_ARI_USER/RECGATE_ARI_PASSWORD not set")
        delay = self.initial_backoff_s
        while True:
            replaced = False
            try:
                async with connect(
                    self.url,
                    additional_headers=self._headers(),
                    # ARI sits on the PBX's network; an environment proxy is not for it.
                    proxy=None,
                    open_timeout=10,
                    logger=_ws_log,
                ) as socket:
                    log.info(
                        "ARI event socket connected to %s for app %s",
                        self.where,
                        self.settings.ari_app,
                    )
                    delay = self.initial_backoff_s
                    replaced = not await self._consume(socket)
                log.warning("ARI event socket to %s closed", self.where)
            except asyncio.CancelledError:
                raise
            except (OSError, TimeoutError, WebSocketException) as exc:
                log.warning("ARI event socket to %s failed: %s", self.where, type(exc).__name__)
            except Exception:  # never let one surprise end event intake for good
                log.exception("ARI event socket to %s failed unexpectedly", self.where)
            if replaced:
                # Another client took the application over (ARI sends each app's events to
                # one socket, the newest). Taking it straight back would make the two fight;
                # wait the longest backoff, so a live replacement keeps it most of the time.
                delay = self.max_backoff_s
            log.info("ARI event socket reconnecting in %.1fs", delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.max_backoff_s)

    async def _consume(self, socket: ClientConnection) -> bool:
        """Handle messages until the socket closes; False when the app was taken over."""
        async for message in socket:
            if not await self.handle(message):
                return False
        return True

    async def handle(self, message: str | bytes) -> bool:
        """Parse and apply one message; False when ARI says another socket took the app over.

        A message that cannot be read is dead-lettered; one that cannot be applied (database
        down) is logged. Neither stops the consumer.
        """
        raw = message.encode() if isinstance(message, str) else message
        now = self.clock()
        try:
            data = asterisk.parse_body(raw)
            if data.get("type") == "ApplicationReplaced":
                log.error(
                    "ARI app %s was taken over by another WebSocket client; recgate no longer "
                    "receives its events",
                    self.settings.ari_app,
                )
                return False
            event = asterisk.parse_event(data, now=now, ari_url=self.ari_url)
        except asterisk.MalformedEvent as exc:
            await self._dead_letter(str(exc), raw)
            return True
        await hand_over(self.intake, self.metrics, log, _PROVIDER, event, data, raw)
        return True

    async def _dead_letter(self, reason: str, raw: bytes) -> None:
        await dead_letter(self.intake, log, _PROVIDER, reason, raw)


def ari_events_enabled(settings: Settings) -> bool:
    """Whether the service consumes the ARI WebSocket itself (``RECGATE_ARI_EVENTS``)."""
    return bool(settings.ari_events and settings.ari_url)
