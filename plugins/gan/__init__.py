"""Built-in family `gan`: generator and discriminator trained on the minimax game."""

from registry import hookimpl


@hookimpl
def register_families(register):
    from plugins.gan.family import GANFamily

    register(GANFamily)
