from stash_runner.cli import entry

entry()
