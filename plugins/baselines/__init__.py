"""Built-in baseline families: `gaussian` (diagonal Gaussian) and `categorical` (per-pixel)."""

from registry import hookimpl


@hookimpl
def register_families(register):
    from plugins.baselines.categorical import CategoricalFamily
    from plugins.baselines.gaussian import GaussianFamily

    register(GaussianFamily)
    register(CategoricalFamily)
