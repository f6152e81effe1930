"""The plugin contract: pluggy hook specifications (docstrings only).

A plugin is a module exposing functions decorated with :data:`registry.hookimpl`, made known
through the ``genreg`` entry-point group. Built-in families use these same hooks.
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

hookspec = pluggy.HookspecMarker("genreg")
hookimpl = pluggy.HookimplMarker("genreg")


@hookspec
def register_families(register: Callable[[type], None]) -> None:
    """Register model families: call ``register(FamilyClass)`` once per family.

    The class subclasses :class:`registry.contract.family.Family`, sets ``name``, ``description``,
    ``capabilities`` and ``Config``, and implements the method of every capability it claims.
    """
