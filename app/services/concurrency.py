"""Tracked background work, and the IVR's turn first."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager, suppress
from typing import Any

# Work that can wait (webhooks, their batches) waits this long at most for the IVR's
# payment requests being answered to be done (:class:`Answering`): long enough for a start
# or an end to finish, short enough that no webhook waits for long behind a stream of them.
IVR_FIRST_S = 0.05


class Answering:
    """The IVR's payment starts and ends being answered right now, and a bounded wait until
    there are none.

    One event loop runs every request of the process: while webhooks pour in, each step of
    a payment (its transactions, the PBX's answer, the response) queued behind a burst of
    them, and on SQLite behind a batch holding the write lock. Webhooks and batches that
    arrive while the IVR waits let it go first, for at most :data:`IVR_FIRST_S` each time
    (a webhook before it is read, its batch again before it starts)."""

    def __init__(self) -> None:
        self.count = 0
        # Webhooks and batches waiting in :meth:`done` right now.
        self.waiting = 0
        self._none = asyncio.Event()
        self._none.set()

    @property
    def busy(self) -> bool:
        return self.count > 0

    @contextmanager
    def one(self) -> Iterator[None]:
        """Count one request while the block runs."""
        self.count += 1
        self._none.clear()
        try:
            yield
        finally:
            self.count -= 1
            if not self.count:
                self._none.set()

    async def done(self) -> None:
        """Until no request is being answered, or :data:`IVR_FIRST_S` has passed."""
        if not self.count:
            return
        self.waiting += 1
        try:
            # Not wait_for: on 3.11 it can swallow a cancellation that meets the event.
            with suppress(TimeoutError):
                async with asyncio.timeout(IVR_FIRST_S):
                    await self._none.wait()
        finally:
            self.waiting -= 1


log = logging.getLogger("recgate.background")


class BackgroundTasks:
    """Fire-and-track tasks: errors are logged, shutdown cancels them, tests can drain them."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %s failed", task.get_name(), exc_info=task.exception())

    async def drain(self) -> None:
        """Wait until every task spawned so far (and any they spawn) has finished."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
