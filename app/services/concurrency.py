"""Per-call serialisation and tracked background work."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import weakref
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger("recgate.background")
_ADVISORY_POLL_S = 0.02


class CallBusy(Exception):
    """The call's lock was not free within the time allowed."""


class CallLocks:
    """One lock per call, held across a provider round trip, so that work on one call (a
    payment start, its end, a late pause) happens one at a time.

    In one process an asyncio lock does it. On PostgreSQL a session-level advisory lock on a
    dedicated autocommit connection extends it to every replica; no transaction is open while
    it is held. SQLite serves a single process, so the asyncio lock is enough there.
    """

    def __init__(self, engine: AsyncEngine | None = None) -> None:
        self.engine = engine if engine is not None and engine.dialect.name == "postgresql" else None
        self._locks: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    @staticmethod
    def advisory_key(provider: str, provider_call_id: str) -> int:
        digest = hashlib.blake2b(f"{provider}\0{provider_call_id}".encode(), digest_size=8)
        return int.from_bytes(digest.digest(), "big", signed=True)

    @asynccontextmanager
    async def hold(
        self, provider: str, provider_call_id: str, timeout_s: float | None = None
    ) -> AsyncIterator[None]:
        """Hold the call's lock; :class:`CallBusy` when it is not free within ``timeout_s``."""
        key = (provider, provider_call_id)
        lock = self._locks.get(key)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[key] = lock
        try:
            async with asyncio.timeout(timeout_s):
                await lock.acquire()
        except TimeoutError as exc:
            raise CallBusy() from exc
        try:
            if self.engine is None:
                yield
                return
            async with self._advisory(self.advisory_key(provider, provider_call_id), timeout_s):
                yield
        finally:
            lock.release()

    @asynccontextmanager
    async def _advisory(self, key: int, timeout_s: float | None) -> AsyncIterator[None]:
        assert self.engine is not None
        async with self.engine.connect() as raw:
            conn = await raw.execution_options(isolation_level="AUTOCOMMIT")
            loop = asyncio.get_running_loop()
            give_up = None if timeout_s is None else loop.time() + timeout_s
            # try-lock polling rather than a blocking pg_advisory_lock: cancelling a wait is
            # then always clean, and the wait is bounded by the caller's deadline.
            while not (await conn.execute(sa.select(sa.func.pg_try_advisory_lock(key)))).scalar():
                if give_up is not None and loop.time() >= give_up:
                    raise CallBusy()
                await asyncio.sleep(_ADVISORY_POLL_S)
            try:
                yield
            finally:
                await conn.execute(sa.select(sa.func.pg_advisory_unlock(key)))


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
