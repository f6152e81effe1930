"""Built-in model families, each a plugin registered through genreg's hooks."""
