"""Named registries for the extension points (policies, conditions, ...).

Each extension is one module in its package that calls ``registry.add(spec)``
at import time. ``registry.get(name)`` imports every module of the package
once, on first use, so adding an extension touches exactly one file.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Generic, Protocol, TypeVar


class Named(Protocol):
    @property
    def name(self) -> str: ...


S = TypeVar("S", bound=Named)


class Registry(Generic[S]):
    def __init__(self, kind: str, package: str) -> None:
        self.kind = kind
        self.package = package
        self._specs: dict[str, S] = {}
        self._loaded = False

    def add(self, spec: S) -> S:
        if spec.name in self._specs:
            raise ValueError(f"{self.kind} {spec.name!r} is registered twice")
        self._specs[spec.name] = spec
        return spec

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        pkg = importlib.import_module(self.package)
        for info in pkgutil.iter_modules(pkg.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{self.package}.{info.name}")

    def get(self, name: str) -> S | None:
        self._load()
        return self._specs.get(name)

    def names(self) -> list[str]:
        self._load()
        return sorted(self._specs)
