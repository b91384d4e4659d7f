"""API tokens: created and shown once, stored only as a SHA-256 hash, revocable."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.domain.clock import Clock
from app.domain.roles import Role
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
    def __init__(self, sessions: async_sessionmaker[AsyncSession], clock: Clock) -> None:
        self.sessions = sessions
        self.clock = clock

    async def create(self, name: str, role: Role) -> str:
        """Create a token and return it; this is the only time it exists in clear."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        async with self.sessions() as session, session.begin():
            repo = TokenRepository(session)
            if await repo.by_name(name) is not None:
                raise Conflict(f"A token named {name!r} exists already.")
            repo.add(
                ApiToken(
                    id=uuid.uuid4(),
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


class TokenAuthenticator:
    """Checks the bearer token of every request: one indexed read that takes no write lock
    (on SQLite it would otherwise queue behind every webhook)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def authenticate(self, token: str) -> Principal | None:
        """The principal behind ``token``, or None when it is unknown or revoked."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > 128:
            return None
        digest = hash_token(token)
        found = await self.db.read(lambda conn: LiveCallRepository(conn).principal(digest))
        return None if found is None else Principal(found[0], Role(found[1]))
