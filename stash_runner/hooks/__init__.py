"""Stash's hooks: what they are (spec), how their templates render (template), how a handler runs (probe, podexec)
and when a hook runs and what it records (run)."""
