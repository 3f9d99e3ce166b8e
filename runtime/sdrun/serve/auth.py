"""`--api-key`: every route but GET /health asks for `Authorization: Bearer KEY` (as OpenAI's API does)."""

import hmac
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request
from starlette.exceptions import HTTPException


def bearer_key(api_key: str | None) -> Callable[[Request], Coroutine[Any, Any, None]]:
    """A FastAPI dependency refusing requests without the key (401); allowing all when there is none."""

    async def check(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise HTTPException(
                401,
                "this server needs an API key: send the header `Authorization: Bearer KEY`",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return check
