"""Roles a token carries (SPEC §3)."""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    IVR = "ivr"
    OPS = "ops"
    SUPERVISOR = "supervisor"
    DPO = "dpo"
    ADMIN = "admin"


def may_use(role: Role, allowed: frozenset[Role]) -> bool:
    """``admin`` may use everything; any other role only what names it."""
    return role == Role.ADMIN or role in allowed
