"""Fast, canonical JSON (orjson) used for responses, logs, hashes and the stores."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any, TypeAlias

import orjson

# A JSON document as :func:`loads` gives it back: what is hashed, stored or sent as it is.
JsonValue: TypeAlias = "bool | int | float | str | list[JsonValue] | dict[str, JsonValue] | None"
JsonObject: TypeAlias = "dict[str, JsonValue]"


def _default(value: Any) -> Any:
    # Drivers hand back their own UUID subclasses (asyncpg), which orjson does not take as UUID.
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Decimal):  # exact: "2.500000", never a rounded float
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=_default, option=orjson.OPT_NON_STR_KEYS)


def canonical(value: Any) -> bytes:
    """Sorted keys, no whitespace: the same value always gives the same bytes (for hashes)."""
    return orjson.dumps(value, default=_default, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)


def loads(data: bytes | str) -> Any:
    return orjson.loads(data)
