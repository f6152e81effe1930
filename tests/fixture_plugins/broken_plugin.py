"""Fixture plugin that fails to import."""

raise ImportError("this fixture plugin is broken on purpose")
