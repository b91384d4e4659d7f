"""Every provider recgate speaks to, listed once: adding one is its module and a line here."""

from __future__ import annotations

import httpx

from app.config import Settings
from app.domain.clock import Clock
from app.telephony import (
    asterisk,
    connect,
    freeswitch,
    generic,
    genesys,
    rtpengine,
    sim,
    twilio,
)
from app.telephony.base import RecordingController
from app.telephony.provider import Provider

PROVIDERS: tuple[Provider, ...] = (
    generic.ADAPTER,
    sim.ADAPTER,
    twilio.ADAPTER,
    asterisk.ADAPTER,
    rtpengine.ADAPTER,
    freeswitch.ADAPTER,
    genesys.ADAPTER,
    connect.ADAPTER,
)


def enabled_providers(settings: Settings) -> list[str]:
    """The providers whose events recgate takes with these settings."""
    return [provider.name for provider in PROVIDERS if provider.configured(settings)]


def build_controllers(
    settings: Settings, client: httpx.AsyncClient, clock: Clock
) -> dict[str, RecordingController]:
    """One controller per enabled provider that can be commanded, keyed by provider name."""
    controllers: dict[str, RecordingController] = {}
    for provider in PROVIDERS:
        if not provider.configured(settings):
            continue
        controller = provider.controller(settings, client, clock)
        if controller is not None:
            controllers[provider.name] = controller
    return controllers
