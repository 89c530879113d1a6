"""A registry of named classes: one small helper for every family of named parts.

Each family (quantizers, pruners, low-rank methods, stored formats, judges) lists its members in one
explicit dict where the family is defined, as vLLM's ``method_to_config`` does, so a reader
sees every member in one place and nothing depends on which modules happened to be imported.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Classes of one family by name; unknown names fail with the list of known ones."""

    def __init__(self, family: str, members: Mapping[str, type[T]]) -> None:
        self.family = family
        self._members = dict(members)

    def get(self, name: str) -> type[T]:
        try:
            return self._members[name]
        except KeyError:
            raise ValueError(f"unknown {self.family} {name!r}; known: {self.names()}") from None

    def build(self, name: str, **config: Any) -> T:
        """An instance of the member called ``name``, built with ``config``."""
        return self.get(name)(**config)

    def names(self) -> list[str]:
        return sorted(self._members)

    def __contains__(self, name: object) -> bool:
        return name in self._members

    def __iter__(self) -> Iterator[type[T]]:
        return iter(self._members.values())
