"""Named choices: one :class:`Registry` per kind (heads, encoders, regularisers, divergences,
readers, tag schemes).

Each kind's module owns its registry and registers its implementations; config validation, the
builders and the CLI help all read the same registry, so a new choice is one registration away
from being configurable, buildable and listed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> implementation of one kind of choice, with a one-line description each.

    ``registry[name]`` raises ``ValueError`` naming the kind and every known name. Names may have
    aliases, and ``normalize`` (e.g. ``str.lower``) is applied to every name looked up. Iterating
    yields the canonical names in registration order.
    """

    def __init__(self, kind: str, normalize: Callable[[str], str] | None = None):
        self.kind = kind
        self._normalize = normalize
        self._items: dict[str, tuple[T, str]] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, item: T | None = None, *, help: str = "", aliases=()):
        """Register ``item`` as ``name`` (and ``aliases``); without ``item``, a decorator."""
        if item is None:

            def decorate(obj: T) -> T:
                self.register(name, obj, help=help, aliases=aliases)
                return obj

            return decorate
        for key in (name, *aliases):
            if key in self._items or key in self._aliases:
                raise ValueError(f"{self.kind} {key!r} is already registered")
        self._items[name] = (item, help)
        self._aliases.update({alias: name for alias in aliases})
        return item

    def canonical(self, name: str) -> str:
        """The registered name ``name`` stands for (itself, or the name of an alias)."""
        key = name
        if self._normalize is not None and isinstance(name, str):
            key = self._normalize(name.strip())
        key = self._aliases.get(key, key)
        if not isinstance(key, str) or key not in self._items:
            known = ", ".join(self.names(aliases=True))
            raise ValueError(f"unknown {self.kind} {name!r}; expected one of {known}")
        return key

    def __getitem__(self, name: str) -> T:
        return self._items[self.canonical(name)][0]

    def __contains__(self, name: object) -> bool:
        try:
            self.canonical(name)  # type: ignore[arg-type]
        except ValueError:
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def names(self, aliases: bool = False) -> tuple[str, ...]:
        return tuple(self._items) + (tuple(self._aliases) if aliases else ())

    def items(self) -> Iterable[tuple[str, T]]:
        return ((name, item) for name, (item, _) in self._items.items())

    def help(self, name: str) -> str:
        return self._items[self.canonical(name)][1]

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._items)})"
