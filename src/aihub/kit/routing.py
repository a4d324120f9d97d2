"""The route class of every FastAPI service: a UUID path parameter only matches a UUID.

Without this, ``/api/promo-codes/{promo_id}`` (GET, PATCH) also matches the literal
``/api/promo-codes/redeem``, so ``GET /api/promo-codes/redeem`` answered 422 (``redeem`` is
not a UUID) instead of 405, and ``DELETE /api/users/me`` 422 instead of 405. Declaring each
UUID parameter with a convertor that only matches UUID text lets the router see that the
path belongs to the literal route: 405 with the right ``Allow``, and 404 for a path that is
no resource at all (``/api/users/not-a-uuid``).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Annotated, Any, get_args, get_origin, get_type_hints

from fastapi.routing import APIRoute
from starlette.convertors import Convertor, register_url_convertor

_PARAM = re.compile(r"\{(\w+)\}")
_HEX = "[0-9a-fA-F]"


class UUIDText(Convertor[str]):
    """Text shaped like a UUID (any case, dashes optional); FastAPI still parses it as one."""

    regex = f"{_HEX}{{8}}-?{_HEX}{{4}}-?{_HEX}{{4}}-?{_HEX}{{4}}-?{_HEX}{{12}}"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return str(value)


register_url_convertor("uuid_text", UUIDText())


def _uuid_params(endpoint: Callable[..., Any]) -> set[str]:
    names = set()
    for name, hint in get_type_hints(endpoint, include_extras=True).items():
        base = get_args(hint)[0] if get_origin(hint) is Annotated else hint
        if base is uuid.UUID:
            names.add(name)
    return names


def typed_path(path: str, endpoint: Callable[..., Any]) -> str:
    names = _uuid_params(endpoint)
    return _PARAM.sub(lambda m: f"{{{m[1]}:uuid_text}}" if m[1] in names else m[0], path)


class ApiRoute(APIRoute):
    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(typed_path(path, endpoint), endpoint, **kwargs)
