"""Fixture plugin with a misspelled hook name: check_pending must catch it."""

from registry import hookimpl


@hookimpl
def register_familys(register):
    raise AssertionError("never called")
