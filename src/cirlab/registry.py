"""A small named registry: one instance per kind of thing (encoders, fusion methods, index backends)."""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from cirlab.errors import CirlabError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps a name from the field (``combiner``, ``efficientnet_lite0``) to a factory."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items))
            raise CirlabError(f"unknown {self.kind} {name!r}; choose one of: {known}") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def in_order(self) -> list[str]:
        """The names in the order they were registered (where order means something: stage-1 tasks)."""
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``"lsh:bits=512,candidates=200"`` -> ``("lsh", {"bits": "512", "candidates": "200"})``;
    parts without ``=`` form the positional ``factory`` option:
    ``"faiss:IVF1024,PQ64,nprobe=16"`` -> ``("faiss", {"factory": "IVF1024,PQ64", "nprobe": "16"})``."""
    name, _, rest = spec.partition(":")
    options: dict[str, str] = {}
    positional = []
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        if eq:
            options[key.strip()] = value.strip()
        else:
            positional.append(part)
    if positional:
        options["factory"] = ",".join(positional)
    return name, options


def dataclass_options(cls, spec: str | None, what: str, hint: str = "") -> dict[str, str]:
    """The ``key=value`` options of ``spec`` for the fields of the dataclass ``cls`` (``""`` or None: none); a key it
    lacks is refused in one line naming ``what`` and the keys it takes (then ``hint``)."""
    from dataclasses import fields

    _, options = parse_spec(f"{what}:{spec or ''}")
    known = [f.name for f in fields(cls)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise CirlabError(f"{what} {', '.join(unknown)} unknown; use {', '.join(f'{k}=...' for k in known)}{hint}")
    return options
