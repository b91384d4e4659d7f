"""Builds the enabled provider controllers from settings."""

from __future__ import annotations

import httpx

from app.config import Settings
from app.domain.clock import Clock
from app.telephony.asterisk import AsteriskController
from app.telephony.base import RecordingController
from app.telephony.generic import GenericController
from app.telephony.rtpengine import NgClient, RtpengineController
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
    if settings.ari_url and settings.ari_user and settings.ari_password is not None:
        # Without credentials there is no controller: payments on Asterisk calls then fail
        # closed as "control not configured" rather than as a string of 401s.
        controllers["asterisk"] = AsteriskController(
            client, settings.ari_url, settings.ari_user, settings.ari_password.get_secret_value()
        )
    if settings.rtpengine_ng:
        # The UDP socket opens on first use, inside the running loop; Services.close closes it.
        controllers["rtpengine"] = RtpengineController(
            NgClient(settings.rtpengine_ng),
            block_dtmf=settings.rtpengine_block_dtmf,
            timeout_s=settings.provider_request_timeout_s,
        )
    if settings.sim_enabled:
        controllers["sim"] = SimPbx(latency_s=settings.sim_pause_latency_ms / 1000)
    return controllers
