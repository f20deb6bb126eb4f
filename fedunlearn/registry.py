"""One tiny registry type for every pluggable part chosen by name (datasets, partitioners, models, methods, attacks)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from fedunlearn.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects; an unknown name raises ``ConfigError`` listing the known ones.

    Parameters
    ----------
    kind:
        What the registry holds ("dataset", "method", ...), used in error messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = obj
            return obj

        return decorator

    def get(self, name: str, field: str | None = None) -> T:
        if name not in self._items:
            where = f"{field}: " if field else ""
            raise ConfigError(f"{where}unknown {self.kind} {name!r}; allowed: {', '.join(self.names())}")
        return self._items[name]

    def names(self) -> list[str]:
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def items(self) -> list[tuple[str, T]]:
        return list(self._items.items())
