"""Builds the enabled provider controllers from settings."""

from __future__ import annotations

import httpx

from app.config import Settings
from app.domain.clock import Clock
from app.telephony.base import RecordingController
from app.telephony.generic import GenericController
from app.telephony.sim import SimPbx
from app.telephony.twilio import TwilioController


def build_controllers(
    settings: Settings, client: httpx.AsyncClient, clock: Clock
) -> dict[str, RecordingController]:
    """One controller per enabled provider, keyed by provider name."""
    controllers: dict[str, RecordingController] = {}
    key = settings.generic_secret_key
    if key is not None and settings.generic_control_url:
        controllers["generic"] = GenericController(client, settings.generic_control_url, key, clock)
    if settings.twilio_account_sid and settings.twilio_auth_token is not None:
        controllers["twilio"] = TwilioController(
            client,
            settings.twilio_api_base,
            settings.twilio_account_sid,
            settings.twilio_auth_token.get_secret_value(),
            clock,
        )
    if settings.sim_enabled:
        controllers["sim"] = SimPbx(latency_s=settings.sim_pause_latency_ms / 1000)
    return controllers
