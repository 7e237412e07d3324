"""Commands on a repository alone: snapshots, dump, forget, prune, check, unlock, stats (as restic's)."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import click

from stash_runner.errors import IntegrityError

from .options import no_lock_option, objects_options, storage_options
from .wiring import opened

if TYPE_CHECKING:
    from stash_runner.restic.repository import Repository

# Each command imports the maintenance and engine modules it uses when it runs (see options.py, "Start-up"), so
# that `stash-runner snapshots` does not pay for prune's or check's imports.

log = logging.getLogger("stash_runner")


def _shared_lock(repo: Repository, no_lock: bool) -> contextlib.AbstractContextManager:
    """A reading command's lock, as restic's: shared (so a prune's exclusive lock keeps it out), none with
    --no-lock; on read-only storage it is given up with a warning."""
    from stash_runner.restic.lock import RepositoryLock

    return contextlib.nullcontext() if no_lock else RepositoryLock(repo, read_only=True)


@click.command()
@objects_options
@click.option("--repository", required=True, help="Repository to list.")
@click.option("--host", "host", default="", help="Only snapshots of this host.")
@click.option("--json", "as_json", is_flag=True, help="Print restic's JSON (as `restic snapshots --json`).")
@storage_options
@no_lock_option
def snapshots(objects, namespace, kubeconfig, repository, host, as_json, backend_retries, backend_timeout,
              no_lock) -> None:
    """List the snapshots of a repository (times in this machine's local zone, named; TZ=UTC for UTC)."""
    from stash_runner.restic.timefmt import display_time

    with opened(objects, namespace, repository, backend_retries, backend_timeout, kubeconfig,
                preload=('stash_runner.restic.lock', 'stash_runner.restic.timefmt')) as repo, \
            _shared_lock(repo, no_lock):
        snaps = [s for s in repo.list_snapshots() if not host or s.hostname == host]
    if as_json:
        click.echo(json.dumps([s.summary_json() for s in snaps]))
        return
    click.echo(f"{'ID':<10}{'Time':<27}{'Host':<16}{'Tags':<16}Paths")
    for s in snaps:
        # Local time as `restic snapshots` prints it, with the zone it leaves out (README, "Commands").
        click.echo(f"{s.short_id:<10}{display_time(s.datetime):<27}{s.hostname:<16}"
                   f"{','.join(s.tags):<16}{', '.join(s.paths)}")
    click.echo(f"{len(snaps)} snapshots")


@click.command()
@objects_options
@click.option("--repository", required=True, help="Repository to read.")
@click.option("--host", "host", default="", help="With 'latest': the latest snapshot of this host.")
@click.argument("snapshot")
@click.argument("path", required=False)
@storage_options
@no_lock_option
def dump(objects, namespace, kubeconfig, repository, host, snapshot, path, backend_retries, backend_timeout,
         no_lock) -> None:
    """Write a file of a snapshot to stdout (the snapshot's only file when PATH is not given)."""
    from stash_runner.restic.reader import find_file, iter_content

    with opened(objects, namespace, repository, backend_retries, backend_timeout, kubeconfig,
                preload=('stash_runner.restic.lock', 'stash_runner.restic.reader')) as repo, \
            _shared_lock(repo, no_lock):
        repo.load_index()
        snap = repo.find_snapshot(snapshot, hostname=host or None)
        _, node = find_file(repo, snap, path)
        out = sys.stdout.buffer
        for chunk in iter_content(repo, node):
            out.write(chunk)
        out.flush()


def _prune_options(f: Callable) -> Callable:
    f = click.option("--max-unused", default="5%", show_default=True,
                     help="Unused space to tolerate: a share (5%), a size (100M), 0 or unlimited.")(f)
    return click.option("--max-repack-size", default=None, help="Repack at most this much (e.g. 2G).")(f)


@click.command()
@objects_options
@click.option("--repository", required=True, help="Repository to apply the policy to.")
@click.option("--keep-last", "-l", default=0, type=click.IntRange(min=0), help="Keep the last n snapshots.")
@click.option("--keep-hourly", "-H", default=0, type=click.IntRange(min=0), help="Keep the last n hourly snapshots.")
@click.option("--keep-daily", "-d", default=0, type=click.IntRange(min=0), help="Keep the last n daily snapshots.")
@click.option("--keep-weekly", "-w", default=0, type=click.IntRange(min=0), help="Keep the last n weekly snapshots.")
@click.option("--keep-monthly", "-m", default=0, type=click.IntRange(min=0), help="Keep the last n monthly snapshots.")
@click.option("--keep-yearly", "-y", default=0, type=click.IntRange(min=0), help="Keep the last n yearly snapshots.")
@click.option("--keep-within", default="", help="Keep snapshots within DURATION (1y5m7d2h) of the newest.")
@click.option("--keep-within-hourly", default="", help="Keep hourly snapshots within DURATION of the newest.")
@click.option("--keep-within-daily", default="", help="Keep daily snapshots within DURATION of the newest.")
@click.option("--keep-within-weekly", default="", help="Keep weekly snapshots within DURATION of the newest.")
@click.option("--keep-within-monthly", default="", help="Keep monthly snapshots within DURATION of the newest.")
@click.option("--keep-within-yearly", default="", help="Keep yearly snapshots within DURATION of the newest.")
@click.option("--keep-tag", "keep_tags", multiple=True, help="Keep snapshots with all of these tags (a,b); repeatable.")
@click.option("--host", "hosts", multiple=True, help="Only snapshots of this host (repeatable).")
@click.option("--tag", "tag_filter", multiple=True, help="Only snapshots with these tags (a,b; repeatable).")
@click.option("--path", "path_filter", multiple=True, help="Only snapshots including this path (repeatable).")
@click.option("--group-by", "-g", default="host,paths", show_default=True,
              help="Apply the policy per group of snapshots with the same host, paths and/or tags ('': no grouping).")
@click.option("--dry-run", is_flag=True, help="Remove nothing; print what would be removed.")
@click.option("--prune", is_flag=True, help="Prune afterwards when snapshots were removed.")
@click.option("--json", "as_json", is_flag=True, help="Print restic's `forget --json` output.")
@_prune_options
@storage_options
def forget(objects, namespace, kubeconfig, repository, keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly,
           keep_yearly, keep_within, keep_within_hourly, keep_within_daily, keep_within_weekly,
           keep_within_monthly, keep_within_yearly, keep_tags, hosts, tag_filter, path_filter, group_by,
           dry_run, prune, as_json, max_unused, max_repack_size, backend_retries, backend_timeout) -> None:
    """Remove snapshots by a retention policy, exactly as `restic forget` (then prune with --prune)."""
    from stash_runner.maintenance.retention import Policy, parse_group_by
    from stash_runner.maintenance.sizes import max_unused_limit, parse_size

    policy = Policy(last=keep_last, hourly=keep_hourly, daily=keep_daily, weekly=keep_weekly,
                    monthly=keep_monthly, yearly=keep_yearly, tags=tuple(keep_tags), within=keep_within,
                    within_hourly=keep_within_hourly, within_daily=keep_within_daily,
                    within_weekly=keep_within_weekly, within_monthly=keep_within_monthly,
                    within_yearly=keep_within_yearly)
    # Checked before the repository is opened and locked, also when no prune follows to use them.
    parse_group_by(group_by)
    max_unused_limit(max_unused)
    if max_repack_size:
        parse_size(max_repack_size)
    with opened(objects, namespace, repository, backend_retries, backend_timeout, kubeconfig,
                preload=('stash_runner.maintenance.post_backup',)) as repo:
        from stash_runner.maintenance.post_backup import apply_retention

        outcome = apply_retention(repo, policy, prune=prune, dry_run=dry_run, group_by=group_by,
                                  hosts=list(hosts) or None, tag_filter=tag_filter, path_filter=path_filter,
                                  max_unused=max_unused, max_repack_size=max_repack_size)
    click.echo(outcome.forget.json_text() if as_json else outcome.forget.summary(), nl=False)
    if outcome.prune is not None:
        click.echo("\n".join(outcome.prune.stats_lines()), err=as_json)  # stdout stays pure JSON with --json
        click.echo(outcome.prune.summary(), err=as_json)


@click.command()
@objects_options
@click.option("--repository", required=True, help="Repository to prune.")
@click.option("--dry-run", is_flag=True, help="Only print what would be removed.")
@_prune_options
@storage_options
def prune(objects, namespace, kubeconfig, repository, dry_run, max_unused, max_repack_size, backend_retries,
          backend_timeout) -> None:
    """Delete data no snapshot needs: unused packs go, mostly unused packs are repacked (exclusive lock)."""
    from stash_runner.maintenance.prune import run_prune

    with opened(objects, namespace, repository, backend_retries, backend_timeout, kubeconfig,
                preload=('stash_runner.maintenance.prune',)) as repo:
        result = run_prune(repo, dry_run=dry_run, max_unused=max_unused, max_repack_size=max_repack_size,
                           progress=log.debug)
    click.echo("\n".join(result.stats_lines()))
    if result.packs_not_removed:
        log.warning("%d pack(s) could not be removed; the next prune removes them", result.packs_not_removed)
    click.echo(result.summary())


@click.command()
@objects_options
@click.option("--repository", required=True, help="Repository to check.")
@click.option("--read-data", is_flag=True, help="Also read every pack and verify every blob's MAC and hash.")
@click.option("--read-data-subset", default="", metavar="n/t|x%|SIZE",
              help="Read only a subset of the packs: bucket n of t, x% of them, or about SIZE bytes.")
@no_lock_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@storage_options
def check(objects, namespace, kubeconfig, repository, read_data, read_data_subset, no_lock, as_json, backend_retries,
          backend_timeout) -> None:
    """Verify the repository's structure (and with --read-data its contents); exit 4 if damaged."""
    import dataclasses

    from stash_runner.maintenance.check import parse_subset, run_check, summarize

    if read_data_subset:
        parse_subset(read_data_subset)  # a bad value fails before anything is opened
    with opened(objects, namespace, repository, backend_retries, backend_timeout, kubeconfig,
                preload=('stash_runner.maintenance.check',)) as repo:
        result = run_check(repo, read_data=read_data, subset=read_data_subset or None, lock=not no_lock)
        location = repo.backend.location
    if as_json:
        click.echo(json.dumps({**dataclasses.asdict(result), "ok": result.ok}))
    else:
        for hint in result.hints:
            click.echo(f"hint: {hint}")
        for error in result.errors:
            click.echo(f"error: {error}", err=True)
        for line in summarize(result):
            click.echo(line)
    if not result.ok:
        raise IntegrityError(f"{location}: check found {len(result.errors)} error(s)")


@click.command()
@objects_options
@click.option("--repository", required=True, help="Repository to unlock.")
@click.option("--remove-all", is_flag=True, help="Remove every lock, also live ones.")
@storage_options
def unlock(objects, namespace, kubeconfig, repository, remove_all, backend_retries, backend_timeout) -> None:
    """Remove stale locks: not refreshed for 30 minutes, or held by a process gone from this host."""
    from stash_runner.restic.lock import unlock as remove_locks

    with opened(objects, namespace, repository, backend_retries, backend_timeout, kubeconfig,
                preload=('stash_runner.restic.lock',)) as repo:
        removed, kept = remove_locks(repo, remove_all=remove_all)
    for lock in removed:
        click.echo(f"removed {lock.describe()}")
    for lock in kept:
        click.echo(f"kept live {lock.describe()}")
    click.echo(f"{len(removed)} lock(s) removed, {len(kept)} live lock(s) kept")


@click.command()
@objects_options
@click.option("--repository", required=True, help="Repository to measure.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@storage_options
@no_lock_option
def stats(objects, namespace, kubeconfig, repository, as_json, backend_retries, backend_timeout, no_lock) -> None:
    """Sizes and counts of a repository (what Stash puts in Repository status)."""
    from stash_runner.maintenance.stats import run_stats
    from stash_runner.units import stash_bytes

    with opened(objects, namespace, repository, backend_retries, backend_timeout, kubeconfig,
                preload=('stash_runner.restic.lock', 'stash_runner.maintenance.stats')) as repo, \
            _shared_lock(repo, no_lock):
        st = run_stats(repo)
    if as_json:
        click.echo(json.dumps(st.json()))
        return
    click.echo(f"snapshots:            {st.snapshots}")
    click.echo(f"restore size:         {stash_bytes(st.restore_size)}  (all files of all snapshots)")
    click.echo(f"raw data:             {stash_bytes(st.raw_data)}  (stored blobs the snapshots use)")
    click.echo(f"repository size:      {stash_bytes(st.repository_size)}  (all files in storage)")
    click.echo(f"blobs:                {st.blobs} in the index, {st.referenced_blobs} referenced")
    click.echo(f"packs:                {st.packs} ({st.index_files} index files)")
