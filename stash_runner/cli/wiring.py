"""From parsed flags to the library's pieces: the objects' source, the storage, the driver, the reporting, and the
runs that backup/restore and Stash's addon spellings share."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from stash_runner.errors import BadInput

from .options import retention, retention_override, retry_policy, truthy

if TYPE_CHECKING:
    from drivers import DriverOptions
    from stash_runner.restic.repository import Repository
    from stash_runner.stash.executor import Reporting, StorageOpener
    from stash_runner.stash.kube import Cluster
    from stash_runner.stash.objects import ObjectSource
    from stash_runner.stash.output import SnapshotStats
    from stash_runner.stash.resolve import Storage

# Imported by the functions that use them (see options.py, "Start-up"): the flows, the Stash layer and the engine
# are heavy, and each command needs only some of them.

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


#: the flags that name an object or a namespace (each command has some of them)
NAME_FLAGS = ("namespace", "appbinding", "appbinding_namespace", "repository", "repo_name", "repo_namespace",
              "backupsession", "backup_session", "restoresession", "restore_session", "backupbatch", "restorebatch",
              "storage_secret_name", "storage_secret_namespace", "invoker_name", "target_name", "target_namespace")


def check_flags(kw: dict) -> None:
    """The name flags hold names: checked before anything is read, so that a value that is no name (a path, a
    newline, a megabyte) is one line naming its flag, not a lookup of something else or a log line forged. The
    Pushgateway's URL too: it is used last, after the backup, where a URL that does not parse must not fail it."""
    from stash_runner.stash.objects import check_host, check_name

    for name in NAME_FLAGS:
        if kw.get(name):
            check_name(kw[name], "--" + name.replace("_", "-"))
    for name in ("hostname", "source_hostname"):
        if kw.get(name):
            check_host(kw[name], "--" + name.replace("_", "-"))
    if (kw.get("metrics_pushgateway_url") or "").strip():
        _check_url(kw["metrics_pushgateway_url"].strip(), "--metrics-pushgateway-url")


def _check_url(url: str, what: str) -> str:
    try:  # as metrics reads it: a bare host:port is http
        urlsplit(url if "://" in url else "http://" + url).port  # noqa: B018 - parsing is the check
    except ValueError as e:  # (the URL is not repeated: it may hold user:password)
        raise BadInput(f"{what}: not a URL ({e})") from None
    if _CONTROL.search(url):
        raise BadInput(f"{what}: the URL contains a control character")
    return url


def reporting(source: ObjectSource, cluster: Cluster | None, kw: dict) -> Reporting:
    from stash_runner.stash import metrics
    from stash_runner.stash.executor import Reporting

    check_flags(kw)
    url = metrics.pushgateway_url(kw["metrics_pushgateway_url"], os.environ) if truthy(kw["metrics_enabled"]) \
        else None
    if url and not (kw["metrics_pushgateway_url"] or "").strip():
        _check_url(url, f"${metrics.ENV_PUSHGATEWAY_URL}")
    labels = metrics.parse_user_labels(item for value in kw["metrics_labels"] for item in value.split(","))
    return Reporting(source, cluster, url, kw["prom_job_name"], labels)


def flags_storage(source, kw: dict, namespace: str = "", repository: str = "") -> Storage:
    from stash_runner.stash.resolve import storage_from_flags

    check_flags(kw)
    return storage_from_flags(
        source,
        provider=kw["provider"],
        bucket=kw["bucket"],
        endpoint=kw["endpoint"],
        region=kw["region"],
        path=kw["path_"],
        secret_name=kw["storage_secret_name"],
        secret_namespace=kw["storage_secret_namespace"] or kw["namespace"],
        secret_dir=kw["secret_dir"],
        max_connections=kw["max_connections"],
        insecure_tls=truthy(kw["insecure_tls"]),
        policy=retry_policy(kw["backend_retries"], kw["backend_timeout"]),
        repository_name=repository,
        namespace=namespace,
    )


def with_driver(storage: Storage, source: ObjectSource, namespace: str, appbinding: str, opts: DriverOptions):
    """The storage and the AppBinding's driver; the storage is closed if the driver cannot be made."""
    from stash_runner.stash.resolve import driver_for

    try:
        return storage, driver_for(source, namespace, appbinding, opts)
    except BaseException:
        storage.close()
        raise


def flags_storage_and_driver(source: ObjectSource, kw: dict, opts: DriverOptions):
    """Storage from Stash's flags, then the driver."""
    return with_driver(flags_storage(source, kw), source, kw["appbinding_namespace"] or kw["namespace"],
                       kw["appbinding"], opts)


def session_storage(source: ObjectSource, kw: dict, repository_flag: bool = True) -> StorageOpener:
    """A session's Repository: from Stash's storage flags when the Function passes them with the storage Secret
    (by name or mounted), else the Repository object by name (Stash v0.18's update-status passed the location
    but took the Secret from the Repository). ``repository_flag``: a --repository flag names it (backup and
    restore); update-status has checked that flag against the session's and opens the session's."""
    from stash_runner.stash.resolve import storage_from_repository

    check_flags(kw)
    if kw.get("provider") and (kw.get("storage_secret_name") or kw.get("secret_dir")):
        return lambda ns, name: flags_storage(source, kw, ns, name)
    policy = retry_policy(kw["backend_retries"], kw["backend_timeout"])
    if repository_flag and kw.get("repository"):  # a --repository flag wins over the invoker's
        return lambda ns, name: storage_from_repository(source, kw["namespace"], kw["repository"], policy)
    return lambda ns, name: storage_from_repository(source, ns, name, policy)


@contextlib.contextmanager
def opened(objects, namespace: str, repository: str, retries: int, timeout: float,
            kubeconfig: str = "", preload: tuple[str, ...] = ()) -> Iterator[Repository]:
    """The named Repository, opened; its storage closed afterwards.

    ``preload``: modules the command goes on to use, imported while the key is derived. Opening a repository is
    mostly the key file's scrypt (restic calibrates it to ~0.5 s), which releases the GIL: it runs on a thread of its
    own and the command's imports run beside it on the other core, instead of after it.
    """
    from concurrent.futures import ThreadPoolExecutor

    from stash_runner.restic.repository import Repository
    from stash_runner.stash.resolve import open_objects, storage_from_repository

    check_flags({"namespace": namespace, "repository": repository})
    with open_objects(objects, kubeconfig) as (source, _):
        storage = storage_from_repository(source, namespace, repository, retry_policy(retries, timeout))
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="open") as pool:
            opening = pool.submit(Repository.open, storage.backend, storage.password)
            for module in preload:
                importlib.import_module(module)
            repo = opening.result()
        yield repo
    finally:
        storage.close()


def named_storage_and_driver(kw: dict, opts: DriverOptions, open_ahead: bool = False):
    """The --repository's storage and the --appbinding's driver (storage closed if the driver fails). ``open_ahead``
    (a backup): the repository starts opening on a thread now, while the driver and the flow are imported."""
    from stash_runner.stash.resolve import open_objects, storage_from_repository

    check_flags(kw)
    with open_objects(kw["objects"], kw["kubeconfig"]) as (source, _):
        storage = storage_from_repository(source, kw["namespace"], kw["repository"],
                                          retry_policy(kw["backend_retries"], kw["backend_timeout"]))
        if open_ahead:
            from stash_runner.flows import backup as flow

            storage = dataclasses.replace(storage, opened=flow.open_ahead(storage.backend, storage.password))
        return with_driver(storage, source, kw["namespace"], kw["appbinding"], opts)


def require(kw: dict, *names: str) -> None:
    check_flags(kw)
    for name in names:
        if not kw[name]:
            raise BadInput(f"--{name} is missing (or give a session to take it from)")


def backup_session(kw: dict, opts: DriverOptions, tags: list[str], level: int, workers: int | None) -> None:
    from stash_runner.stash import executor
    from stash_runner.stash.executor import BackupSettings
    from stash_runner.stash.resolve import open_objects

    settings = BackupSettings(
        hostname=kw["hostname"] or "host-0", target_name=kw["appbinding"] or kw["target_name"], driver=opts,
        wait_timeout=kw["wait_timeout"], compression_level=level, workers=workers, lock_wait=kw["lock_wait"],
        tags=tags, retention=retention_override(kw), output_dir=kw["output_dir"])
    with open_objects(kw["objects"], kw["kubeconfig"]) as (source, cluster):
        executor.backup_session(reporting(source, cluster, kw), kw["namespace"], kw["backupsession"], settings,
                                session_storage(source, kw))


def restore_session(kw: dict, opts: DriverOptions) -> None:
    from stash_runner.stash import executor
    from stash_runner.stash.executor import RestoreSettings
    from stash_runner.stash.resolve import open_objects

    settings = RestoreSettings(
        hostname=kw["hostname"] or "host-0", snapshot="" if kw["snapshot"] == "latest" else kw["snapshot"],
        source_hostname=kw["source_hostname"], driver=opts, wait_timeout=kw["wait_timeout"],
        lock_wait=kw["lock_wait"], no_lock=kw["no_lock"], output_dir=kw["output_dir"],
        appbinding=kw["appbinding"] or kw["target_name"])
    with open_objects(kw["objects"], kw["kubeconfig"]) as (source, cluster):
        executor.restore_session(reporting(source, cluster, kw), kw["namespace"], kw["restoresession"], settings,
                                 session_storage(source, kw))


def backup_host(driver, storage: Storage, hostname: str, tags: list[str], wait_timeout: float,
                level: int, workers: int | None, kw: dict) -> tuple[SnapshotStats, dict | None]:
    """Returns the snapshot's figures and, when post-backup actions ran, Stash's repository figures."""
    from stash_runner.flows.backup import BackupPlan
    from stash_runner.stash import host

    policy, prune, dry_run = retention(kw)
    plan = BackupPlan(driver=driver, backend=storage.backend, password=storage.password, hostname=hostname,
                      tags=tags, wait_timeout=wait_timeout, compression_level=level, workers=workers,
                      lock_wait=kw["lock_wait"], retention=policy, retention_prune=prune, retention_dry_run=dry_run,
                      opened=storage.opened)
    return host.backup(plan, storage)


def restore_host(driver, storage: Storage, snapshot: str, source_hostname: str, wait_timeout: float,
                 lock_wait: float, no_lock: bool = False) -> None:
    from stash_runner.flows.restore import RestorePlan
    from stash_runner.stash import host

    host.restore(RestorePlan(driver=driver, backend=storage.backend, password=storage.password, snapshot=snapshot,
                             source_hostname=source_hostname, wait_timeout=wait_timeout, lock_wait=lock_wait,
                             no_lock=no_lock), storage)
