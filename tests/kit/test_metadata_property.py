"""Property test of the one metadata validator (``aihub.kit.inputs.Metadata``).

Any JSON-ish value, including what a parser hands over for hostile input (integers beyond 64
bits, NaN and infinities, lone surrogates, deep nesting, big strings): the validator either
refuses it with a ValidationError (a 422 over HTTP), or accepts it, and then the value is
within every bound and survives the trip through JSON (what the database stores) unchanged.
"""

from __future__ import annotations

import math
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from aihub.kit.inputs import (
    INT64_MAX,
    INT64_MIN,
    MAX_METADATA_BYTES,
    MAX_METADATA_DEPTH,
    MAX_METADATA_KEYS,
    Metadata,
    metadata_problem,
)

ADAPTER: TypeAdapter[dict[str, Any]] = TypeAdapter(Metadata)
# Every code point, lone surrogates and NUL included.
TEXT = st.text(st.characters(exclude_categories=()), max_size=12) | st.sampled_from(["\x00", "\ud800", "x" * 3000])
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from([INT64_MAX, INT64_MIN, INT64_MAX + 1, INT64_MIN - 1])
    | st.floats(allow_nan=True, allow_infinity=True)
    | TEXT
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=40,
)
DEEP = st.integers(min_value=1, max_value=12).map(lambda n: _nest(n))


def _nest(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels - 1):
        value = {"d": value}
    return value


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def _scalars(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [*value.keys(), *(s for v in value.values() for s in _scalars(v))]
    if isinstance(value, list):
        return [s for v in value for s in _scalars(v)]
    return [value]


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(TEXT, VALUES, max_size=60) | VALUES | DEEP)
def test_metadata_is_accepted_only_when_it_survives_json(value: Any) -> None:
    try:
        accepted = ADAPTER.validate_python(value)
    except ValidationError:
        assert metadata_problem(value) is not None
        return
    assert metadata_problem(value) is None
    assert isinstance(accepted, dict) and len(accepted) <= MAX_METADATA_KEYS
    assert _depth(accepted) <= MAX_METADATA_DEPTH
    encoded = orjson.dumps(accepted)  # would raise on a lone surrogate or an int beyond 64 bits
    assert len(encoded) <= MAX_METADATA_BYTES
    assert orjson.loads(encoded) == accepted  # what is stored is what was sent
    for scalar in _scalars(accepted):
        if isinstance(scalar, float):
            assert math.isfinite(scalar)
        elif isinstance(scalar, int):
            assert INT64_MIN <= scalar <= INT64_MAX
        elif isinstance(scalar, str):
            assert "\x00" not in scalar
            scalar.encode("utf-8")


def test_the_bounds_themselves() -> None:
    assert ADAPTER.validate_python(_nest(MAX_METADATA_DEPTH)) == _nest(MAX_METADATA_DEPTH)
    bad: object
    for bad in (_nest(MAX_METADATA_DEPTH + 1), {"n": INT64_MAX + 1}, {"f": math.inf}, {"s": "\ud800"}, [], "x"):
        assert metadata_problem(bad) is not None
