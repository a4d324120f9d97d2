"""Typed side channels: a :class:`Slot` is a key that carries its value's type.

``Tx.info`` (what a unit of work carries beside its SQL: the actor, the audit entries, the
idempotency key, the low-balance policy) and ``Runtime.extras`` (what a process creates once:
HTTP clients, job queues, the ledger's writers) are :class:`Slots`. Each domain declares its
own slots next to the code that owns them, so ``tx.info.get(audit.ACTOR, audit.SYSTEM)`` is
an ``Actor`` to mypy, and two domains can never clash on a string key (as aiohttp's
``AppKey``).
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar, overload

T = TypeVar("T")
D = TypeVar("D")


class Slot(Generic[T]):
    """A named, typed key. Compared by identity: a slot is its own declaration."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Slot({self.name!r})"


class Slots:
    """Values by :class:`Slot`; the type of each comes from its slot."""

    __slots__ = ("_values",)

    def __init__(self) -> None:
        self._values: dict[Slot[Any], Any] = {}

    @overload
    def get(self, slot: Slot[T]) -> T | None: ...
    @overload
    def get(self, slot: Slot[T], default: D) -> T | D: ...
    def get(self, slot: Slot[Any], default: Any = None) -> Any:
        return self._values.get(slot, default)

    def __contains__(self, slot: Slot[Any]) -> bool:
        return slot in self._values

    def set(self, slot: Slot[T], value: T) -> None:
        self._values[slot] = value

    def setdefault(self, slot: Slot[T], default: T) -> T:
        value: T = self._values.setdefault(slot, default)
        return value

    @overload
    def pop(self, slot: Slot[T]) -> T | None: ...
    @overload
    def pop(self, slot: Slot[T], default: D) -> T | D: ...
    def pop(self, slot: Slot[Any], default: Any = None) -> Any:
        return self._values.pop(slot, default)

    def snapshot(self) -> dict[Slot[Any], Any]:
        """A copy to restore (lists copied: audit entries queued later must not survive)."""
        return {slot: list(value) if isinstance(value, list) else value for slot, value in self._values.items()}

    def restore(self, snapshot: dict[Slot[Any], Any]) -> None:
        self._values = dict(snapshot)
