"""Everything that knows Stash: the objects read (from files or the Kubernetes API), how they resolve into
storage and drivers, the session runs, status, Events, metrics and output.json."""
