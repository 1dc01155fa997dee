"""Named registries for the extension points (policies, conditions, ...).

Theory of operation
-------------------
Each built-in extension is one module in its package that calls
``registry.add(spec)`` at import time. ``registry.get(name)`` looks, in order:

1. at the specs registered so far;
2. at the module named after the extension (``key-auth`` -> ``key_auth``);
3. at the entry point named ``name`` in the registry's group (the package
   name: ``meshgate.policies``, ``meshgate.conditions``), which is how an
   out-of-tree plugin package adds a policy or condition. The entry point
   names a spec object (``my_plugin.policy:SPEC``) or a module that registers
   its specs when imported;
4. at every module of the package, once.

A worker thus imports only the extensions its config uses, plugins
included; ``known(name)`` answers for a whitelist without importing a
built-in whose module is named after it. ``names()`` loads everything:
built-ins first, then every entry point of the group.

A plugin cannot replace a built-in. An entry point that fails to import, or
gives a spec of another name, is a ``PluginError`` when its name is asked
for (the config loader reports it at the line that used the name);
``names()`` leaves it out and records it in ``problems``, with any entry
point named like a built-in, for ``meshgate validate`` to report.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import pkgutil
from typing import Generic, Protocol, TypeVar, cast


class Named(Protocol):
    @property
    def name(self) -> str: ...


S = TypeVar("S", bound=Named)


class PluginError(ValueError):
    """An entry point that could not give the extension it is named after."""


class Registry(Generic[S]):
    def __init__(self, kind: str, package: str, group: str | None = None) -> None:
        self.kind = kind
        self.package = package
        self.group = group if group is not None else package
        self._specs: dict[str, S] = {}
        self._loaded = False
        self._entry_points: dict[str, importlib.metadata.EntryPoint] | None = None
        self.problems: list[str] = []      # plugins names() had to leave out

    def add(self, spec: S) -> S:
        if spec.name in self._specs:
            raise ValueError(f"{self.kind} {spec.name!r} is registered twice")
        self._specs[spec.name] = spec
        return spec

    def _load_builtins(self) -> None:
        pkg = importlib.import_module(self.package)
        for info in pkgutil.iter_modules(pkg.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{self.package}.{info.name}")

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        self._load_builtins()
        builtins = set(self._specs)
        for name, ep in sorted(self.entry_points().items()):
            if name in builtins:
                self.problems.append(f"{self.kind} {name!r} from plugin {_dist(ep)} has the "
                                     "name of a built-in one and is ignored")
                continue
            try:
                self._from_entry_point(name)
            except PluginError as exc:
                self.problems.append(str(exc))

    def get(self, name: str) -> S | None:
        """The spec named ``name``: from its own module if one is named after it
        (a worker then imports only the extensions its config uses), else from
        the plugin entry point of that name, else after importing the whole package."""
        spec = self._specs.get(name)
        if spec is None and not self._loaded:
            module = f"{self.package}.{name.replace('-', '_').lower()}"
            if not module.rsplit(".", 1)[1].startswith("_") and _exists(module):
                importlib.import_module(module)
                spec = self._specs.get(name)
            if spec is None and name in self.entry_points():
                spec = self._from_entry_point(name)
            if spec is None:
                self._load()
                spec = self._specs.get(name)
        return spec

    def known(self, name: str) -> bool:
        """Whether ``name`` would be found, importing only when that cannot be told
        from module and entry-point names (a whitelist names more than is used)."""
        if name in self._specs or name in self.entry_points():
            return True
        stem = name.replace("-", "_")       # a built-in's module is named after it
        if (stem.isidentifier() and stem.islower() and not stem.startswith("_")
                and _exists(f"{self.package}.{stem}")):
            return True
        return self.get(name) is not None

    def names(self) -> list[str]:
        self._load()
        return sorted(self._specs)

    # -- plugins -------------------------------------------------------------------
    def entry_points(self) -> dict[str, importlib.metadata.EntryPoint]:
        """This registry's entry points by name (read once; nothing is imported)."""
        if self._entry_points is None:
            found = importlib.metadata.entry_points(group=self.group)
            self._entry_points = {ep.name: ep for ep in found}
        return self._entry_points

    def _from_entry_point(self, name: str) -> S | None:
        if name in self._specs:
            return self._specs[name]
        ep = self.entry_points()[name]
        try:
            loaded = ep.load()
        except Exception as exc:    # a plugin's own bug: say which plugin
            raise PluginError(f"{self.kind} {name!r} from plugin {_dist(ep)} cannot be "
                              f"loaded ({ep.value}): {type(exc).__name__}: {exc}") from exc
        if name not in self._specs and isinstance(getattr(loaded, "name", None), str):
            if loaded.name != name:
                raise PluginError(f"entry point {name!r} of plugin {_dist(ep)} gives a "
                                  f"{self.kind} named {loaded.name!r}; the names must match")
            self.add(cast(S, loaded))
        if name not in self._specs:
            raise PluginError(f"entry point {name!r} of plugin {_dist(ep)} ({ep.value}) "
                              f"registers no {self.kind} of that name")
        return self._specs[name]


def _dist(ep: importlib.metadata.EntryPoint) -> str:
    dist = ep.dist
    return repr(dist.name) if dist is not None else repr(ep.value.split(":")[0])


def _exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False
