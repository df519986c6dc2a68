"""A small name -> factory registry, used for criteria, targets, model and data sources.

Modelled on timm's ``register_model`` / ``list_models``: registration is a decorator, duplicates
fail loudly, listing takes a glob pattern, and a miss suggests the closest name.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from core.errors import SpecError, did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of entries of one kind.

    Args:
        kind: What the entries are ("criterion", "target", ...); used in error messages.
    """

    def __init__(self, kind: str, plural: str | None = None) -> None:
        self.kind = kind
        self.plural = plural or f"{kind}s"
        self._entries: dict[str, T] = {}
        self._aliases: dict[str, str] = {}  # alias -> name (resolved by get, not listed)

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers ``obj`` under ``name``; a duplicate name raises."""

        def deco(obj: T) -> T:
            self.add(name, obj)
            return obj

        return deco

    def add(self, name: str, obj: T, aliases: tuple[str, ...] = ()) -> None:
        """Register ``obj`` under ``name`` (and ``aliases``); a duplicate name raises ``ValueError``."""
        for n in (name, *aliases):
            if n in self._entries or n in self._aliases:
                raise ValueError(f"duplicate {self.kind} '{n}'")
        self._entries[name] = obj
        self._aliases.update({a: name for a in aliases})

    def get(self, name: str) -> T:
        """Return the entry for ``name`` or raise a SpecError that suggests the closest name."""
        try:
            return self._entries[self._aliases.get(name, name)]
        except KeyError:
            known = ", ".join(sorted(self._entries))
            raise SpecError(
                f"unknown {self.kind} '{name}'.{did_you_mean(name, self._entries)}",
                hint=f"known {self.plural}: {known}",
            ) from None

    def names(self, pattern: str = "*") -> list[str]:
        """Sorted names that match the glob ``pattern``."""
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def items(self) -> list[tuple[str, T]]:
        return [(n, self._entries[n]) for n in self.names()]
