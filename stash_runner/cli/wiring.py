"""From parsed flags to the library's pieces: the objects' source, the storage, the driver, the reporting, and the
runs that backup/restore and Stash's addon spellings share."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from drivers import DriverOptions
from stash_runner.errors import BadInput
from stash_runner.flows.backup import BackupPlan
from stash_runner.flows.restore import RestorePlan
from stash_runner.restic.repository import Repository
from stash_runner.stash import executor, host, metrics
from stash_runner.stash.executor import BackupSettings, Reporting, RestoreSettings, StorageOpener
from stash_runner.stash.objects import ObjectSource
from stash_runner.stash.output import SnapshotStats
from stash_runner.stash.resolve import Storage, driver_for, open_objects, storage_from_flags, storage_from_repository

from .options import retention, retention_override, retry_policy, truthy

if TYPE_CHECKING:
    from stash_runner.stash.kube import Cluster


def reporting(source: ObjectSource, cluster: Cluster | None, kw: dict) -> Reporting:
    url = metrics.pushgateway_url(kw["metrics_pushgateway_url"], os.environ) if truthy(kw["metrics_enabled"]) \
        else None
    labels = metrics.parse_user_labels(item for value in kw["metrics_labels"] for item in value.split(","))
    return Reporting(source, cluster, url, kw["prom_job_name"], labels)


def flags_storage(source, kw: dict, namespace: str = "", repository: str = "") -> Storage:
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
    if kw.get("provider") and (kw.get("storage_secret_name") or kw.get("secret_dir")):
        return lambda ns, name: flags_storage(source, kw, ns, name)
    policy = retry_policy(kw["backend_retries"], kw["backend_timeout"])
    if repository_flag and kw.get("repository"):  # a --repository flag wins over the invoker's
        return lambda ns, name: storage_from_repository(source, kw["namespace"], kw["repository"], policy)
    return lambda ns, name: storage_from_repository(source, ns, name, policy)


@contextlib.contextmanager
def opened(objects, namespace: str, repository: str, retries: int, timeout: float,
            kubeconfig: str = "") -> Iterator[Repository]:
    """The named Repository, opened; its storage closed afterwards."""
    with open_objects(objects, kubeconfig) as (source, _):
        storage = storage_from_repository(source, namespace, repository, retry_policy(retries, timeout))
    try:
        yield Repository.open(storage.backend, storage.password)
    finally:
        storage.close()


def named_storage_and_driver(kw: dict, opts: DriverOptions):
    """The --repository's storage and the --appbinding's driver (storage closed if the driver fails)."""
    with open_objects(kw["objects"], kw["kubeconfig"]) as (source, _):
        storage = storage_from_repository(source, kw["namespace"], kw["repository"],
                                          retry_policy(kw["backend_retries"], kw["backend_timeout"]))
        return with_driver(storage, source, kw["namespace"], kw["appbinding"], opts)


def require(kw: dict, *names: str) -> None:
    for name in names:
        if not kw[name]:
            raise BadInput(f"--{name} is missing (or give a session to take it from)")


def backup_session(kw: dict, opts: DriverOptions, tags: list[str], level: int, workers: int | None) -> None:
    settings = BackupSettings(
        hostname=kw["hostname"] or "host-0", target_name=kw["appbinding"] or kw["target_name"], driver=opts,
        wait_timeout=kw["wait_timeout"], compression_level=level, workers=workers, lock_wait=kw["lock_wait"],
        tags=tags, retention=retention_override(kw), output_dir=kw["output_dir"])
    with open_objects(kw["objects"], kw["kubeconfig"]) as (source, cluster):
        executor.backup_session(reporting(source, cluster, kw), kw["namespace"], kw["backupsession"], settings,
                                session_storage(source, kw))


def restore_session(kw: dict, opts: DriverOptions) -> None:
    settings = RestoreSettings(
        hostname=kw["hostname"] or "host-0", snapshot="" if kw["snapshot"] == "latest" else kw["snapshot"],
        source_hostname=kw["source_hostname"], driver=opts, wait_timeout=kw["wait_timeout"],
        lock_wait=kw["lock_wait"], output_dir=kw["output_dir"], appbinding=kw["appbinding"] or kw["target_name"])
    with open_objects(kw["objects"], kw["kubeconfig"]) as (source, cluster):
        executor.restore_session(reporting(source, cluster, kw), kw["namespace"], kw["restoresession"], settings,
                                 session_storage(source, kw))


def backup_host(driver, storage: Storage, hostname: str, tags: list[str], wait_timeout: float,
                level: int, workers: int | None, kw: dict) -> tuple[SnapshotStats, dict | None]:
    """Returns the snapshot's figures and, when post-backup actions ran, Stash's repository figures."""
    policy, prune, dry_run = retention(kw)
    plan = BackupPlan(driver=driver, backend=storage.backend, password=storage.password, hostname=hostname,
                      tags=tags, wait_timeout=wait_timeout, compression_level=level, workers=workers,
                      lock_wait=kw["lock_wait"], retention=policy, retention_prune=prune, retention_dry_run=dry_run)
    return host.backup(plan, storage)


def restore_host(driver, storage: Storage, snapshot: str, source_hostname: str, wait_timeout: float,
                 lock_wait: float) -> None:
    host.restore(RestorePlan(driver=driver, backend=storage.backend, password=storage.password, snapshot=snapshot,
                             source_hostname=source_hostname, wait_timeout=wait_timeout, lock_wait=lock_wait), storage)
