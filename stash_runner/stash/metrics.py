"""Stash's Prometheus metrics, pushed to a Pushgateway under Stash's names, help texts, labels and job name.

Mirrors stash.appscode.dev/apimachinery ``pkg/metrics`` (backup.go, restore.go, repository.go, options.go):

* every series carries the invoker's labels ``invoker_kind, invoker_name, namespace, driver="Restic",
  repository``; target and host series add the target's ``kind, group, name``, host series ``hostname``;
  repository series replace ``name``/``namespace`` with the Repository's and add ``backend, bucket, prefix``;
* a failure pushes only the success gauge, as 0 (the other gauges keep their last pushed values);
* pushes are ``pushadd`` (HTTP POST: replace only the pushed metric names in the group) to the job
  ``<lower(invokerKind)>-<namespace>-<invokerName>``;
* every ``stash_appscode_com_*`` series goes out twice, in the same push: also under its legacy
  ``stash_backup_*`` / ``stash_restore_*`` / ``stash_repository_*`` name (``LEGACY``), as Stash's
  ``export*LegacyMetrics`` do.

Every builder returns a fresh ``CollectorRegistry``: nothing global, so one process can push for
several invokers. ``push`` never raises: a Pushgateway that is down must not fail a good backup.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit, urlunsplit

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import basic_auth_handler, default_handler, pushadd_to_gateway
from prometheus_client.metrics_core import Metric

from stash_runner.errors import describe

if TYPE_CHECKING:
    from backends.spec import BackendSpec
    from stash_runner.maintenance.post_backup import PostBackup

    from .output import HostResult

log = logging.getLogger("stash_runner.stash.metrics")

ENV_PUSHGATEWAY_URL = "PROMETHEUS_PUSHGATEWAY_URL"
#: the ``driver`` label of everything Stash backs up with restic (api_v1beta1.ResticSnapshotter)
DRIVER_RESTIC = "Restic"

_BACKUP = "stash_appscode_com_backupsession_"
_RESTORE = "stash_appscode_com_restoresession_"
_REPO = "stash_appscode_com_repository_"

# Help texts verbatim from Stash, typos and copy-pastes included: the Pushgateway drops the HELP of a
# metric whose pushes disagree, and Stash's own operator pushes some of these names to the same gateway.
HELP: dict[str, str] = {
    # backup session (invoker labels)
    _BACKUP + "success": "Indicates whether the entire backup session was succeeded or not",
    _BACKUP + "duration_seconds": "Indicates total time taken to complete the entire backup session",
    _BACKUP + "target_count_total": "Indicates the total number of target that was backed up in this backup session",
    _BACKUP + "last_success_time_seconds": "Indicates total time taken to complete the entire backup session",
    # backup target (+ kind, group, name)
    _BACKUP + "target_success": "Indicates whether the backup for a target has succeeded or not",
    _BACKUP + "target_host_count_total": "Indicates the total number of hosts that was backed up for this target",
    _BACKUP + "target_last_success_time_seconds": "Indicates total time taken to complete the entire backup session",
    # backup host (+ hostname)
    _BACKUP + "host_backup_success": "Indicates whether the backup for a host succeeded or not",
    _BACKUP + "host_backup_duration_seconds": "Indicates total time taken to complete the backup process for a host",
    _BACKUP + "host_data_size_bytes": "Total size of the target data to backup for a host (in bytes)",
    _BACKUP + "host_data_uploaded_bytes": "Amount of data uploaded to the repository for a host (in bytes)",
    _BACKUP + "host_data_processing_time_seconds": "Total time taken to process the target data for a host",
    _BACKUP + "host_files_total": "Total number of files that has been backed up for a host",
    _BACKUP + "host_files_new": "Total number of new files that has been created since last backup for a host",
    _BACKUP + "host_files_modified": "Total number of files that has been modified since last backup for a host",
    _BACKUP + "host_files_unmodified": "Total number of files that has not been changed since last backup for a host",
    # repository (invoker labels, then the Repository's name/namespace + backend, bucket, prefix)
    _REPO + "integrity": "Result of repository integrity check after last backup",
    _REPO + "size_bytes": "Indicates size of repository after last backup (in bytes)",
    _REPO + "snapshot_count": "Indicates number of snapshots stored in the repository",
    _REPO + "snapshot_cleaned": "Indicates number of old snapshots cleaned up according to retention policy "
                                "on last backup session",
    # restore session / target / host
    _RESTORE + "success": "Indicates whether the entire restore session was succeeded or not",
    _RESTORE + "duration_seconds": "Indicates the total time taken to complete the entire restore session",
    _RESTORE + "target_count_total": "Indicates the total number of targets that was restored in this restore session",
    _RESTORE + "target_success": "Indicates whether the restore for a target has succeeded or not",
    _RESTORE + "target_host_count_total": "Indicates the total number of hosts that was restored for this restore "
                                          "target",
    _RESTORE + "host_restore_success": "Indicates whether the restore process was succeeded for a host",
    _RESTORE + "host_restore_duration_seconds": "Indicates the total time taken to complete the restore process "
                                                "for a host",
}

# New-style name -> the legacy name Stash pushes beside it, with the same labels, value and help text.
# From stash.appscode.dev/apimachinery pkg/metrics: backup.go (legacyBackupSessionMetrics,
# legacyBackupTargetMetrics, legacyBackupHostMetrics: Namespace "stash", Subsystem "backup"), restore.go
# (legacyRestore*Metrics: "stash"/"restore") and repository.go (legacyRepositoryMetrics: "stash"/"repository").
# Dashboards and alerts written before the stash_appscode_com_ names still read these.
_OLD_BACKUP = "stash_backup_"
_OLD_RESTORE = "stash_restore_"
_OLD_REPO = "stash_repository_"
LEGACY: dict[str, str] = {
    _BACKUP + "success": _OLD_BACKUP + "session_success",
    _BACKUP + "duration_seconds": _OLD_BACKUP + "session_duration_seconds",
    _BACKUP + "target_count_total": _OLD_BACKUP + "target_count_total",
    _BACKUP + "last_success_time_seconds": _OLD_BACKUP + "last_success_time_seconds",
    _BACKUP + "target_success": _OLD_BACKUP + "target_success",
    _BACKUP + "target_host_count_total": _OLD_BACKUP + "target_host_count_total",
    _BACKUP + "target_last_success_time_seconds": _OLD_BACKUP + "target_last_success_time_seconds",
    _BACKUP + "host_backup_success": _OLD_BACKUP + "host_backup_success",
    _BACKUP + "host_backup_duration_seconds": _OLD_BACKUP + "host_backup_duration_seconds",
    _BACKUP + "host_data_size_bytes": _OLD_BACKUP + "host_data_size_bytes",
    _BACKUP + "host_data_uploaded_bytes": _OLD_BACKUP + "host_data_uploaded_bytes",
    _BACKUP + "host_data_processing_time_seconds": _OLD_BACKUP + "host_data_processing_time_seconds",
    _BACKUP + "host_files_total": _OLD_BACKUP + "host_files_total",
    _BACKUP + "host_files_new": _OLD_BACKUP + "host_files_new",
    _BACKUP + "host_files_modified": _OLD_BACKUP + "host_files_modified",
    _BACKUP + "host_files_unmodified": _OLD_BACKUP + "host_files_unmodified",
    _REPO + "integrity": _OLD_REPO + "integrity",
    _REPO + "size_bytes": _OLD_REPO + "size_bytes",
    _REPO + "snapshot_count": _OLD_REPO + "snapshot_count",
    _REPO + "snapshot_cleaned": _OLD_REPO + "snapshot_cleaned",
    _RESTORE + "success": _OLD_RESTORE + "session_success",
    _RESTORE + "duration_seconds": _OLD_RESTORE + "session_duration_seconds",
    _RESTORE + "target_count_total": _OLD_RESTORE + "target_count_total",
    _RESTORE + "target_success": _OLD_RESTORE + "target_success",
    _RESTORE + "target_host_count_total": _OLD_RESTORE + "target_host_count_total",
    _RESTORE + "host_restore_success": _OLD_RESTORE + "host_restore_success",
    _RESTORE + "host_restore_duration_seconds": _OLD_RESTORE + "host_restore_duration_seconds",
}
# Stash gives each legacy gauge the help text of its new-style twin, word for word.
HELP.update({old: HELP[new] for new, old in LEGACY.items()})

_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


# -- inputs ------------------------------------------------------------------------------------

def parse_user_labels(pairs: Iterable[str]) -> dict[str, str]:
    """Stash's ``--metrics-labels``: ``key=value`` items; anything else (or an invalid name) is ignored."""
    out: dict[str, str] = {}
    for item in pairs:
        parts = item.split("=")
        if len(parts) == 2 and _LABEL_NAME.match(parts[0]) and not parts[0].startswith("__"):
            out[parts[0]] = parts[1]
    return out


@dataclass(frozen=True)
class Invoker:
    """The BackupConfiguration/BackupBatch/RestoreSession/RestoreBatch that ran, and its Repository's name."""

    kind: str
    name: str
    namespace: str
    repository: str = ""
    #: user labels (``parse_user_labels``); Stash's own labels win on a clash
    user_labels: Mapping[str, str] = field(default_factory=dict)

    def labels(self) -> dict[str, str]:
        """backupInvokerLabels / restoreInvokerLabels for the restic driver."""
        return {**self.user_labels, "invoker_kind": self.kind, "invoker_name": self.name,
                "namespace": self.namespace, "driver": DRIVER_RESTIC, "repository": self.repository}


@dataclass(frozen=True)
class Target:
    """A backup/restore target reference.

    For an AppBinding Stash labels the application, not the AppBinding: ``app_type`` is the AppBinding's
    ``spec.type`` (``kubedb.com/postgres`` -> group ``kubedb.com``, kind ``postgres``); ``None`` means the
    AppBinding was not found, and then Stash sets neither label.
    """

    kind: str
    name: str
    api_version: str = ""
    app_type: str | None = None

    @classmethod
    def app_binding(cls, name: str, app_type: str | None) -> Target:
        return cls("AppBinding", name, "appcatalog.appscode.com/v1alpha1", app_type)

    @classmethod
    def from_ref(cls, ref: Mapping, app_type: str | None = None) -> Target:
        """From a status ``ref`` ({apiVersion, kind, name}); ``app_type`` is an AppBinding's spec.type."""
        if ref.get("kind") == "AppBinding":
            return cls.app_binding(str(ref.get("name")), app_type)
        return cls(str(ref.get("kind")), str(ref.get("name")), str(ref.get("apiVersion") or ""))

    def labels(self) -> dict[str, str]:
        """Stash's targetLabels."""
        out: dict[str, str] = {}
        if self.kind == "AppBinding":
            if self.app_type is not None:
                group, _, resource = self.app_type.rpartition("/")
                if not group and not resource:  # untyped AppBinding: AppBinding's group, resource "apps"
                    group, resource = "appcatalog.appscode.com", "apps"
                out.update(kind=resource, group=group)
        else:
            # schema.ParseGroupVersion: "apps/v1" -> "apps"; the core "v1" has no group
            out.update(kind=self.kind, group=self.api_version.rpartition("/")[0])
        out["name"] = self.name
        return out


@dataclass(frozen=True)
class RepositoryInfo:
    """The Repository's name and where it lives, as Stash's Backend.Provider/Container/Prefix give them."""

    name: str
    namespace: str
    provider: str
    bucket: str = ""
    prefix: str = ""

    @classmethod
    def from_spec(cls, name: str, namespace: str, spec: BackendSpec) -> RepositoryInfo:
        """From the project's BackendSpec (backends/spec.py), keeping credentials out of the labels."""
        if spec.provider == "local":
            # Stash: bucket = mountPath, no prefix for local
            return cls(name, namespace, "local", spec.bucket, "")
        if spec.provider == "rest":
            # Stash: bucket = URL host, prefix = URL path; never the user:password of the URL
            u = urlsplit(spec.bucket)
            return cls(name, namespace, "rest", u.netloc.rpartition("@")[2], u.path)
        return cls(name, namespace, spec.provider, spec.bucket, spec.prefix)

    def labels(self) -> dict[str, str]:
        """repoMetricLabels: bucket and prefix only when set."""
        out = {"name": self.name, "namespace": self.namespace, "backend": self.provider}
        if self.bucket:
            out["bucket"] = self.bucket
        if self.prefix:
            out["prefix"] = self.prefix
        return out


@dataclass(frozen=True)
class TargetOutcome:
    """One target's result in a session: Stash's BackupTargetStatus/RestoreMemberStatus phase and TotalHosts."""

    target: Target
    succeeded: bool
    total_hosts: int | None = None


# -- building ----------------------------------------------------------------------------------

class _Gauges:
    """A collector of fixed gauge samples: series of one name may carry different label sets."""

    def __init__(self) -> None:
        self._families: dict[str, Metric] = {}

    def set(self, name: str, labels: Mapping[str, str], value: float) -> None:
        """One sample of ``name`` and the same sample of its legacy twin (``LEGACY``), as Stash pushes both."""
        # An empty label value is the same as no label to Prometheus: leave it out.
        sample_labels = {k: v for k, v in labels.items() if v != ""}
        for series in (name, LEGACY[name]):
            family = self._families.get(series)
            if family is None:
                family = self._families[series] = Metric(series, HELP[series], "gauge")
            family.add_sample(series, sample_labels, float(value))

    def collect(self) -> list[Metric]:
        return list(self._families.values())

    def registry(self) -> CollectorRegistry:
        reg = CollectorRegistry(auto_describe=False)
        reg.register(self)
        return reg


def _host_ok(host: HostResult) -> bool:
    return host.phase == "Succeeded" and not host.error


def backup_host_metrics(invoker: Invoker, target: Target, hosts: Iterable[HostResult]) -> CollectorRegistry:
    """SendBackupHostMetrics: one set of host gauges per host (what output.json's stats carry)."""
    g = _Gauges()
    base = {**invoker.labels(), **target.labels()}
    for host in hosts:
        labels = {**base, "hostname": host.hostname}
        if not _host_ok(host):
            g.set(_BACKUP + "host_backup_success", labels, 0)
            continue
        snaps = host.snapshots
        g.set(_BACKUP + "host_backup_success", labels, 1)
        # HostResult.duration_seconds: the host's whole run (output.json "duration")
        g.set(_BACKUP + "host_backup_duration_seconds", labels, host.duration_seconds)
        # Sums over the host's snapshots, as Stash's setValues; exact bytes/seconds rather than Stash's
        # round trip through "1.234 MiB" / "m:ss" strings.
        g.set(_BACKUP + "host_files_total", labels, sum(s.total_files for s in snaps))
        g.set(_BACKUP + "host_files_new", labels, sum(s.new_files for s in snaps))
        g.set(_BACKUP + "host_files_modified", labels, sum(s.modified_files for s in snaps))
        g.set(_BACKUP + "host_files_unmodified", labels, sum(s.unmodified_files for s in snaps))
        g.set(_BACKUP + "host_data_size_bytes", labels, sum(s.total_size for s in snaps))  # bytes read
        g.set(_BACKUP + "host_data_uploaded_bytes", labels, sum(s.uploaded for s in snaps))  # bytes stored
        g.set(_BACKUP + "host_data_processing_time_seconds", labels, sum(s.processing_seconds for s in snaps))
    return g.registry()


def backup_session_metrics(invoker: Invoker, targets: Sequence[TargetOutcome], *, duration_seconds: float,
                           succeeded: bool | None = None, now: float | None = None) -> CollectorRegistry:
    """SendBackupSessionMetrics + SendBackupTargetMetrics for each target, in one registry.

    ``succeeded`` is the BackupSession's phase; by default all targets succeeded. ``now`` (Unix time)
    is what Stash's SetToCurrentTime records as the last success.
    """
    now = time.time() if now is None else now
    ok = all(t.succeeded for t in targets) if succeeded is None else succeeded
    g = _Gauges()
    labels = invoker.labels()
    g.set(_BACKUP + "success", labels, 1 if ok else 0)
    if ok:
        g.set(_BACKUP + "duration_seconds", labels, duration_seconds)  # status.sessionDuration
        g.set(_BACKUP + "target_count_total", labels, len(targets))  # len(status.targets)
        g.set(_BACKUP + "last_success_time_seconds", labels, now)
    for t in targets:
        tl = {**labels, **t.target.labels()}
        g.set(_BACKUP + "target_success", tl, 1 if t.succeeded else 0)
        if t.succeeded:
            g.set(_BACKUP + "target_last_success_time_seconds", tl, now)
            # Stash registers the gauge even when TotalHosts is unset: it then reads 0
            g.set(_BACKUP + "target_host_count_total", tl, t.total_hosts or 0)
    return g.registry()


def restore_host_metrics(invoker: Invoker, target: Target, hosts: Iterable[HostResult]) -> CollectorRegistry:
    """SendRestoreHostMetrics: success and duration per host; a failed host only success 0."""
    g = _Gauges()
    base = {**invoker.labels(), **target.labels()}
    for host in hosts:
        labels = {**base, "hostname": host.hostname}
        g.set(_RESTORE + "host_restore_success", labels, 1 if _host_ok(host) else 0)
        if _host_ok(host):
            g.set(_RESTORE + "host_restore_duration_seconds", labels, host.duration_seconds)
    return g.registry()


def restore_session_metrics(invoker: Invoker, targets: Sequence[TargetOutcome], *, duration_seconds: float,
                            succeeded: bool | None = None) -> CollectorRegistry:
    """SendRestoreSessionMetrics + SendRestoreTargetMetrics for each target, in one registry."""
    ok = all(t.succeeded for t in targets) if succeeded is None else succeeded
    g = _Gauges()
    labels = invoker.labels()
    g.set(_RESTORE + "success", labels, 1 if ok else 0)
    if ok:
        g.set(_RESTORE + "duration_seconds", labels, duration_seconds)
        g.set(_RESTORE + "target_count_total", labels, len(targets))
    for t in targets:
        tl = {**labels, **t.target.labels()}
        g.set(_RESTORE + "target_success", tl, 1 if t.succeeded else 0)
        if t.succeeded:
            g.set(_RESTORE + "target_host_count_total", tl, t.total_hosts or 0)
    return g.registry()


def repository_metrics(invoker: Invoker, repo: RepositoryInfo, post: PostBackup) -> CollectorRegistry:
    """SendRepositoryMetrics, from the post-backup actions' outcome (maintenance.PostBackup)."""
    g = _Gauges()
    labels = {**invoker.labels(), **repo.labels()}
    # integrity: 1 only when a check ran and passed (Stash: Integrity != nil && *Integrity)
    g.set(_REPO + "integrity", labels, 1 if post.integrity else 0)
    if post.stats is not None:
        # raw_data is what Stash reports as the Repository's totalSize (restic stats --mode raw-data)
        g.set(_REPO + "size_bytes", labels, post.stats.raw_data)
        g.set(_REPO + "snapshot_count", labels, post.stats.snapshots)
    # Without stats the two gauges are not pushed: add semantics keep the last known values.
    g.set(_REPO + "snapshot_cleaned", labels, post.snapshots_removed)  # snapshots forgotten by retention
    return g.registry()


# -- pushing -----------------------------------------------------------------------------------

def job_name(invoker: Invoker) -> str:
    """Stash's job: ``<lower(invokerKind)>-<namespace>-<invokerName>``."""
    return f"{invoker.kind.lower()}-{invoker.namespace}-{invoker.name}"


def host_grouping(hostname: str) -> dict[str, str]:
    """The grouping key for a host's push, beside the job.

    A POST replaces every series of the pushed names in its group, so with Stash's job-only group the
    second host of a target would wipe the first host's series. A ``hostname`` group keeps each host's
    series; the series' labels are unchanged (they carry the same ``hostname`` already).
    """
    return {"hostname": hostname} if hostname else {}


def pushgateway_url(explicit: str | None, environ: Mapping[str, str]) -> str | None:
    """``--metrics-pushgateway-url``, else ``PROMETHEUS_PUSHGATEWAY_URL``; None: metrics are off."""
    for candidate in (explicit, environ.get(ENV_PUSHGATEWAY_URL)):
        if candidate and candidate.strip():
            return candidate.strip()
    return None


def _split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """The URL without user:password (for requests and logs), and the credentials for basic auth."""
    u = urlsplit(url if "://" in url else "http://" + url)
    userinfo, at, hostport = u.netloc.rpartition("@")
    if not at:
        return urlunsplit(u), None, None
    user, _, password = userinfo.partition(":")
    return urlunsplit(u._replace(netloc=hostport)), unquote(user), unquote(password)


def push(url: str, job: str, registry: CollectorRegistry, *, grouping: Mapping[str, str] | None = None,
         timeout: float = 10) -> bool:
    """pushadd (HTTP POST) to ``<url>/metrics/job/<job>[/<label>/<value>...]``, as Stash's ``Add()``.

    Returns False after one warning line when the gateway is unreachable or refuses the push; never
    raises, so a metrics problem cannot fail a backup. The log shows the URL without credentials.
    """
    safe_url, user, password = _split_credentials(url)
    # Go's client (Stash) sends a URL's user:password as basic auth; so do we, without it in the URL
    handler = (default_handler if user is None
               else functools.partial(basic_auth_handler, username=user, password=password))
    try:
        pushadd_to_gateway(safe_url, job=job, registry=registry, grouping_key=dict(grouping or {}),
                           timeout=timeout, handler=handler)
    except Exception as e:  # anything (refused, timeout, HTTP 4xx/5xx, a bad URL) is only a warning
        reason = describe(e)
        if password:
            reason = reason.replace(password, "***")
        log.warning("metrics not pushed to the Pushgateway at %s (job %s): %s", safe_url, job, reason[:300])
        return False
    log.debug("metrics pushed to %s (job %s)", safe_url, job)
    return True
