"""stash-runner: back up and restore databases into restic repositories, for Stash."""

__version__ = "0.1.0"
