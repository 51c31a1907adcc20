"""API keys: `Authorization: Bearer KEY` or `X-API-Key: KEY`, compared in constant time.

The same headers over HTTP, on a WebSocket handshake and as gRPC metadata
(`authorization`, `x-api-key`). Health,
readiness and metrics stay open (probes and scrapers carry no key). With no key
configured auth is off, and start-up logs a warning saying so.
"""

from __future__ import annotations

import hmac
import logging

from fastapi import Request
from starlette.requests import HTTPConnection

from mplstm.service.errors import ForbiddenError, UnauthorizedError

log = logging.getLogger(__name__)


def keys_match(given: str, keys: frozenset[str]) -> bool:
    """Whether `given` is one of `keys`, comparing against every key in constant time."""
    found = False
    for key in keys:
        # No early exit: the time taken tells neither which key nor how much of one matched.
        found |= hmac.compare_digest(given.encode(), key.encode())
    return found


def key_from_headers(authorization: str | None, x_api_key: str | None) -> str | None:
    """The key carried by an `authorization: Bearer KEY` or an `x-api-key` header."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return x_api_key or None


def presented_key(request: HTTPConnection) -> str | None:
    """The key a request (or a WebSocket handshake) carries, from either header."""
    return key_from_headers(request.headers.get("authorization"), request.headers.get("x-api-key"))


def check_api_key(given: str | None, keys: frozenset[str]) -> None:
    """UnauthorizedError unless auth is off (no keys) or `given` is one of `keys`."""
    if not keys:
        return
    if given is None:
        raise UnauthorizedError(
            "this server needs an API key: send `Authorization: Bearer KEY` or `X-API-Key: KEY`"
        )
    if not keys_match(given, keys):
        raise UnauthorizedError("the API key is not valid")


async def require_api_key(request: Request) -> None:
    """FastAPI dependency: 401 unless auth is off or the request carries a valid key."""
    keys: frozenset[str] = request.app.state.api_keys
    if keys:
        check_api_key(presented_key(request), keys)


async def require_admin_key(request: Request) -> None:
    """FastAPI dependency: 401/403 unless auth is off or the key has the admin scope
    (`MPLSTM_ADMIN_API_KEYS`): enrolment in and deletion from a gallery."""
    admin: frozenset[str] = request.app.state.admin_keys
    if not request.app.state.api_keys:
        return
    given = presented_key(request)
    if given is None:
        raise UnauthorizedError(
            "this route needs an admin API key: send `Authorization: Bearer KEY` or `X-API-Key: KEY`"
        )
    if keys_match(given, admin):
        return
    if keys_match(given, request.app.state.api_keys):
        raise ForbiddenError(
            "this key may identify and verify, not enrol or delete: use a key listed in "
            "MPLSTM_ADMIN_API_KEYS"
        )
    raise UnauthorizedError("the API key is not valid")
