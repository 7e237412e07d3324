"""The option declarations the commands share, and how their values are read: one place for every flag."""

from __future__ import annotations

from collections.abc import Callable

import click

from backends.retry import RetryPolicy
from drivers import DriverOptions
from stash_runner.errors import BadInput
from stash_runner.maintenance.retention import Policy
from stash_runner.stash import metrics
from stash_runner.stash.sessions import Retention


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
                     help=f"Pushgateway URL (default: ${metrics.ENV_PUSHGATEWAY_URL}; none: no metrics)."),
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


class _OptionalFloat(click.ParamType):
    """A number, or empty for the default: Stash's Functions pass ``--wait-timeout=${waitTimeout:=}``."""

    name = "float"

    def convert(self, value, param, ctx):  # noqa: ANN001, ANN201 - click's signature
        if value is None or isinstance(value, float) or str(value).strip() == "":
            return value if isinstance(value, float) else None
        try:
            return float(value)
        except ValueError:
            self.fail(f"{value!r} is not a number of seconds", param, ctx)


_OPTIONAL_FLOAT = _OptionalFloat()


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
        return click.option("--scratch-dir", default=None, help="Directory for temporary files (certificates).")(f)

    return decorate


def storage_options(f: Callable) -> Callable:
    """How hard to try a remote storage before giving up (local volumes are not retried)."""
    f = click.option("--backend-timeout", default=RetryPolicy.timeout, show_default=True, type=float,
                     envvar="STASH_RUNNER_BACKEND_TIMEOUT",
                     help="Seconds a storage request may stall before it is retried.")(f)
    return click.option("--backend-retries", default=RetryPolicy.attempts, show_default=True, type=click.IntRange(1),
                        envvar="STASH_RUNNER_BACKEND_RETRIES",
                        help="Attempts per storage request (throttling, 5xx, dropped connections).")(f)


def lock_options(f: Callable) -> Callable:
    return click.option("--lock-wait", default=300.0, show_default=True, type=float,
                        help="Seconds to wait while another run holds an exclusive lock (a prune).")(f)


def retention_options(f: Callable) -> Callable:
    """Stash's retention flags: forget (and prune) after a successful backup."""
    opts = [click.option(f"--retention-keep-{k}", default=0, type=click.IntRange(min=0),
                         help=f"Keep the last n {k} snapshots." if k != "last" else "Keep the last n snapshots.")
            for k in ("last", "hourly", "daily", "weekly", "monthly", "yearly")]
    opts += [
        click.option("--retention-keep-tags", default="", help="Keep snapshots with any of these tags (a,b)."),
        click.option("--retention-prune", default="false", help="Prune after forgetting (true/false)."),
        click.option("--retention-dry-run", default="false", help="Only report what retention would remove."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def retention(kw: dict) -> tuple[Policy, bool, bool]:
    # Stash passes each tag as its own --keep-tag: "a,b" keeps snapshots tagged a or b.
    tags = tuple(t.strip() for t in kw["retention_keep_tags"].split(",") if t.strip())
    policy = Policy(last=kw["retention_keep_last"], hourly=kw["retention_keep_hourly"],
                    daily=kw["retention_keep_daily"], weekly=kw["retention_keep_weekly"],
                    monthly=kw["retention_keep_monthly"], yearly=kw["retention_keep_yearly"], tags=tags)
    return policy, truthy(kw["retention_prune"]), truthy(kw["retention_dry_run"])


def retention_override(kw: dict) -> Retention | None:
    """The --retention-* flags when they name a policy; None leaves the invoker's retentionPolicy."""
    policy, prune, dry_run = retention(kw)
    return None if policy.empty() else Retention(policy, prune, dry_run)


def wait_timeout(kw: dict) -> float:
    return 300.0 if kw["wait_timeout"] is None else kw["wait_timeout"]


def retry_policy(retries: int, timeout: float) -> RetryPolicy:
    return RetryPolicy(attempts=retries, timeout=timeout)


def stash_flags(f: Callable) -> Callable:
    """The flags of Stash's addon images, so a Stash Function's args work unchanged."""
    opts = [
        click.option("--appbinding", default="", help="Name of the AppBinding."),
        click.option("--appbinding-namespace", default="", help="Namespace of the AppBinding."),
        click.option("--provider", default="", help="Backend provider: local, s3, gcs, azure."),
        click.option("--bucket", default="", help="Bucket or container (local: the mount path)."),
        click.option("--endpoint", default=""),
        click.option("--region", default=""),
        click.option("--path", "path_", default="", help="Prefix inside the bucket (local: the directory)."),
        click.option("--storage-secret-name", default=""),
        click.option("--storage-secret-namespace", default=""),
        click.option("--secret-dir", default="", help="Directory where the storage Secret is mounted."),
        click.option("--max-connections", default=0, type=int),
        bool_option("--insecure-tls", "false", "Skip verifying the storage's TLS certificate (true/false)."),
        bool_option("--enable-cache", "false", "Accepted and ignored: no restic cache is kept."),
        click.option("--hostname", default="host-0", show_default=True),
        click.option("--output-dir", default="", help="Write output.json here."),
        click.option("--kubeconfig", default=""),
        click.option("--master", default="", callback=_no_master, expose_value=False,
                     help="Accepted when empty; give the API server in --kubeconfig instead."),
        click.option("--license-apiservice", default="",
                     help="Accepted and ignored: stash-runner checks no license."),
        click.option("--objects", "objects", multiple=True, type=click.Path(), help="Files with the objects."),
        click.option("--namespace", default="default", show_default=True),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return storage_options(f)


def bool_option(name: str, default: str, help: str) -> Callable:
    """A true/false flag as Stash's (cobra) Functions pass it: ``--flag=true``, ``--flag=false``, or bare
    ``--flag`` for true; an empty value (``${VAR:=}``) is false."""
    return click.option(name, default=default, is_flag=False, flag_value="true", show_default=True, help=help)


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
    return str(value).strip().lower() in ("1", "true", "yes", "on")


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


def driver_options(kw: dict, backup_cmd: str = "", driver: str | None = None,
                   purpose: str = "backup") -> DriverOptions:
    """The driver flags. --driver "" means the AppBinding's spec.type; Stash's addon spellings (backup-pg, ...)
    have no --driver and name theirs."""
    return DriverOptions(backup_cmd=backup_cmd, args=kw["tool_args"], user=kw["user"],
                         scratch_dir=kw["scratch_dir"], driver=kw["driver"] if driver is None else driver,
                         purpose=purpose, auth_database=kw.get("authentication_database") or "",
                         max_concurrency=kw.get("max_concurrency") or 0, mode=kw.get("mode") or "",
                         indices=kw.get("indices") or "", include_hidden=bool(kw.get("include_hidden")),
                         overwrite=bool(kw.get("overwrite")), interim_dir=kw.get("interim_data_dir") or "")
