"""Built-in family `diffusion`: a Gaussian diffusion with a true variational bound (a plugin like any other)."""

from registry import hookimpl


@hookimpl
def register_families(register):
    from plugins.diffusion.family import DiffusionFamily

    register(DiffusionFamily)
