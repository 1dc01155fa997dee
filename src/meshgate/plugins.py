"""Named registries for the extension points (policies, conditions, ...).

Each extension is one module in its package that calls ``registry.add(spec)``
at import time. ``registry.get(name)`` imports the module named after the extension
(``key-auth`` -> ``key_auth``) or, failing that, every module of the package
once, so adding an extension touches exactly one file.
"""

from __future__ import annotations

import importlib
import importlib.util
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
        """The spec named ``name``: from its own module if one is named after it
        (a worker then imports only the extensions its config uses), else
        after importing the whole package."""
        spec = self._specs.get(name)
        if spec is None and not self._loaded:
            module = f"{self.package}.{name.replace('-', '_').lower()}"
            if not module.rsplit(".", 1)[1].startswith("_") and _exists(module):
                importlib.import_module(module)
                spec = self._specs.get(name)
            if spec is None:
                self._load()
                spec = self._specs.get(name)
        return spec

    def names(self) -> list[str]:
        self._load()
        return sorted(self._specs)


def _exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False
