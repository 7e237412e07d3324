"""Stash's metrics pushed to the real (Debian) Pushgateway and read back through its HTTP API."""

from __future__ import annotations

import logging
import time

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from backends.spec import BackendSpec
from stash_runner.maintenance.forget import ForgetResult
from stash_runner.maintenance.post_backup import PostBackup, RetentionOutcome
from stash_runner.maintenance.retention import Policy
from stash_runner.maintenance.stats import RepoStats
from stash_runner.stash import metrics as m
from stash_runner.stash.output import HostResult, SnapshotStats

from .pgcluster import free_port
from .pushgateway import exposition, groups

B = "stash_appscode_com_backupsession_"
R = "stash_appscode_com_restoresession_"
REPO = "stash_appscode_com_repository_"
HOST_BACKUP = {B + n for n in ("host_backup_success", "host_backup_duration_seconds", "host_data_size_bytes",
                               "host_data_uploaded_bytes", "host_data_processing_time_seconds", "host_files_total",
                               "host_files_new", "host_files_modified", "host_files_unmodified")}
# what the Pushgateway adds to every group
GATEWAY_OWN = {"push_time_seconds", "push_failure_time_seconds"}
NOW = 1_700_000_000.0
RESTIC_PASSWORD = "Restic-Pw-0xDEADBEEF"


def invoker(name: str, kind: str = "BackupConfiguration") -> m.Invoker:
    return m.Invoker(kind, name, "demo", repository="gcs-repo")


PG = m.Target.app_binding("sample-pg", "kubedb.com/postgres")


def invoker_labels(inv: m.Invoker) -> dict[str, str]:
    return {"invoker_kind": inv.kind, "invoker_name": inv.name, "namespace": "demo", "driver": "Restic",
            "repository": "gcs-repo"}


def target_labels() -> dict[str, str]:
    return {"kind": "postgres", "group": "kubedb.com", "name": "sample-pg"}


def group(gw, job: str, **grouping: str) -> dict[str, dict]:
    """The metric families of exactly one group, each as {"type", "help", "series": {labels: value}}.

    Every group read is checked for Stash's legacy twins (``legacy_twins_match``)."""
    want = {"job": job, **grouping}
    found = [g for g in groups(gw) if g["labels"] == want]
    assert len(found) == 1, f"group {want}: {[g['labels'] for g in groups(gw)]}"
    out = {}
    for name, fam in found[0].items():
        if isinstance(fam, dict) and "metrics" in fam:
            series = {frozenset(s["labels"].items()): float(s["value"]) for s in fam["metrics"]}
            out[name] = {"type": fam["type"], "help": fam.get("help"), "series": series}
    legacy_twins_match(out)
    return out


def legacy_twins_match(fams: dict[str, dict]) -> None:
    """Each pushed stash_appscode_com_* family has its legacy family beside it with the very same series
    (labels and values), type and help; and no legacy family comes without its new-style one."""
    new_style = {n for n in fams if n.startswith("stash_appscode_com_")}
    legacy = {n for n in fams if n.startswith(("stash_backup_", "stash_restore_", "stash_repository_"))}
    assert {m.LEGACY[n] for n in new_style} == legacy, (sorted(new_style), sorted(legacy))
    for name in new_style:
        old = fams[m.LEGACY[name]]
        assert old["series"] == fams[name]["series"], name
        assert (old["type"], old["help"]) == (fams[name]["type"], fams[name]["help"]), name


def pushed(*names: str) -> set[str]:
    """The names a push of these new-style names carries: each with its legacy twin."""
    return set(names) | {m.LEGACY[n] for n in names}


def only(fam: dict) -> tuple[dict[str, str], float]:
    assert len(fam["series"]) == 1, fam
    labels, value = next(iter(fam["series"].items()))
    return dict(labels), value


def check_family(fams: dict, name: str, labels: dict[str, str], value: float) -> None:
    fam = fams[name]
    assert fam["type"] == "GAUGE"
    assert fam["help"] == m.HELP[name]
    got_labels, got = only(fam)
    assert got_labels == labels, name
    assert got == pytest.approx(value), name


def host(hostname: str = "host-0", ok: bool = True) -> HostResult:
    if not ok:
        return HostResult(hostname, "Failed", 3.5, error="pg_dumpall: connection refused")
    snap = SnapshotStats(name="0123abcd" * 8, path="/dumpall.sql", total_size=50_000_000, uploaded=1_234_567,
                         processing_seconds=12.25, total_files=1, new_files=0, modified_files=1)
    return HostResult(hostname, "Succeeded", 14.5, snapshots=[snap])


# -- names and URLs ------------------------------------------------------------------------------

def test_job_name_is_stash_format():
    assert m.job_name(m.Invoker("BackupConfiguration", "pg-backup", "demo")) == "backupconfiguration-demo-pg-backup"
    assert m.job_name(m.Invoker("RestoreSession", "pg-restore", "prod")) == "restoresession-prod-pg-restore"
    assert m.job_name(m.Invoker("BackupBatch", "nightly", "ns-1")) == "backupbatch-ns-1-nightly"


def test_pushgateway_url_flag_then_environment():
    env = {m.ENV_PUSHGATEWAY_URL: "http://stash-operator.kube-system.svc:56789"}
    assert m.pushgateway_url("http://flag:9091", env) == "http://flag:9091"
    assert m.pushgateway_url(None, env) == "http://stash-operator.kube-system.svc:56789"
    assert m.pushgateway_url("", env) == "http://stash-operator.kube-system.svc:56789"
    assert m.pushgateway_url(None, {}) is None
    assert m.pushgateway_url("  ", {m.ENV_PUSHGATEWAY_URL: ""}) is None


def test_target_and_repository_labels_follow_stash():
    assert m.Target("StatefulSet", "db", "apps/v1").labels() == {"kind": "StatefulSet", "group": "apps",
                                                                  "name": "db"}
    assert m.Target("PersistentVolumeClaim", "data", "v1").labels() == {"kind": "PersistentVolumeClaim",
                                                                         "group": "", "name": "data"}
    assert m.Target.app_binding("pg", None).labels() == {"name": "pg"}  # AppBinding not found
    assert m.Target.app_binding("pg", "postgres").labels() == {"kind": "postgres", "group": "", "name": "pg"}
    assert m.Target.app_binding("pg", "").labels() == {"kind": "apps", "group": "appcatalog.appscode.com",
                                                       "name": "pg"}
    local = m.RepositoryInfo.from_spec("r", "demo", BackendSpec("local", bucket="/safe/data", prefix="sub"))
    assert local.labels() == {"name": "r", "namespace": "demo", "backend": "local", "bucket": "/safe/data"}
    gcs = m.RepositoryInfo.from_spec("r", "demo", BackendSpec("gcs", bucket="b", prefix="demo/pg"))
    assert gcs.labels() == {"name": "r", "namespace": "demo", "backend": "gcs", "bucket": "b", "prefix": "demo/pg"}
    rest = m.RepositoryInfo.from_spec("r", "demo", BackendSpec("rest", bucket="https://u:pw@rest.example:8000/x/y"))
    assert rest.labels() == {"name": "r", "namespace": "demo", "backend": "rest", "bucket": "rest.example:8000",
                             "prefix": "/x/y"}
    assert m.parse_user_labels(["team=db", "bad", "a=b=c", "1x=y", "__r=1"]) == {"team": "db"}


# -- legacy names ----------------------------------------------------------------------------------

# Verbatim from stash.appscode.dev/apimachinery pkg/metrics: the legacy gauges (Namespace "stash", Subsystem
# "backup" / "restore" / "repository") beside the new ones ("stash_appscode_com", "backupsession" / ...).
STASH_LEGACY = {
    B + "success": "stash_backup_session_success",
    B + "duration_seconds": "stash_backup_session_duration_seconds",
    B + "target_count_total": "stash_backup_target_count_total",
    B + "last_success_time_seconds": "stash_backup_last_success_time_seconds",
    B + "target_success": "stash_backup_target_success",
    B + "target_host_count_total": "stash_backup_target_host_count_total",
    B + "target_last_success_time_seconds": "stash_backup_target_last_success_time_seconds",
    B + "host_backup_success": "stash_backup_host_backup_success",
    B + "host_backup_duration_seconds": "stash_backup_host_backup_duration_seconds",
    B + "host_data_size_bytes": "stash_backup_host_data_size_bytes",
    B + "host_data_uploaded_bytes": "stash_backup_host_data_uploaded_bytes",
    B + "host_data_processing_time_seconds": "stash_backup_host_data_processing_time_seconds",
    B + "host_files_total": "stash_backup_host_files_total",
    B + "host_files_new": "stash_backup_host_files_new",
    B + "host_files_modified": "stash_backup_host_files_modified",
    B + "host_files_unmodified": "stash_backup_host_files_unmodified",
    REPO + "integrity": "stash_repository_integrity",
    REPO + "size_bytes": "stash_repository_size_bytes",
    REPO + "snapshot_count": "stash_repository_snapshot_count",
    REPO + "snapshot_cleaned": "stash_repository_snapshot_cleaned",
    R + "success": "stash_restore_session_success",
    R + "duration_seconds": "stash_restore_session_duration_seconds",
    R + "target_count_total": "stash_restore_target_count_total",
    R + "target_success": "stash_restore_target_success",
    R + "target_host_count_total": "stash_restore_target_host_count_total",
    R + "host_restore_success": "stash_restore_host_restore_success",
    R + "host_restore_duration_seconds": "stash_restore_host_restore_duration_seconds",
}


def test_legacy_names_are_stashs_and_cover_every_metric():
    assert m.LEGACY == STASH_LEGACY
    new_style = {n for n in m.HELP if n.startswith("stash_appscode_com_")}
    assert set(m.LEGACY) == new_style and len(set(m.LEGACY.values())) == len(m.LEGACY)
    # Stash's legacy gauges carry their new twins' help texts word for word
    assert all(m.HELP[old] == m.HELP[new] for new, old in m.LEGACY.items())


def registry_samples(reg: CollectorRegistry) -> dict[str, dict[frozenset, float]]:
    out: dict[str, dict[frozenset, float]] = {}
    for fam in reg.collect():
        for sample in fam.samples:
            out.setdefault(sample.name, {})[frozenset(sample.labels.items())] = sample.value
    return out


@pytest.mark.parametrize("ok", [True, False])
def test_every_builder_registers_each_series_twice_in_one_registry(ok):
    inv = invoker("twins")
    repo = m.RepositoryInfo.from_spec("r", "demo", BackendSpec("gcs", bucket="b", prefix="p"))
    post = PostBackup(stats=RepoStats(snapshots=2, raw_data=10), integrity=ok)
    two = [host("host-0", ok), host("host-1")]
    outcomes = [m.TargetOutcome(PG, ok, 2), m.TargetOutcome(m.Target("StatefulSet", "db", "apps/v1"), True, 3)]
    registries = [m.backup_host_metrics(inv, PG, two), m.restore_host_metrics(inv, PG, two),
                  m.backup_session_metrics(inv, outcomes, duration_seconds=5, now=NOW),
                  m.restore_session_metrics(inv, outcomes, duration_seconds=5),
                  m.repository_metrics(inv, repo, post)]
    seen = set()
    for reg in registries:
        samples = registry_samples(reg)
        new_style = {n for n in samples if n.startswith("stash_appscode_com_")}
        assert new_style and set(samples) == new_style | {m.LEGACY[n] for n in new_style}
        for name in new_style:
            assert samples[m.LEGACY[name]] == samples[name], name
        seen |= new_style
    if ok:  # a successful run pushes every name there is
        assert seen == set(m.LEGACY)


# -- backup --------------------------------------------------------------------------------------

def test_backup_success_pushes_stash_names_labels_values(gateway):
    inv = invoker("pg-ok")
    job = m.job_name(inv)
    h = host("host-0")
    assert m.push(gateway.url, job, m.backup_host_metrics(inv, PG, [h]), grouping=m.host_grouping("host-0"))
    session = m.backup_session_metrics(inv, [m.TargetOutcome(PG, True, total_hosts=1)], duration_seconds=20.5,
                                       now=NOW)
    assert m.push(gateway.url, job, session)

    # host series: in the job+hostname group, labelled as Stash labels them (+ job, instance from the gateway)
    hl = {**invoker_labels(inv), **target_labels(), "hostname": "host-0", "job": job, "instance": ""}
    fams = group(gateway, job, hostname="host-0")
    assert set(fams) - GATEWAY_OWN == pushed(*HOST_BACKUP)
    expected = {"host_backup_success": 1, "host_backup_duration_seconds": 14.5, "host_data_size_bytes": 50_000_000,
                "host_data_uploaded_bytes": 1_234_567, "host_data_processing_time_seconds": 12.25,
                "host_files_total": 1, "host_files_new": 0, "host_files_modified": 1, "host_files_unmodified": 0}
    for name, value in expected.items():
        check_family(fams, B + name, hl, value)

    # session and target series: in the job-only group, as Stash's operator pushes them
    sl = {**invoker_labels(inv), "job": job, "instance": ""}
    tl = {**sl, **target_labels()}
    fams = group(gateway, job)
    assert set(fams) - GATEWAY_OWN == pushed(*(B + n for n in (
        "success", "duration_seconds", "target_count_total", "last_success_time_seconds", "target_success",
        "target_host_count_total", "target_last_success_time_seconds")))
    check_family(fams, B + "success", sl, 1)
    check_family(fams, B + "duration_seconds", sl, 20.5)
    check_family(fams, B + "target_count_total", sl, 1)
    check_family(fams, B + "last_success_time_seconds", sl, NOW)
    check_family(fams, B + "target_success", tl, 1)
    check_family(fams, B + "target_host_count_total", tl, 1)
    check_family(fams, B + "target_last_success_time_seconds", tl, NOW)

    # and what Prometheus scrapes: the same series, under the same names
    scraped = {f.name: f for f in text_string_to_metric_families(exposition(gateway))}
    sample = next(s for s in scraped[B + "host_data_uploaded_bytes"].samples if s.labels.get("job") == job)
    assert sample.labels == hl and sample.value == 1_234_567
    assert scraped[B + "host_data_uploaded_bytes"].documentation == m.HELP[B + "host_data_uploaded_bytes"]
    # ... and under the legacy names, which Prometheus scrapes just the same
    for name in pushed(*HOST_BACKUP) - HOST_BACKUP:
        twin = next(s for s in scraped[name].samples if s.labels.get("job") == job)
        assert twin.labels == hl and scraped[name].type == "gauge", name
    legacy = next(s for s in scraped["stash_backup_host_data_uploaded_bytes"].samples if s.labels.get("job") == job)
    assert legacy.value == 1_234_567
    assert scraped["stash_backup_host_data_uploaded_bytes"].documentation == m.HELP[B + "host_data_uploaded_bytes"]


def test_backup_failure_pushes_success_gauges_as_zero(gateway):
    inv = invoker("pg-fail")
    job = m.job_name(inv)
    assert m.push(gateway.url, job, m.backup_host_metrics(inv, PG, [host("host-0", ok=False)]),
                  grouping=m.host_grouping("host-0"))
    assert m.push(gateway.url, job, m.backup_session_metrics(inv, [m.TargetOutcome(PG, False, 1)],
                                                             duration_seconds=3.5))
    hl = {**invoker_labels(inv), **target_labels(), "hostname": "host-0", "job": job, "instance": ""}
    fams = group(gateway, job, hostname="host-0")
    assert set(fams) - GATEWAY_OWN == pushed(B + "host_backup_success")  # Stash pushes only the success gauge
    check_family(fams, B + "host_backup_success", hl, 0)
    sl = {**invoker_labels(inv), "job": job, "instance": ""}
    fams = group(gateway, job)
    assert set(fams) - GATEWAY_OWN == pushed(B + "success", B + "target_success")
    check_family(fams, B + "success", sl, 0)
    check_family(fams, B + "target_success", {**sl, **target_labels()}, 0)


def test_failure_after_success_keeps_last_figures_add_semantics(gateway):
    inv = invoker("pg-flaky")
    job = m.job_name(inv)
    grouping = m.host_grouping("host-0")
    assert m.push(gateway.url, job, m.backup_host_metrics(inv, PG, [host("host-0")]), grouping=grouping)
    assert m.push(gateway.url, job, m.backup_host_metrics(inv, PG, [host("host-0", ok=False)]), grouping=grouping)
    fams = group(gateway, job, hostname="host-0")
    assert only(fams[B + "host_backup_success"])[1] == 0
    # POST replaced only the success gauge: the last good backup's figures stay
    assert set(fams) - GATEWAY_OWN == pushed(*HOST_BACKUP)
    assert only(fams[B + "host_data_size_bytes"])[1] == 50_000_000


def test_session_success_defaults_to_all_targets_succeeded():
    other = m.Target("StatefulSet", "db", "apps/v1")
    reg = m.backup_session_metrics(invoker("x"), [m.TargetOutcome(PG, True, 1), m.TargetOutcome(other, False, 3)],
                                   duration_seconds=1)
    assert reg.get_sample_value(B + "success", invoker_labels(invoker("x"))) == 0
    assert reg.get_sample_value(B + "target_success", {**invoker_labels(invoker("x")), **target_labels()}) == 1


def test_two_hosts_keep_both_series(gateway):
    inv = invoker("pg-sts")
    job = m.job_name(inv)
    for name in ("host-0", "host-1"):
        assert m.push(gateway.url, job, m.backup_host_metrics(inv, PG, [host(name)]),
                      grouping=m.host_grouping(name))
    for name in ("host-0", "host-1"):
        labels, value = only(group(gateway, job, hostname=name)[B + "host_backup_success"])
        assert labels["hostname"] == name and value == 1
    scraped = {f.name: f for f in text_string_to_metric_families(exposition(gateway))}
    hosts = {s.labels["hostname"] for s in scraped[B + "host_backup_success"].samples if s.labels["job"] == job}
    assert hosts == {"host-0", "host-1"}


def test_job_only_group_lets_the_second_host_replace_the_first(gateway):
    """Why host pushes get a hostname group: a POST replaces a name's every series in its group."""
    inv = invoker("pg-sts-jobonly")
    job = m.job_name(inv)
    for name in ("host-0", "host-1"):
        assert m.push(gateway.url, job, m.backup_host_metrics(inv, PG, [host(name)]))
    labels, _ = only(group(gateway, job)[B + "host_backup_success"])
    assert labels["hostname"] == "host-1"
    # one push carrying both hosts (Stash's loop over output.json's stats) keeps both
    assert m.push(gateway.url, job, m.backup_host_metrics(inv, PG, [host("host-0"), host("host-1")]))
    assert len(group(gateway, job)[B + "host_backup_success"]["series"]) == 2


# -- restore -------------------------------------------------------------------------------------

def test_restore_success_and_failure(gateway):
    inv = m.Invoker("RestoreSession", "pg-restore", "demo", repository="gcs-repo")
    job = m.job_name(inv)
    assert job == "restoresession-demo-pg-restore"
    assert m.push(gateway.url, job, m.restore_host_metrics(inv, PG, [host("host-0")]),
                  grouping=m.host_grouping("host-0"))
    assert m.push(gateway.url, job, m.restore_session_metrics(inv, [m.TargetOutcome(PG, True, 1)],
                                                              duration_seconds=30))
    hl = {**invoker_labels(inv), **target_labels(), "hostname": "host-0", "job": job, "instance": ""}
    fams = group(gateway, job, hostname="host-0")
    assert set(fams) - GATEWAY_OWN == pushed(R + "host_restore_success", R + "host_restore_duration_seconds")
    check_family(fams, R + "host_restore_success", hl, 1)
    check_family(fams, R + "host_restore_duration_seconds", hl, 14.5)
    sl = {**invoker_labels(inv), "job": job, "instance": ""}
    fams = group(gateway, job)
    assert set(fams) - GATEWAY_OWN == pushed(*(R + n for n in ("success", "duration_seconds", "target_count_total",
                                                                "target_success", "target_host_count_total")))
    check_family(fams, R + "success", sl, 1)
    check_family(fams, R + "duration_seconds", sl, 30)
    check_family(fams, R + "target_count_total", sl, 1)
    check_family(fams, R + "target_success", {**sl, **target_labels()}, 1)
    check_family(fams, R + "target_host_count_total", {**sl, **target_labels()}, 1)

    # a failed restore: the success gauges go to 0
    assert m.push(gateway.url, job, m.restore_host_metrics(inv, PG, [host("host-0", ok=False)]),
                  grouping=m.host_grouping("host-0"))
    assert m.push(gateway.url, job, m.restore_session_metrics(inv, [m.TargetOutcome(PG, False)],
                                                              duration_seconds=1))
    assert only(group(gateway, job, hostname="host-0")[R + "host_restore_success"])[1] == 0
    fams = group(gateway, job)
    assert only(fams[R + "success"])[1] == 0
    assert only(fams[R + "target_success"])[1] == 0


# -- repository ----------------------------------------------------------------------------------

def test_repository_metrics(gateway):
    inv = invoker("pg-repo")
    job = m.job_name(inv)
    repo = m.RepositoryInfo.from_spec("gcs-repo", "stash-repos", BackendSpec("gcs", bucket="backups",
                                                                            prefix="demo/pg"))
    forget = ForgetResult(Policy(last=3), ("host", "paths"), False, removed=["a" * 64, "b" * 64])
    post = PostBackup(retention=RetentionOutcome(forget), stats=RepoStats(snapshots=3, raw_data=987_654_321),
                      integrity=True)
    assert m.push(gateway.url, job, m.repository_metrics(inv, repo, post))
    # the Repository's name and namespace replace the invoker's
    labels = {"invoker_kind": "BackupConfiguration", "invoker_name": "pg-repo", "driver": "Restic",
              "repository": "gcs-repo", "name": "gcs-repo", "namespace": "stash-repos", "backend": "gcs",
              "bucket": "backups", "prefix": "demo/pg", "job": job, "instance": ""}
    fams = group(gateway, job)
    assert set(fams) - GATEWAY_OWN == pushed(*(REPO + n for n in ("integrity", "size_bytes", "snapshot_count",
                                                                   "snapshot_cleaned")))
    check_family(fams, REPO + "integrity", labels, 1)
    check_family(fams, REPO + "size_bytes", labels, 987_654_321)
    check_family(fams, REPO + "snapshot_count", labels, 3)
    check_family(fams, REPO + "snapshot_cleaned", labels, 2)

    # no integrity check ran (Stash: nil -> 0); figures unknown: the last pushed ones stay
    assert m.push(gateway.url, job, m.repository_metrics(inv, repo, PostBackup()))
    fams = group(gateway, job)
    assert only(fams[REPO + "integrity"])[1] == 0
    assert only(fams[REPO + "snapshot_cleaned"])[1] == 0
    assert only(fams[REPO + "size_bytes"])[1] == 987_654_321


# -- a gateway that is down or refuses -----------------------------------------------------------

def test_gateway_down_returns_false_and_logs_one_line(caplog):
    url = f"http://metrics-user:Pgw-Secret-1@127.0.0.1:{free_port()}"  # nothing listens there
    reg = m.backup_host_metrics(invoker("pg-down"), PG, [host()])
    caplog.set_level(logging.DEBUG, logger="stash_runner")
    started = time.monotonic()
    assert m.push(url, "backupconfiguration-demo-pg-down", reg, timeout=5) is False
    assert time.monotonic() - started < 3
    records = [r for r in caplog.records if r.name.startswith("stash_runner")]
    assert len(records) == 1 and records[0].levelno == logging.WARNING
    line = records[0].getMessage()
    assert "\n" not in line and "backupconfiguration-demo-pg-down" in line and "127.0.0.1" in line
    assert "Pgw-Secret-1" not in line and "metrics-user" not in line


class AsCounter:
    """host_backup_success as a counter: a type the gauge already in the gateway conflicts with."""

    def collect(self) -> list[Metric]:
        fam = Metric(B + "host_backup_success", "x", "counter")
        fam.add_sample(B + "host_backup_success", {"hostname": "host-0"}, 1)
        return [fam]


def test_gateway_refusing_the_push_returns_false(gateway, caplog):
    job = m.job_name(invoker("pg-refused"))
    assert m.push(gateway.url, job, m.backup_host_metrics(invoker("pg-refused"), PG, [host()]),
                  grouping=m.host_grouping("host-0"))
    before = group(gateway, job, hostname="host-0")
    # in another group, the same name as a counter is inconsistent with that gauge: the gateway answers 400
    reg = CollectorRegistry()
    reg.register(AsCounter())
    caplog.set_level(logging.WARNING, logger="stash_runner")
    assert m.push(gateway.url, job, reg) is False
    assert len([r for r in caplog.records if r.name.startswith("stash_runner")]) == 1
    assert "400" in caplog.records[-1].getMessage()
    assert group(gateway, job, hostname="host-0") == before


def test_no_secret_reaches_the_gateway(gateway, caplog):
    """Credentials of the Pushgateway URL, of a rest backend's URL, and the repository password stay out."""
    pgw_password = "Pgw-Secret-2"
    url = gateway.url.replace("http://", f"http://metrics-user:{pgw_password}@")
    spec = BackendSpec("rest", bucket=f"https://stash:{RESTIC_PASSWORD}@rest.example:8000/demo/pg")
    inv = invoker("pg-secrets")
    job = m.job_name(inv)
    caplog.set_level(logging.DEBUG, logger="stash_runner")
    post = PostBackup(stats=RepoStats(snapshots=1, raw_data=10), integrity=True)
    assert m.push(url, job, m.repository_metrics(inv, m.RepositoryInfo.from_spec("rest-repo", "demo", spec), post))
    assert m.push(url, job, m.backup_host_metrics(inv, PG, [host()]), grouping=m.host_grouping("host-0"))
    text = exposition(gateway)
    api = str(groups(gateway))
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for secret in (RESTIC_PASSWORD, pgw_password, "metrics-user"):
        assert secret not in text and secret not in api and secret not in logged
    values = [v for f in text_string_to_metric_families(text) for s in f.samples if s.labels.get("job") == job
              for v in s.labels.values()]
    assert values and not [v for v in values if "@" in v or "password" in v.lower() or "://" in v]
    labels, _ = only(group(gateway, job)[REPO + "integrity"])
    assert labels["bucket"] == "rest.example:8000" and labels["prefix"] == "/demo/pg"
