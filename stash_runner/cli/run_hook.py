"""``run-hook``: Stash's hook step, so that the hook containers the operator adds to a Job can use our image."""

from __future__ import annotations

import click

from stash_runner.hooks.spec import HOOK_TYPES

from .options import report_options
from .wiring import reporting


@click.command("run-hook")
@click.option("--backupsession", default="", help="The BackupSession whose hook runs (empty: a restore).")
@click.option("--restoresession", default="",
              help="The RestoreSession whose hook runs (the operator names it by --invoker-kind/--invoker-name).")
@click.option("--hook-type", required=True, type=click.Choice(HOOK_TYPES),
              help="Which hook: the target's own (a RestoreBatch member's), or a BackupBatch's or RestoreBatch's "
                   "global one when no --target-name is given.")
@click.option("--hostname", default="host-0", show_default=True, help="Accepted for Stash's args; hooks are per "
              "target, not per host.")
@click.option("--output-dir", default="", help="Accepted for Stash's args (a hook writes no output.json).")
@click.option("--namespace", default="default", show_default=True, help="Namespace of the session and its invoker.")
@click.option("--kubeconfig", default="",
              help="Read the objects from this kubeconfig's cluster (default: in-cluster, then KUBECONFIG).")
@click.option("--objects", "objects", multiple=True, type=click.Path(), help="Files with the objects (offline).")
@click.option("--master", default="", hidden=True)
@click.option("--license-apiservice", default="", hidden=True)
@report_options
def run_hook(**kw) -> None:
    """Run one hook of a session as Stash's run-hook does and record its condition: a failed pre hook exits 11 (the
    Job stops before the backup or restore), a failed post hook is recorded on the session and exits 0, as
    Stash's does."""
    from stash_runner.stash.executor import RunHookSettings, run_hook_step, session_to_update
    from stash_runner.stash.resolve import open_objects

    session = session_to_update(kw["backupsession"], kw["restoresession"], kw["invoker_kind"], kw["invoker_name"],
                                command="run-hook")
    with open_objects(kw["objects"], kw["kubeconfig"]) as (source, cluster):
        run_hook_step(reporting(source, cluster, kw), kw["namespace"], session,
                      RunHookSettings(kw["hook_type"], kw["target_kind"], kw["target_name"]))
