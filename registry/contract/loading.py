"""Loads family plugins: the built-in ones and those installed under entry-point group ``genreg``.

A plugin that fails to import, misspells a hook or registers an invalid family is reported by
name in :attr:`Plugins.errors`; every other family keeps working.
"""

from __future__ import annotations

import functools
import importlib
import re
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from types import ModuleType

import pluggy

from registry.contract import hookspecs
from registry.contract.family import CAPABILITY_METHODS, Capability, Family, FamilyConfig, implements

ENTRY_POINT_GROUP = "genreg"
# Built-in families, registered through the same hooks as an installed plugin.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "plugins.flow",
    "plugins.vae",
    "plugins.gan",
    "plugins.autoregressive",
    "plugins.diffusion",
    "plugins.baselines",
)
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9-]{0,40}$")


class FamilyError(ValueError):
    """A family is invalid, unknown, or cannot be registered."""


@dataclass(frozen=True)
class FamilyEntry:
    family: type[Family]
    plugin: str
    distribution: str


@dataclass(frozen=True)
class PluginError:
    plugin: str
    distribution: str
    error: str


@dataclass
class Plugins:
    families: dict[str, FamilyEntry] = field(default_factory=dict)
    errors: list[PluginError] = field(default_factory=list)

    def get(self, name: str) -> Family:
        """An instance of the named family, or an error listing the available ones."""
        entry = self.families.get(name)
        if entry is None:
            known = ", ".join(sorted(self.families)) or "none"
            broken = [e.plugin for e in self.errors]
            hint = f" (plugins that failed to load: {', '.join(broken)})" if broken else ""
            raise FamilyError(f"unknown family {name!r}; available: {known}{hint}")
        return entry.family()


def validate_family(family: object) -> type[Family]:
    """Check that a registered object honours the Family contract; return it."""
    if not (isinstance(family, type) and issubclass(family, Family)):
        raise FamilyError(f"{family!r} is not a subclass of registry.Family")
    name = getattr(family, "name", None)
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise FamilyError(f"{family.__name__}: name {name!r} must be lower-case letters, digits and dashes")
    caps = family.capabilities
    if not isinstance(caps, frozenset | set) or not all(isinstance(c, Capability) for c in caps):
        raise FamilyError(f"family {name!r}: capabilities must be a set of Capability values")
    if not caps & {Capability.SAMPLE, Capability.LOG_PROB, Capability.BOUND}:
        raise FamilyError(f"family {name!r}: claims none of sample, log_prob, bound")
    missing = list(
        dict.fromkeys(
            CAPABILITY_METHODS[c] for c in sorted(caps) if not implements(family, CAPABILITY_METHODS[c])
        )
    )
    for method in ("train", "export"):
        if not implements(family, method):
            missing.append(method)
    if missing:
        raise FamilyError(
            f"family {name!r} claims capabilities it does not implement: missing {', '.join(missing)}"
        )
    if not (isinstance(family.Config, type) and issubclass(family.Config, FamilyConfig)):
        raise FamilyError(f"family {name!r}: Config must subclass registry.FamilyConfig")
    return family


def _check_hooks(pm: pluggy.PluginManager, plugins: Plugins, dists: dict[str, str]) -> None:
    """Run check_pending until it passes, dropping (and reporting) each offending plugin."""
    while True:
        try:
            pm.check_pending()
            return
        except pluggy.PluginValidationError as exc:
            plugin_name = pm.get_name(exc.plugin) or str(exc.plugin)
            plugins.errors.append(PluginError(plugin_name, dists.get(plugin_name, "?"), str(exc)))
            pm.unregister(exc.plugin)


def _register(pm: pluggy.PluginManager, module: ModuleType, name: str) -> None:
    pm.register(module, name=name)


def load_plugins(include_entry_points: bool = True) -> Plugins:
    """Build the family registry from built-in plugins and installed entry points."""
    pm = pluggy.PluginManager("genreg")
    pm.add_hookspecs(hookspecs)
    plugins = Plugins()
    dists: dict[str, str] = {}

    for module_name in BUILTIN_PLUGINS:
        dists[module_name] = "genreg"
        try:
            _register(pm, importlib.import_module(module_name), module_name)
        except Exception as exc:  # a broken built-in must not hide third-party families
            plugins.errors.append(PluginError(module_name, "genreg", f"{type(exc).__name__}: {exc}"))

    if include_entry_points:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist is not None else "?"
            dists[ep.name] = dist
            try:
                _register(pm, ep.load(), ep.name)
            except Exception as exc:
                plugins.errors.append(PluginError(ep.name, dist, f"{type(exc).__name__}: {exc}"))

    _check_hooks(pm, plugins, dists)

    for impl in pm.hook.register_families.get_hookimpls():
        plugin_name = impl.plugin_name
        dist = dists.get(plugin_name, "?")
        registered: list[type[Family]] = []

        def register(family: object, _into: list[type[Family]] = registered) -> None:
            _into.append(validate_family(family))

        try:
            impl.function(register=register)
        except Exception as exc:
            plugins.errors.append(PluginError(plugin_name, dist, f"{type(exc).__name__}: {exc}"))
        for family in registered:
            previous = plugins.families.get(family.name)
            if previous is not None:
                plugins.errors.append(
                    PluginError(
                        plugin_name,
                        dist,
                        f"family {family.name!r} is already registered by {previous.plugin}; refused",
                    )
                )
                continue
            plugins.families[family.name] = FamilyEntry(family, plugin_name, dist)
    return plugins


@functools.lru_cache(maxsize=1)
def get_plugins() -> Plugins:
    """The process-wide registry (plugins are loaded once)."""
    return load_plugins()
