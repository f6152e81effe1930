"""Built-in family `autoregressive`: MADE with exact likelihoods (a plugin like any other)."""

from registry import hookimpl


@hookimpl
def register_families(register):
    from plugins.autoregressive.family import AutoregressiveFamily

    register(AutoregressiveFamily)
