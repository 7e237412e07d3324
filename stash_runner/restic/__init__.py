"""The restic repository format: keys and crypto, compression, packs, index, trees, snapshots, locks;
writing a snapshot (archiver) and reading one (reader). Knows nothing of Stash, databases or the CLI."""
