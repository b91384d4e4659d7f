"""Learning rtpengine's finished recording files from its recording directory."""

from __future__ import annotations

import asyncio
import logging

from app.errors import MalformedInput
from app.services.intake import EventIntake
from app.storage.db import DatabaseUnreachable
from app.telephony.rtpengine_spool import RecordingSpool

log = logging.getLogger("recgate.rtpengine")


class SpoolWatcher:
    """Each closed file in rtpengine's recording directory becomes a ``recording.completed``,
    through the same intake as every webhook; its media copy then follows as for any
    provider. Files already taken in are remembered while they stay in the directory (the
    intake would call them duplicates anyway; this saves it the work)."""

    def __init__(self, spool: RecordingSpool, intake: EventIntake) -> None:
        self.spool = spool
        self.intake = intake
        self._taken: set[str] = set()

    async def scan(self) -> int:
        """Take in every new closed file; how many were new to recgate."""
        files = await asyncio.to_thread(self.spool.finished)
        present = {f.event.event_id for f in files}
        self._taken &= present  # files deleted since: forget them
        new = 0
        for spooled in files:
            if spooled.event.event_id in self._taken:
                continue
            payload = {"source": "rtpengine recording directory", "metadata": spooled.metadata}
            try:
                result = await self.intake.accept(spooled.event, payload, spooled.metadata.encode())
            except MalformedInput as exc:
                # Dead-lettered by the intake; not worth offering again.
                log.warning("rtpengine spool file refused: %s", exc)
            except DatabaseUnreachable:
                raise  # the job logs it and the next scan offers every file again
            except Exception:
                # One file that cannot be taken in must not stop the ones after it; it is
                # offered again on the next scan.
                log.exception("rtpengine spool file could not be taken in")
                continue
            else:
                new += not result.duplicate
            self._taken.add(spooled.event.event_id)
        return new
