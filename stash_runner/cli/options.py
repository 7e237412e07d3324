"""The option declarations the commands share, and how their values are read: one place for every flag."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import click

from backends.factory import SUPPORTED as SUPPORTED_PROVIDERS
from backends.retry import RetryPolicy
from stash_runner.errors import BadInput

if TYPE_CHECKING:
    from drivers import DriverOptions
    from stash_runner.maintenance.retention import Policy
    from stash_runner.stash.sessions import Retention

# Start-up: the commands and their flags are declared when the CLI is imported, so this module (and every command
# module) imports only click and light modules; what a command needs is imported when it runs. These copies of
# constants of heavier modules are checked against their sources by tests/test_startup.py.
#: stash_runner.stash.metrics.ENV_PUSHGATEWAY_URL
ENV_PUSHGATEWAY_URL = "PROMETHEUS_PUSHGATEWAY_URL"
#: stash_runner.stash.objects.MAX_CONNECTIONS
MAX_CONNECTIONS = 128
#: stash_runner.restic.compression's DEFAULT_LEVEL, MIN_LEVEL and MAX_LEVEL (zstandard's)
COMPRESSION_DEFAULT_LEVEL, COMPRESSION_MIN_LEVEL, COMPRESSION_MAX_LEVEL = 1, -(1 << 17), 22

_VERBOSITY = "stash_runner.verbosity"
#: the storage SDKs and API clients whose loggers stay at ERROR
_QUIET_LIBRARIES = ("azure", "google", "botocore", "boto3", "urllib3", "kubernetes", "opensearch",
                    "elastic_transport", "elasticsearch")


def configure_logging(verbose: bool, quiet: bool) -> None:
    """-v and -q: what goes to stderr."""
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(asctime)s %(message)s",
                        datefmt="%Y-%m-%dT%H:%M:%S", stream=sys.stderr, force=True)
    # -v is for our own messages only: the storage SDKs' debug logs print request URLs, and a SAS token
    # or a signed URL in them is a credential.
    logging.getLogger("stash_runner").setLevel(logging.DEBUG if verbose else logging.NOTSET)
    # The SDKs log every request at INFO, and warn of what we retry or report ourselves in one line.
    for name in _QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.ERROR)


def _verbosity(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    # The group and every command take -v/-q, so that they also work after the command (`backup ... -v`). Each
    # use is remembered on the root context; the group always sets the logging up, a command again when a flag
    # is given after it.
    given = ctx.find_root().meta.setdefault(_VERBOSITY, {"verbose": False, "quiet": False})
    if value or ctx.parent is None:
        given[str(param.name)] = given[str(param.name)] or value
        configure_logging(given["verbose"], given["quiet"])


def verbosity_params() -> list[click.Option]:
    """-v/--verbose and -q/--quiet, for the group and (appended by the group) for every command."""
    return [
        click.Option(["-v", "--verbose"], is_flag=True, expose_value=False, is_eager=True, callback=_verbosity,
                     help="More detail on stderr: the dump and restore tools' stderr, debug messages, and the "
                          "traceback of an unexpected error."),
        click.Option(["-q", "--quiet"], is_flag=True, expose_value=False, is_eager=True, callback=_verbosity,
                     help="Only warnings and errors (no progress lines)."),
    ]


def objects_options(f: Callable) -> Callable:
    f = click.option("--kubeconfig", default="",
                     help="Read the objects from this kubeconfig's cluster (default: in-cluster, then KUBECONFIG).")(f)
    f = click.option("--namespace", "-n", default="default", show_default=True,
                     help="Namespace of the objects.")(f)
    return click.option("--objects", "objects", multiple=True, type=click.Path(),
                        help="YAML/JSON file or directory with the objects (repeatable); "
                             "without it they come from the Kubernetes API.")(f)


def report_options(f: Callable) -> Callable:
    """Stash's metrics flags: where the Pushgateway is, the job and extra labels."""
    opts = [
        bool_option("--metrics-enabled", "true", "Push metrics when a Pushgateway is known (true/false)."),
        click.option("--metrics-pushgateway-url", default="",
                     help=f"Pushgateway URL (default: ${ENV_PUSHGATEWAY_URL}; none: no metrics)."),
        click.option("--prom-job-name", default="", envvar="PROMETHEUS_JOB_NAME",
                     help="Job to push under (default: <lower(invokerKind)>-<namespace>-<invokerName>)."),
        click.option("--metrics-labels", multiple=True, help="Extra labels key=value (comma-separated; repeatable)."),
        click.option("--invoker-kind", default="",
                     help="Stash's INVOKER_KIND: BackupConfiguration, BackupBatch, RestoreSession or RestoreBatch "
                          "(the session names its invoker; update-status checks this against it; RestoreBatch: "
                          "the batch named by --invoker-name, its member by --target-name)."),
        click.option("--invoker-name", default="",
                     help="Stash's INVOKER_NAME (update-status: checked against the session; with "
                          "--invoker-kind=RestoreSession or RestoreBatch, the object to report to)."),
        click.option("--target-kind", default="", help="Kind of the target to report (default: from the session)."),
        click.option("--target-name", default="", help="Name of the target to report (Stash's TARGET_NAME)."),
        click.option("--target-namespace", default="",
                     help="Namespace of the target (Stash's TARGET_NAMESPACE; update-status checks it)."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


#: the longest any wait flag may ask for (a year): nan, inf or 1e300 would pass float() and break a clock or a
#: socket mid-run
MAX_SECONDS = 365 * 24 * 3600


class _OptionalFloat(click.ParamType):
    """Seconds, 0 to a year; ``optional``: empty for the default (Stash's Functions pass
    ``--wait-timeout=${waitTimeout:=}``); ``positive``: 0 is not allowed (a socket timeout)."""

    name = "float"

    def __init__(self, optional: bool = True, positive: bool = False) -> None:
        self.optional, self.positive = optional, positive

    def convert(self, value, param, ctx):  # noqa: ANN001, ANN201 - click's signature
        if value is None or (self.optional and str(value).strip() == ""):
            return None
        try:
            seconds = float(value)
        except ValueError:
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not (seconds > 0 if self.positive else seconds >= 0) or seconds > MAX_SECONDS:  # also nan
            self.fail(f"{value!r} is out of range: seconds from {'above ' if self.positive else ''}0 to "
                      f"{MAX_SECONDS} (a year)", param, ctx)
        return seconds


_OPTIONAL_FLOAT = _OptionalFloat()
_SECONDS = _OptionalFloat(optional=False)
_POSITIVE_SECONDS = _OptionalFloat(optional=False, positive=True)


PG_ARGS = (("--pg-args",), "Extra arguments for pg_dumpall/pg_dump or psql.")
MONGO_ARGS = (("--mongo-args",), "mongodump (backup) or mongorestore (restore) options, as Stash's --mongo-args "
                                 "(see the README for those understood).")
ES_ARGS = (("--es-args",), "multielasticdump options for --mode interim, as Stash's --es-args (shell quoting "
                          "understood).")
ANY_ARGS = (("--pg-args", "--mongo-args", "--es-args", "--args"),
            "Extra arguments for the database's tool: pg_dumpall/pg_dump or psql (PostgreSQL); mongodump or "
            "mongorestore options (MongoDB); multielasticdump options (Elasticsearch, --mode interim).")


def tool_options(args: tuple[tuple[str, ...], str] = ANY_ARGS) -> Callable[[Callable], Callable]:
    """The database tool's flags: ``args`` names the flag(s) for its extra arguments (Stash's --pg-args,
    --mongo-args) and gives its help."""

    def decorate(f: Callable) -> Callable:
        f = click.option(*args[0], "tool_args", default="", help=args[1])(f)
        f = click.option("--user", default="", help="Database user (default: from the AppBinding's Secret).")(f)
        f = click.option("--wait-timeout", default=None, type=_OPTIONAL_FLOAT,
                         help="Seconds to wait for the database to accept connections  [default: the Task's "
                              "waitTimeout param, else 300]")(f)
        return click.option("--scratch-dir", default=None,
                            help="Directory for temporary files (certificates; Elasticsearch's default interim "
                                 "directory is below it).")(f)

    return decorate


def storage_options(f: Callable) -> Callable:
    """How hard to try a remote storage before giving up (local volumes are not retried)."""
    f = click.option("--backend-timeout", default=RetryPolicy.timeout, show_default=True, type=_POSITIVE_SECONDS,
                     envvar="STASH_RUNNER_BACKEND_TIMEOUT",
                     help="Seconds a storage request may stall before it is retried.")(f)
    return click.option("--backend-retries", default=RetryPolicy.attempts, show_default=True, type=click.IntRange(1),
                        envvar="STASH_RUNNER_BACKEND_RETRIES",
                        help="Attempts per storage request (throttling, 5xx, dropped connections).")(f)


def lock_options(f: Callable) -> Callable:
    return click.option("--lock-wait", default=300.0, show_default=True, type=_SECONDS,
                        help="Seconds to wait while another run holds an exclusive lock (a prune).")(f)


def no_lock_option(f: Callable) -> Callable:
    """restic's --no-lock, for the commands that only read (restore, dump, snapshots, stats, check)."""
    return click.option("--no-lock", is_flag=True,
                        help="Do not lock the repository (restic's --no-lock), e.g. on read-only storage.")(f)


def retention_options(f: Callable) -> Callable:
    """Stash's retention flags: forget (and prune) after a successful backup."""
    opts = [click.option(f"--retention-keep-{k}", default=0, type=click.IntRange(min=0),
                         help=f"Keep the last n {k} snapshots." if k != "last" else "Keep the last n snapshots.")
            for k in ("last", "hourly", "daily", "weekly", "monthly", "yearly")]
    opts += [
        click.option("--retention-keep-tags", default="", help="Keep snapshots with any of these tags (a,b)."),
        click.option("--retention-prune", default="false", callback=true_or_false,
                     help="Prune after forgetting (true/false)."),
        click.option("--retention-dry-run", default="false", callback=true_or_false,
                     help="Only report what retention would remove (true/false)."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def retention(kw: dict) -> tuple[Policy, bool, bool]:
    from stash_runner.maintenance.retention import Policy

    # Stash passes each tag as its own --keep-tag: "a,b" keeps snapshots tagged a or b.
    tags = tuple(t.strip() for t in kw["retention_keep_tags"].split(",") if t.strip())
    policy = Policy(last=kw["retention_keep_last"], hourly=kw["retention_keep_hourly"],
                    daily=kw["retention_keep_daily"], weekly=kw["retention_keep_weekly"],
                    monthly=kw["retention_keep_monthly"], yearly=kw["retention_keep_yearly"], tags=tags)
    return policy, truthy(kw["retention_prune"]), truthy(kw["retention_dry_run"])


def retention_override(kw: dict) -> Retention | None:
    """The --retention-* flags when they name a policy; None leaves the invoker's retentionPolicy."""
    from stash_runner.stash.sessions import Retention

    policy, prune, dry_run = retention(kw)
    return None if policy.empty() else Retention(policy, prune, dry_run)


def wait_timeout(kw: dict) -> float:
    return 300.0 if kw["wait_timeout"] is None else kw["wait_timeout"]


def retry_policy(retries: int, timeout: float) -> RetryPolicy:
    return RetryPolicy(attempts=retries, timeout=timeout)


def stash_flags(f: Callable | None = None, *, update_status: bool = False) -> Callable:
    """The flags of Stash's addon images, so a Stash Function's args work unchanged. ``update_status``: the help
    says what they mean to update-status (which reads output.json rather than writing it)."""
    if f is None:
        return lambda g: stash_flags(g, update_status=update_status)
    providers = ", ".join(SUPPORTED_PROVIDERS)
    if update_status:
        target_help = "The target to report (Stash's TARGET_NAME; default: output.json's)."
        hostname_help = "Accepted for Stash's args: the hosts come from output.json."
        output_help = ("Required: the directory the backup or restore step wrote output.json to; update-status "
                       "reads it.")
        provider_help = (f"Storage provider ({providers}): with --storage-secret-name or --secret-dir the session's "
                         "Repository is opened from these flags, else by name.")
    else:
        target_help = "Name of the AppBinding: required without a session; with one, which target it runs."
        hostname_help = ("This host's name: the snapshot's host (backup; restore: whose latest snapshot, unless "
                         "--source-hostname), and output.json's.")
        output_help = "Write Stash's output.json here."
        provider_help = (f"Storage provider ({providers}): required without a session; with one, the session's "
                         "Repository is opened from these flags when its Secret is given too, else by name.")
    opts = [
        click.option("--appbinding", default="", help=target_help),
        click.option("--appbinding-namespace", default="", help="Namespace of the AppBinding (default: --namespace)."),
        click.option("--provider", default="", help=provider_help),
        click.option("--bucket", default="", help="Bucket or container (local: the mount path)."),
        click.option("--endpoint", default="",
                     help="Storage endpoint URL (an S3-compatible store, an emulator; default: the provider's)."),
        click.option("--region", default="", help="Storage region (where a missing bucket is created)."),
        click.option("--path", "path_", default="",
                     help="Prefix inside the bucket (local: the directory below --bucket, or the mount path when "
                          "--bucket is empty, as Stash passes it)."),
        click.option("--storage-secret-name", default="",
                     help="Secret with RESTIC_PASSWORD and the storage's credentials."),
        click.option("--storage-secret-namespace", default="",
                     help="Namespace of --storage-secret-name (default: --namespace)."),
        click.option("--secret-dir", default="", help="Directory where the storage Secret is mounted."),
        click.option("--max-connections", default=0, type=click.IntRange(0, MAX_CONNECTIONS),
                     help="Connections to the storage at once (0: the provider's default)."),
        bool_option("--insecure-tls", "false", "Skip verifying the storage's TLS certificate (true/false)."),
        bool_option("--enable-cache", "false", "Accepted and ignored: no restic cache is kept."),
        click.option("--hostname", default="host-0", show_default=True, help=hostname_help),
        click.option("--output-dir", default="", callback=output_dir_flag, help=output_help),
        click.option("--kubeconfig", default="",
                     help="Read the objects from this kubeconfig's cluster (default: in-cluster, then KUBECONFIG)."),
        click.option("--master", default="", callback=_no_master, expose_value=False,
                     help="Accepted when empty; give the API server in --kubeconfig instead."),
        click.option("--license-apiservice", default="",
                     help="Accepted and ignored: stash-runner checks no license."),
        click.option("--objects", "objects", multiple=True, type=click.Path(),
                     help="YAML/JSON file or directory with the objects (repeatable); without it they come from "
                          "the Kubernetes API."),
        click.option("--namespace", default="default", show_default=True,
                     help="Namespace of the objects (session, AppBinding, Repository, Secrets)."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return storage_options(f)


def bool_option(name: str, default: str, help: str) -> Callable:
    """A true/false flag as Stash's (cobra) Functions pass it: ``--flag=true``, ``--flag=false``, or bare
    ``--flag`` for true; an empty value (``${VAR:=}``) is false."""
    return click.option(name, default=default, is_flag=False, flag_value="true", show_default=True, help=help,
                        callback=true_or_false)


_TRUE = ("1", "t", "true", "yes", "on")
_FALSE = ("", "0", "f", "false", "no", "off")


def true_or_false(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """A true/false flag's value as cobra's ParseBool takes it: a typo (``--insecure-tls=ture``) must not quietly
    mean false."""
    if value is not None and str(value).strip().lower() not in _TRUE + _FALSE:
        raise click.BadParameter(f"{value!r} is not true or false", ctx=ctx, param=param)
    return value


def output_dir_flag(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """--output-dir must be a directory this run can write (or create): output.json is written at the end, and a
    run must not fail there, after its snapshot was saved."""
    if not value:
        return value
    where = os.path.abspath(value)
    while not os.path.exists(where) and os.path.dirname(where) != where:
        where = os.path.dirname(where)
    if not os.path.isdir(where):
        raise click.BadParameter(f"{value}: {where} is not a directory", ctx=ctx, param=param)
    if not os.access(where, os.W_OK | os.X_OK):
        raise click.BadParameter(f"{value}: {where} is not writable", ctx=ctx, param=param)
    return value


def _no_master(ctx: click.Context, param: click.Parameter, value: str) -> None:
    # The address overrides the kubeconfig's in Stash; silently talking to another server would be worse than
    # refusing.
    if value:
        raise BadInput(f"--master={value}: not supported by this version; give the API server in --kubeconfig")


def one_of(kw: dict, *names: str) -> str:
    """The value of one flag Stash spelled differently across releases (e.g. --backupsession and v0.9's
    --backup-session): any spelling may give it, but two that disagree are an error naming both."""
    given = {name: kw.get(name) or "" for name in names if kw.get(name)}
    if len(set(given.values())) > 1:
        raise BadInput(" and ".join(f"--{n.replace('_', '-')}={v}" for n, v in given.items())
                       + " disagree: they are spellings of one flag")
    return next(iter(given.values()), "")


def truthy(value: str) -> bool:
    return str(value).strip().lower() in _TRUE


def mongo_options(f: Callable) -> Callable:
    """Stash's MongoDB addon flags beyond the common ones."""
    f = click.option("--authentication-database", default="admin", show_default=True,
                     help="MongoDB: the database the user is defined in (authSource).")(f)
    return click.option("--max-concurrency", default=None, type=click.IntRange(min=1),
                        help="MongoDB: hosts of a sharded cluster dumped or restored at once [default: 3]; "
                             "Elasticsearch: slices of a large index read, or bulk requests sent, at once "
                             "[default: 4].")(f)


def es_options(mode: str = "", restore: bool = False) -> Callable[[Callable], Callable]:
    """Elasticsearch's flags: the mode (``mode`` is its default: Stash's addon spelling is interim), the
    indices, the interim directory, and for a restore --overwrite."""

    def decorate(f: Callable) -> Callable:
        if restore:
            f = click.option("--overwrite", is_flag=True,
                             help="Elasticsearch: replace indices that already exist (default: fail before "
                                  "writing anything).")(f)
        f = click.option("--interim-data-dir", default="",
                         help="Elasticsearch, --mode interim: the directory dumped into (Stash's INTERIM_DATA_DIR; "
                              "default: <scratch-dir or /stash-tmp>/stash-interim-volume/data).")(f)
        f = click.option("--include-hidden", is_flag=True,
                         help="Elasticsearch: also system and hidden indices.")(f)
        f = click.option("--indices", default="",
                         help="Elasticsearch: comma-separated index patterns (*, ?; -pattern excludes) "
                              "[default: every open index but system and hidden ones].")(f)
        return click.option("--mode", type=click.Choice(["stream", "interim"]), default=mode or None,
                            show_default=bool(mode),
                            help="Elasticsearch: stream (no interim volume) or interim (multielasticdump into "
                                 "--interim-data-dir, as Stash)  [default: stream]" if not mode else
                                 "Elasticsearch: interim (multielasticdump into --interim-data-dir, as Stash) or "
                                 "stream (no interim volume).")(f)

    return decorate


def pg_restore_options(f: Callable) -> Callable:
    """PostgreSQL's restore flags."""
    return click.option("--clean", is_flag=True,
                        help="PostgreSQL: drop the databases the dump creates that the target already has (and, in "
                             "a database it restores into, the schemas and tables it creates) before restoring "
                             "(default: fail before writing anything). Also as --pg-args=--clean.")(f)


def driver_options(kw: dict, backup_cmd: str = "", driver: str | None = None,
                   purpose: str = "backup") -> DriverOptions:
    """The driver flags. --driver "" means the AppBinding's spec.type; Stash's addon spellings (backup-pg, ...)
    have no --driver and name theirs."""
    from drivers import DriverOptions

    return DriverOptions(backup_cmd=backup_cmd, args=kw["tool_args"], user=kw["user"],
                         scratch_dir=kw["scratch_dir"], driver=kw["driver"] if driver is None else driver,
                         purpose=purpose, auth_database=kw.get("authentication_database") or "",
                         max_concurrency=kw.get("max_concurrency") or 0, mode=kw.get("mode") or "",
                         indices=kw.get("indices") or "", include_hidden=bool(kw.get("include_hidden")),
                         overwrite=bool(kw.get("overwrite")), interim_dir=kw.get("interim_data_dir") or "",
                         clean=bool(kw.get("clean")))
