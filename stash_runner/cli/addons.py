"""Stash's addon spellings: ``backup-<db>`` and ``restore-<db>`` with the flags of Stash's addon images, so that
a Stash Function's args run unchanged. A database is one ``Addon`` line here (plus its driver)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import click

from .options import (
    COMPRESSION_DEFAULT_LEVEL,
    ES_ARGS,
    MONGO_ARGS,
    PG_ARGS,
    driver_options,
    es_options,
    lock_options,
    mongo_options,
    no_lock_option,
    report_options,
    retention_options,
    stash_flags,
    tool_options,
    true_or_false,
    truthy,
    wait_timeout,
)
from .run import restore_batch_member
from .wiring import backup_host, backup_session, flags_storage_and_driver, restore_host, restore_session

if TYPE_CHECKING:
    from stash_runner.stash.output import SnapshotStats

# The Stash layer is imported when a command runs (see options.py, "Start-up").


@dataclass(frozen=True)
class Addon:
    """One of Stash's addon images, by the commands it spells: backup-<name> and restore-<name>."""

    name: str  # "pg": backup-pg, restore-pg
    driver: str  # the driver the commands run
    database: str  # for the help text
    args: tuple[tuple[str, ...], str]  # the flag for the tool's extra arguments, and its help
    backup_cmd: str = ""  # the --backup-cmd default, where the image has that flag
    extra: tuple[Callable, ...] = ()  # the image's own flags (option decorators)
    backup_extra: tuple[Callable, ...] = ()  # its flags only backup-<name> has
    restore_extra: tuple[Callable, ...] = ()  # its flags only restore-<name> has


def _unsupported_flag(name: str, why: str) -> Callable:
    """A flag Stash's Functions pass that this version accepts only when off: on, it is a one-line error."""

    def check(ctx: click.Context, param: click.Parameter, value: str) -> str:
        true_or_false(ctx, param, value)  # a typo must not quietly mean false
        if truthy(value):
            raise click.BadParameter(why, ctx=ctx, param=param)
        return value

    return click.option(name, default="false", callback=check, help=f"Accepted when false: {why}.")


_DASHBOARD = "Kibana/OpenSearch-Dashboards saved objects are not backed up by this version"

ADDONS = (
    Addon("pg", driver="postgres", database="postgres", args=PG_ARGS, backup_cmd="pg_dumpall"),
    Addon("mongo", driver="mongodb", database="MongoDB", args=MONGO_ARGS, extra=(mongo_options,)),
    Addon("es", driver="elasticsearch", database="Elasticsearch", args=ES_ARGS,
          backup_extra=(es_options(mode="interim"), _unsupported_flag("--enable-dashboard-backup", _DASHBOARD)),
          restore_extra=(es_options(mode="interim", restore=True),
                         _unsupported_flag("--enable-dashboard-restore", _DASHBOARD))),
)


def backup_command(addon: Addon) -> click.Command:
    def backup_addon(**kw) -> None:
        from stash_runner.stash.host import run_host
        from stash_runner.stash.resolve import open_objects

        backup_cmd = kw.get("backup_cmd", "")
        opts = driver_options(kw, backup_cmd, driver=addon.driver)
        if kw["backupsession"]:
            backup_session(kw, opts, [], COMPRESSION_DEFAULT_LEVEL, None)
            return
        hostname = kw["hostname"] or "host-0"

        def work() -> tuple[SnapshotStats, dict | None]:
            with open_objects(kw["objects"], kw["kubeconfig"]) as (source, _):
                storage, drv = flags_storage_and_driver(source, kw, opts)
            return backup_host(drv, storage, hostname, [], wait_timeout(kw), COMPRESSION_DEFAULT_LEVEL, None, kw)

        run_host(kw["output_dir"], kw["appbinding"], hostname, work)

    backup_addon.__doc__ = f"Stash's {addon.database} addon spelling of `backup` (same flags as its image)."
    decorators: list[Callable] = [
        click.command(f"backup-{addon.name}"),
        stash_flags,
        click.option("--backupsession", default="", help="Run for this BackupSession and report to it."),
    ]
    if addon.backup_cmd:
        decorators.append(click.option("--backup-cmd", default=addon.backup_cmd, show_default=True,
                                       help="pg_dumpall or pg_dump."))
    decorators += [retention_options, lock_options, tool_options(addon.args), *addon.extra, *addon.backup_extra,
                   report_options]
    return _decorated(backup_addon, decorators)


def restore_command(addon: Addon) -> click.Command:
    def restore_addon(**kw) -> None:
        from stash_runner.stash.host import run_host
        from stash_runner.stash.resolve import open_objects

        if "," in kw["snapshot"]:
            # Stash's Elasticsearch addon takes a list here and restores each in turn over the last.
            raise click.BadParameter("one snapshot at a time (a restore of several would overwrite each other)",
                                     param_hint="'--snapshot'")
        opts = driver_options(kw, driver=addon.driver, purpose="restore")
        if restore_batch_member(kw, opts):  # a RestoreBatch member's Job (--invoker-kind=RestoreBatch)
            return
        if kw["restoresession"]:
            restore_session(kw, opts)
            return
        hostname = kw["hostname"] or "host-0"

        def work() -> None:
            with open_objects(kw["objects"], kw["kubeconfig"]) as (source, _):
                storage, drv = flags_storage_and_driver(source, kw, opts)
            restore_host(drv, storage, kw["snapshot"] or "latest", kw["source_hostname"] or hostname,
                         wait_timeout(kw), kw["lock_wait"], kw["no_lock"])

        run_host(kw["output_dir"], kw["appbinding"], hostname, work)

    restore_addon.__doc__ = f"Stash's {addon.database} addon spelling of `restore` (same flags as its image)."
    return _decorated(restore_addon, [
        click.command(f"restore-{addon.name}"),
        stash_flags,
        click.option("--restoresession", default="", help="Run for this RestoreSession and report to it."),
        click.option("--restorebatch", default="",
                     help="Run this RestoreBatch's member named by --appbinding/--target-name and report to the "
                          "batch (the operator's spelling: --invoker-kind=RestoreBatch --invoker-name)."),
        click.option("--snapshot", default="latest", show_default=True, help="Snapshot ID (or prefix) or 'latest'."),
        click.option("--source-hostname", default="",
                     help="Host whose latest snapshot to restore (default: --hostname)."),
        lock_options,
        no_lock_option,
        tool_options(addon.args),
        *addon.extra,
        *addon.restore_extra,
        report_options,
    ])


def _decorated(fn: Callable, decorators: list[Callable]) -> click.Command:
    """Apply decorators listed top to bottom, as they would be written above a def."""
    for decorate in reversed(decorators):
        fn = decorate(fn)
    return fn


def commands() -> list[click.Command]:
    return [make(addon) for addon in ADDONS for make in (backup_command, restore_command)]
