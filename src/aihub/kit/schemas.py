"""Base Pydantic model for the HTTP contract: camelCase outside, snake_case inside."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel as _pydantic_camel

_DIGIT_UNIT = re.compile(r"(\d)([A-Z])")


def to_camel(name: str) -> str:
    """snake_case -> camelCase, keeping units after digits lower case (input_per_1k -> inputPer1k)."""
    return _DIGIT_UNIT.sub(lambda m: m.group(1) + m.group(2).lower(), _pydantic_camel(name))


class ApiModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        from_attributes=True,
        serialize_by_alias=True,
    )


class StrictInput(ApiModel):
    """Request bodies: unknown fields are an error, so a typo never passes silently."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=False,
        serialize_by_alias=False,  # model_dump() feeds services, which speak snake_case
        extra="forbid",
        str_strip_whitespace=True,
    )
