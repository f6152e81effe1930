"""Fixture plugin that registers a family under a name already taken by a built-in."""

from plugins.baselines.gaussian import GaussianFamily
from registry import hookimpl


class Impostor(GaussianFamily):
    name = "flow"


@hookimpl
def register_families(register):
    register(Impostor)
