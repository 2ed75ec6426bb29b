"""The ``earshot`` command: serve, stream, demo and model management.

The top layer: may use every other layer of the data plane. Settings are built here, once.
"""

from earshot.cli.commands import app, main

__all__ = ["app", "main"]
