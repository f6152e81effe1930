"""Packaging and operations: the Bento (bento.py), the serving image (image.py), `make demo` (demo.py)."""
