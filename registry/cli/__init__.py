"""`genreg`: train, list, sample, score, judge, serve and package generative models.

Each module registers its commands on the one Typer app (registry.cli.app); importing them
here, in help order, makes the app whole.
"""

from registry.cli import latent, models, packaging, quality, remote, serving, training
from registry.cli.app import app

__all__ = ["app", "latent", "main", "models", "packaging", "quality", "remote", "serving", "training"]


def main() -> None:
    app()


if __name__ == "__main__":
    main()
