"""`python -m registry.cli`: the same command as the `genreg` console script."""

from registry.cli import main

main()
