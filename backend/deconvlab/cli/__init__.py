"""The ``deconvlab`` command (``python -m deconvlab`` is the same)."""

from .main import main

__all__ = ["main"]
