"""Built-in family `vae`: a VAE / beta-VAE with a discrete (categorical) or Gaussian decoder."""

from registry import hookimpl


@hookimpl
def register_families(register):
    from plugins.vae.family import VAEFamily

    register(VAEFamily)
