"""Built-in family `flow`: a RealNVP/Glow-style coupling flow (a plugin like any other)."""

from registry import hookimpl


@hookimpl
def register_families(register):
    from plugins.flow.family import FlowFamily

    register(FlowFamily)
