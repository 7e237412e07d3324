"""The command line. Commands are thin: they read their flags (``options``), turn them into the library's pieces
(``wiring``) and call the flows, the Stash layer or maintenance. One module per command family."""

from .main import cli, entry, main

__all__ = ["cli", "entry", "main"]
