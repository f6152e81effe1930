"""Example genreg plugin: `kde` and `noise-mixture` families (the likelihood counter-examples)."""
