"""Name -> component registries. Components are chosen by name, never by if/elif chains."""

from __future__ import annotations

import importlib
from typing import Callable, Generic, TypeVar

from pretrainer.errors import PretrainerError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = entry
            return entry

        return add

    def get(self, name: str) -> T:
        _import_builtins()
        if name not in self._entries:
            choices = ", ".join(sorted(self._entries)) or "none"
            raise PretrainerError(f"unknown {self.kind} {name!r}; choose one of: {choices}")
        return self._entries[name]

    def names(self) -> list[str]:
        _import_builtins()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        _import_builtins()
        return name in self._entries


MODELS: Registry = Registry("model")  # name -> nn.Module class with a `config_class`
OBJECTIVES: Registry = Registry("objective")  # name -> objective class (see objectives/)


# The packages whose import registers the built-in components. They are named, not imported,
# here: the registry is a foundation that every layer imports, so it must not import them back.
BUILTIN_PACKAGES = ("pretrainer.models", "pretrainer.objectives")


def _import_builtins() -> None:
    for package in BUILTIN_PACKAGES:
        importlib.import_module(package)
