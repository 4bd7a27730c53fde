"""Name -> component registries. Components are chosen by name, never by if/elif chains."""

from __future__ import annotations

import importlib
from typing import Callable, Generic, Iterator, TypeVar

from pretrainer.errors import PretrainerError

T = TypeVar("T")


class Registry(Generic[T]):
    """`kind` names an entry in messages; `key` is the config key that chooses one, so an unknown
    name is reported against it; `package` is the module whose import registers the entries
    (default: the models and objectives).

    Iterating gives the names in registration order, which lets a config field take a registry
    as its `choices`. No `__len__`: that would make truth-testing a registry import its package.
    """

    def __init__(self, kind: str, key: str | None = None, package: str | None = None):
        self.kind = kind
        self.key = key
        self.package = package
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = entry
            return entry

        return add

    def get(self, name: str) -> T:
        self._load()
        if name not in self._entries:
            choices = ", ".join(sorted(self._entries)) or "none"
            where = f"config key {self.key!r}: " if self.key else ""
            raise PretrainerError(f"{where}unknown {self.kind} {name!r}; choose one of: {choices}")
        return self._entries[name]

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        self._load()
        return iter(list(self._entries))

    def _load(self) -> None:
        if self.package:
            importlib.import_module(self.package)
        else:
            _import_builtins()


MODELS: Registry = Registry("model")  # name -> nn.Module class with a `config_class`
OBJECTIVES: Registry = Registry("objective")  # name -> objective class (see objectives/)
# name -> transfer method class / task class (see transfer/methods/, transfer/tasks/)
TRANSFER_METHODS: Registry = Registry("transfer method", key="finetune.method", package="pretrainer.transfer")
TASKS: Registry = Registry("task", key="finetune.task", package="pretrainer.transfer")
DATA: Registry = Registry("data module", key="data.name", package="pretrainer.data")  # name -> data module class
# name -> which word pieces of an over-long text are kept (see data/long_documents.py)
TRUNCATIONS: Registry = Registry("truncation strategy", key="finetune.truncation",
                                 package="pretrainer.data.long_documents")
# name -> a function that trains a pre-training module (training/engines.py): "fit", "gensim"
ENGINES: Registry = Registry("training engine", key="objective.engine", package="pretrainer.training.engines")
# "load" -> interop.load_pretrained (spec -> model, tokenizer, description), "folder" -> interop.init_folder:
# how a layer below interop (a distillation objective's teacher) reads a run dir, hf:PATH or pkg:NAME.
PRETRAINED: Registry = Registry("pretrained-model reader", package="pretrainer.interop.hf_import")


# The packages whose import registers the built-in components. They are named, not imported,
# here: the registry is a foundation that every layer imports, so it must not import them back.
BUILTIN_PACKAGES = ("pretrainer.models", "pretrainer.objectives")


def _import_builtins() -> None:
    for package in BUILTIN_PACKAGES:
        importlib.import_module(package)
