"""The plugin module named by the `genreg` entry point: it registers both families."""

from registry import hookimpl


@hookimpl
def register_families(register):
    from genreg_kde.kde import KDEFamily
    from genreg_kde.mixture import NoiseMixtureFamily

    register(KDEFamily)
    register(NoiseMixtureFamily)
