"""A small name -> factory registry, used for criteria, targets, model and data sources.

Modelled on timm's ``register_model`` / ``list_models``: registration is a decorator, duplicates
fail loudly, listing takes a glob pattern, and a miss suggests the closest name.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from pipeline.errors import SpecError, did_you_mean

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

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers ``obj`` under ``name``; a duplicate name raises."""

        def deco(obj: T) -> T:
            self.add(name, obj)
            return obj

        return deco

    def add(self, name: str, obj: T) -> None:
        """Register ``obj`` under ``name``; a duplicate name raises ``ValueError``."""
        if name in self._entries:
            raise ValueError(f"duplicate {self.kind} '{name}'")
        self._entries[name] = obj

    def get(self, name: str) -> T:
        """Return the entry for ``name`` or raise a SpecError that suggests the closest name."""
        try:
            return self._entries[name]
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
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def items(self) -> list[tuple[str, T]]:
        return [(n, self._entries[n]) for n in self.names()]
