"""Compiled hot-path modules built from ext/*.pyx (see setup.py)."""
