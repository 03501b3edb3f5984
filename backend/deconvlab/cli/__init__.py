"""The ``deconvlab`` command (``python -m deconvlab`` is the same); ``COMMANDS`` lists its subcommands."""

from .main import COMMANDS, main

__all__ = ["COMMANDS", "main"]
