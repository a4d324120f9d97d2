"""Base Pydantic model for the HTTP contract: camelCase outside, snake_case inside."""

from __future__ import annotations

import re
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, GetCoreSchemaHandler
from pydantic.alias_generators import to_camel as _pydantic_camel
from pydantic_core import CoreSchema

_DIGIT_UNIT = re.compile(r"(\d)([A-Z])")


def to_camel(name: str) -> str:
    """snake_case -> camelCase, keeping units after digits lower case (input_per_1k -> inputPer1k)."""
    return _DIGIT_UNIT.sub(lambda m: m.group(1) + m.group(2).lower(), _pydantic_camel(name))


# Core-schema keys that hold values or settings, not nested schemas.
_NOT_SCHEMAS = frozenset({"default", "metadata", "serialization", "ref", "config"})


def _strict_ints(schema: Any) -> None:
    """Every integer of a request body is strict: ``true``, ``5.0`` and ``"5"`` are not 5.

    Pydantic's lax mode would take ``{"level": false}`` as level 0. Walking the model's core
    schema once, at class creation, makes this hold for every int field of every request
    model (optional, in lists, in nested models) without repeating ``strict=True`` on each.
    """
    if isinstance(schema, dict):
        if schema.get("type") == "int":
            schema["strict"] = True
        for key, value in schema.items():
            if key not in _NOT_SCHEMAS:
                _strict_ints(value)
    elif isinstance(schema, list):
        for item in schema:
            _strict_ints(item)


class ApiModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        from_attributes=True,
        serialize_by_alias=True,
    )

    @classmethod
    def read(cls, source: object, **computed: Any) -> Self:
        """The model from ``source``'s attributes (an ORM row), the fields it lacks given as
        ``computed``: a service returns the answer's own type, its fields declared once."""
        return cls.model_validate(cls.attributes(source, **computed))

    @classmethod
    def attributes(cls, source: object, **computed: Any) -> dict[str, Any]:
        """The model's fields as ``read`` takes them from ``source``, unvalidated, by their Python
        names: an audit entry's content where even validating would cost (the ledger engine)."""
        return {name: computed[name] if name in computed else getattr(source, name) for name in cls.model_fields}

    def snapshot(self) -> dict[str, Any]:
        """The fields by their Python names (snake_case), as audit entries keep them."""
        return self.model_dump(by_alias=False)


class StrictInput(ApiModel):
    """Request bodies: unknown fields are an error, so a typo never passes silently."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=False,
        serialize_by_alias=False,  # model_dump() feeds services, which speak snake_case
        extra="forbid",
        str_strip_whitespace=True,
    )

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        schema = handler(source)
        _strict_ints(schema)
        return schema
