"""API tokens: created and shown once, stored only as a SHA-256 hash, revocable."""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.domain.clock import Clock
from app.domain.roles import Role
from app.domain.row_ids import new_id
from app.errors import Conflict, NotFound
from app.storage.db import Database
from app.storage.live import LiveCallRepository
from app.storage.models import ApiToken
from app.storage.repositories import TokenRepository

TOKEN_PREFIX = "rg_"  # noqa: S105 - a public prefix, not a secret


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the token's name and role."""

    name: str
    role: Role


@dataclass(frozen=True, slots=True)
class TokenInfo:
    name: str
    role: Role
    created_at: datetime
    revoked_at: datetime | None


def hash_token(token: str) -> str:
    # Tokens are 256 random bits, so a plain SHA-256 is enough: nothing to brute-force.
    return hashlib.sha256(token.encode()).hexdigest()


class TokenService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        clock: Clock,
        on_revoke: Callable[[], None] = lambda: None,
    ) -> None:
        self.sessions = sessions
        self.clock = clock
        # Told when a token is revoked here, so this process stops honouring it at once.
        self.on_revoke = on_revoke

    async def create(self, name: str, role: Role) -> str:
        """Create a token and return it; this is the only time it exists in clear."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        async with self.sessions() as session, session.begin():
            repo = TokenRepository(session)
            if await repo.by_name(name) is not None:
                raise Conflict(f"A token named {name!r} exists already.")
            repo.add(
                ApiToken(
                    id=new_id(),
                    name=name,
                    role=role.value,
                    token_hash=hash_token(token),
                    created_at=self.clock(),
                )
            )
        return token

    async def list(self) -> list[TokenInfo]:
        async with self.sessions() as session:
            tokens = await TokenRepository(session).all()
        return [TokenInfo(t.name, Role(t.role), t.created_at, t.revoked_at) for t in tokens]

    async def revoke(self, name: str) -> None:
        async with self.sessions() as session, session.begin():
            token = await TokenRepository(session).by_name(name)
            if token is None:
                raise NotFound(f"No token named {name!r}.")
            if token.revoked_at is None:
                token.revoked_at = self.clock()
        self.on_revoke()


# A valid token's principal is kept this long: the payment endpoints then pay no database
# read per request. A token revoked (from the CLI, any replica) stops working within it.
TOKEN_CACHE_S = 5.0
_TOKEN_CACHE_MAX = 1024


class TokenAuthenticator:
    """Checks the bearer token of every request: one indexed read that takes no write lock
    (on SQLite it would otherwise queue behind every webhook), then kept for
    :data:`TOKEN_CACHE_S`. Only known, unrevoked tokens are kept, by hash, never in clear."""

    def __init__(self, db: Database, ttl_s: float = TOKEN_CACHE_S) -> None:
        self.db = db
        self.ttl_s = ttl_s
        self._known: dict[str, tuple[Principal, float]] = {}
        # Bumped by forget(): a check that read its row before a revoke must not keep it after.
        self._generation = 0

    async def authenticate(self, token: str) -> Principal | None:
        """The principal behind ``token``, or None when it is unknown or revoked."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > 128:
            return None
        digest = hash_token(token)
        now = time.monotonic()
        kept = self._known.get(digest)
        if kept is not None and kept[1] > now:
            return kept[0]
        generation = self._generation
        found = await self.db.read(lambda conn: LiveCallRepository(conn).principal(digest))
        if found is None:
            self._known.pop(digest, None)
            return None
        principal = Principal(found[0], Role(found[1]))
        if generation != self._generation:
            return principal  # read before a revoke here: answered, not kept
        if len(self._known) >= _TOKEN_CACHE_MAX:
            self._known = {k: v for k, v in self._known.items() if v[1] > now}
            if len(self._known) >= _TOKEN_CACHE_MAX:
                self._known.clear()
        self._known[digest] = (principal, now + self.ttl_s)
        return principal

    def forget(self) -> None:
        """Drop every kept principal (a token was revoked in this process)."""
        self._generation += 1
        self._known.clear()
