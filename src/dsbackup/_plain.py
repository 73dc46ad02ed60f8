"""Value classes without `dataclasses` (start-up: docs/PERFORMANCE.md "Start-up without
dataclasses").

A class on a command's start-up path (the archive's structures, the result objects) derives
from :class:`Plain` (mutable) or :class:`Frozen` (immutable, hashable), names its fields in
``__slots__`` in constructor order and writes its own ``__init__``. They get what
``@dataclass`` gave them: equality with an object of the same class, field by field; a repr
of the fields; for :class:`Frozen`, a hash and no assignment. Creating them compiles no
generated source, and importing them loads neither `dataclasses` nor its `inspect`, `ast`
and `dis`. :func:`asdict` and :func:`replace` stand in for ``dataclasses``' own.
"""

from __future__ import annotations

from typing import Any, TypeVar


class Plain:
    """A mutable record: equality and repr by the fields in the subclass's ``__slots__``."""

    __slots__ = ()

    def _values(self) -> tuple[Any, ...]:
        return tuple([getattr(self, name) for name in self.__slots__])

    def __eq__(self, other: object) -> bool:
        if other.__class__ is self.__class__:
            return self._values() == other._values()  # type: ignore[attr-defined]
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # as a mutable dataclass's

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{self.__class__.__qualname__}({fields})"

    def __getstate__(self) -> tuple[Any, ...]:
        return self._values()

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        for name, value in zip(self.__slots__, state):
            object.__setattr__(self, name, value)


class Frozen(Plain):
    """An immutable record: also hashable; its ``__init__`` sets the fields with _set."""

    __slots__ = ()

    def _set(self, *values: Any) -> None:
        for name, value in zip(self.__slots__, values):
            object.__setattr__(self, name, value)

    def __hash__(self) -> int:
        return hash(self._values())

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r}")


T = TypeVar("T", bound=Plain)  # not bound="Plain": its ForwardRef compiles the string


def fields(obj: Plain | type[Plain]) -> tuple[str, ...]:
    """The field names, in constructor order."""
    return tuple(obj.__slots__)


def replace(obj: T, **changes: Any) -> T:
    """A copy of `obj` with `changes` (as ``dataclasses.replace``)."""
    values = {name: getattr(obj, name) for name in obj.__slots__}
    unknown = changes.keys() - values.keys()
    if unknown:
        raise TypeError(f"{obj.__class__.__qualname__} has no field {sorted(unknown)[0]!r}")
    values.update(changes)
    return obj.__class__(**values)


def asdict(obj: Plain) -> dict[str, Any]:
    """The fields as a dict, records, lists, tuples and dicts within copied (as
    ``dataclasses.asdict``)."""
    return {name: _copy(getattr(obj, name)) for name in obj.__slots__}


def _copy(value: Any) -> Any:
    if isinstance(value, Plain):
        return asdict(value)
    if isinstance(value, list | tuple):
        return value.__class__(_copy(v) for v in value)
    if isinstance(value, dict):
        return {_copy(k): _copy(v) for k, v in value.items()}
    return value
