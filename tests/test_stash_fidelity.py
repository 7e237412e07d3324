"""What the runner writes exactly as Stash's own images write it: the per-host Events of Stash's status updater
(stash pkg/status/status.go, pkg/eventer/recorder.go), checked through a recording writer and through
kube.Cluster against a real kube-apiserver (tests/kubecluster.py). The legacy metric names are pinned in
test_metrics.py."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator
from datetime import datetime

import pytest

from stash_runner.stash import metrics, reporting
from stash_runner.stash.kube import Cluster
from stash_runner.stash.output import HostResult
from stash_runner.stash.reporting import BackupReporter, Pusher, RestoreReporter, go_quote, host_event
from stash_runner.stash.sessions import BackupSession, ObjectRef, RestoreSession
from tests.kubecluster import Namespace

NS = "demo"
STASH = "stash.appscode.com"
PG_REF = ObjectRef("appcatalog.appscode.com/v1alpha1", "AppBinding", "pg")
T0 = "2026-11-22T10:00:00Z"


def backup_session_obj(name: str = "s1") -> dict:
    return {"apiVersion": f"{STASH}/v1beta1", "kind": "BackupSession",
            "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "creationTimestamp": T0},
            "spec": {"invoker": {"apiGroup": STASH, "kind": "BackupConfiguration", "name": "cfg"}}}


def restore_session_obj(name: str = "r1") -> dict:
    return {"apiVersion": f"{STASH}/v1beta1", "kind": "RestoreSession",
            "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "creationTimestamp": T0},
            "spec": {"repository": {"name": "repo"}, "target": {"ref": PG_REF.json()}}}


def ok(hostname: str = "host-0") -> HostResult:
    return HostResult(hostname, "Succeeded", 1.5)


def failed(hostname: str = "host-0", error: str = "pg_dumpall: connection refused") -> HostResult:
    return HostResult(hostname, "Failed", 1.5, error=error)


class Recorder:
    """A StatusWriter that keeps the status in memory and records the Events as written."""

    def __init__(self) -> None:
        self.status: dict[tuple[str, str, str], dict] = {}
        self.events: list[dict] = []

    def update_status(self, kind: str, namespace: str, name: str, change: Callable[[dict], dict | None]) -> dict:
        key = (kind, namespace, name)
        new = change({"status": self.status.get(key, {})})
        if new is not None:
            self.status[key] = new
        return {"status": self.status.get(key, {})}

    def event(self, obj: dict, *, reason: str, message: str, type: str = "Normal",
              component: str = "stash-runner") -> bool:
        self.events.append({"object": obj["metadata"]["name"], "reason": reason, "message": message, "type": type,
                            "component": component})
        return True


def pusher(kind: str = "BackupConfiguration", name: str = "cfg") -> Pusher:
    return Pusher(None, metrics.Invoker(kind, name, NS, repository="repo"))  # no Pushgateway: metrics off


def backup_reporter(writer, hosts: int = 1) -> BackupReporter:
    r = BackupReporter(writer, BackupSession.from_object(backup_session_obj(), NS), pusher())
    r.set_target(PG_REF, app_type="kubedb.com/postgres", total_hosts=hosts)
    r.started()
    return r


def restore_reporter(writer, hosts: int = 1) -> RestoreReporter:
    r = RestoreReporter(writer, RestoreSession.from_object(restore_session_obj(), NS),
                        pusher("RestoreSession", "r1"), metrics.Target.app_binding("pg", "kubedb.com/postgres"),
                        total_hosts=hosts)
    r.started()
    return r


# -- the constants, as in Stash's eventer -----------------------------------------------------------------------


def test_reasons_and_source_are_stashs():
    assert reporting.COMPONENT == "Status Updater"  # eventer.EventSourceStatusUpdater
    assert (reporting.REASON_HOST_BACKUP_SUCCEEDED, reporting.REASON_HOST_BACKUP_FAILED,
            reporting.REASON_HOST_RESTORE_SUCCEEDED, reporting.REASON_HOST_RESTORE_FAILED) == (
        "Host Backup Succeeded", "Host Backup Failed", "Host Restore Succeeded", "Host Restore Failed")


# -- Go's %q ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, quoted", [
    ("host-0", '"host-0"'),
    ("", '""'),
    ('a"b\\c', '"a\\"b\\\\c"'),                       # quote and backslash are backslashed
    ("tab\there\n\r\a\b\f\v", '"tab\\there\\n\\r\\a\\b\\f\\v"'),
    ("\x00\x1b\x7f", '"\\x00\\x1b\\x7f"'),            # other control bytes: \xNN, lower-case hex
    ("\x80\u00a0\u200b\u2028", '"\\u0080\\u00a0\\u200b\\u2028"'),  # unprintable runes: \uNNNN
    ("\U000e0001", '"\\U000e0001"'),
    ("é日本 😀", '"é日本 😀"'),                          # printable runes stay as they are
    ("\udcff", '"\\xff"'),                            # a byte that was not UTF-8 (surrogateescape)
    ("\ud800", '"\\xed\\xa0\\x80"'),                  # a lone surrogate: its bytes, as Go sees them
])
def test_go_quote_is_strconv_quote(text, quoted):
    assert go_quote(text) == quoted


# -- the messages, as Stash's status updater words them ---------------------------------------------------------


def test_host_event_words():
    pg = PG_REF.json()
    # backup: the succeeded message has the host unquoted (%s) and a full stop; the failed one quotes it (%q)
    assert host_event("BackupSession", ok(), pg) == (
        "Host Backup Succeeded", 'backup succeeded for host host-0 of "AppBinding"/"pg".', False)
    assert host_event("BackupSession", failed(), pg) == (
        "Host Backup Failed", 'backup failed for host "host-0" of "AppBinding"/"pg". Reason: pg_dumpall: '
                              'connection refused', True)
    # restore: no target in the message, no full stop
    assert host_event("RestoreSession", ok()) == ("Host Restore Succeeded", 'restore succeeded for host "host-0"',
                                                  False)
    assert host_event("RestoreSession", failed(error="no snapshot")) == (
        "Host Restore Failed", 'restore failed for host "host-0". Reason: no snapshot', True)
    # a target never known quotes as Stash's empty TargetRef does
    assert host_event("BackupSession", failed(error="x"))[1] == 'backup failed for host "host-0" of ""/"". Reason: x'
    # names are quoted the Go way
    assert host_event("BackupSession", failed('we"ird', "e"), {"kind": "StatefulSet", "name": "d\tb"})[1] == \
        'backup failed for host "we\\"ird" of "StatefulSet"/"d\\tb". Reason: e'


def test_messages_stay_one_line_and_bounded():
    error = "first line\n  second\tline " + "x" * 3000
    _, message, _ = host_event("BackupSession", failed(error=error), PG_REF.json())
    out = reporting.event_message(message)
    assert "\n" not in out and "\t" not in out and len(out) == reporting.MAX_EVENT_MESSAGE
    assert out.startswith('backup failed for host "host-0" of "AppBinding"/"pg". Reason: first line second line x')
    # what is on one line already goes out byte for byte (inner double spaces included)
    assert reporting.event_message('restore succeeded for host "a  b"') == 'restore succeeded for host "a  b"'
    assert reporting.event_message("a\nb") == "a b"


# -- through the reporters: one Event per host, none for the session ---------------------------------------------


def test_backup_success_writes_only_the_host_event(caplog):
    w = Recorder()
    r = backup_reporter(w, hosts=2)
    caplog.set_level(logging.INFO, logger="stash_runner")
    assert r.host_done(ok("host-0")) is False  # host-1 still running
    assert r.host_done(ok("host-1")) is True   # the last one runs the post-backup actions
    assert w.events == [
        {"object": "s1", "reason": "Host Backup Succeeded", "type": "Normal", "component": "Status Updater",
         "message": f'backup succeeded for host {h} of "AppBinding"/"pg".'} for h in ("host-0", "host-1")]


def test_backup_failure_ends_the_session_with_a_log_line_and_no_session_event(caplog):
    w = Recorder()
    r = backup_reporter(w)
    caplog.set_level(logging.INFO, logger="stash_runner")
    assert r.host_done(failed()) is False
    assert w.status[("BackupSession", NS, "s1")]["phase"] == "Failed"
    assert w.events == [{"object": "s1", "reason": "Host Backup Failed", "type": "Warning",
                         "component": "Status Updater",
                         "message": 'backup failed for host "host-0" of "AppBinding"/"pg". '
                                    'Reason: pg_dumpall: connection refused'}]
    assert "BackupSession demo/s1 failed" in [rec.getMessage() for rec in caplog.records]


def test_backup_without_a_target_still_names_the_host():
    w = Recorder()
    r = BackupReporter(w, BackupSession.from_object(backup_session_obj(), NS), pusher())
    assert r.fail(failed(error="BackupConfiguration demo/gone: not found")) is True
    assert [(e["reason"], e["type"], e["message"]) for e in w.events] == [
        ("Host Backup Failed", "Warning",
         'backup failed for host "host-0" of ""/"". Reason: BackupConfiguration demo/gone: not found')]


@pytest.mark.parametrize("result, reason, type_, message", [
    (ok(), "Host Restore Succeeded", "Normal", 'restore succeeded for host "host-0"'),
    (failed(error="snapshot deadbeef not found"), "Host Restore Failed", "Warning",
     'restore failed for host "host-0". Reason: snapshot deadbeef not found'),
])
def test_restore_writes_only_the_host_event(caplog, result, reason, type_, message):
    w = Recorder()
    r = restore_reporter(w)
    caplog.set_level(logging.INFO, logger="stash_runner")
    r.host_done(result)
    assert w.status[("RestoreSession", NS, "r1")]["phase"] == result.phase  # the session ended with this host
    assert w.events == [{"object": "r1", "reason": reason, "type": type_, "component": "Status Updater",
                         "message": message}]
    assert f"RestoreSession demo/r1 {result.phase.lower()}" in [rec.getMessage() for rec in caplog.records]


def test_offline_writes_no_events():
    r = backup_reporter(None)
    assert r.host_done(ok()) is True  # nothing to write Events to; no error either


# -- through kube.Cluster: the core/v1 Event as the API server stores it -----------------------------------------


@pytest.fixture
def cluster(kube: Namespace, tmp_path) -> Iterator[Cluster]:
    c = Cluster.connect(kube.kubeconfig(str(tmp_path / "kubeconfig")), environ={"HOSTNAME": "runner-pod-1"})
    yield c
    c.close()


def for_the_server(obj: dict) -> dict:
    """``obj`` without what the server assigns itself (uid, creationTimestamp), in the test's namespace."""
    meta = {k: v for k, v in obj["metadata"].items() if k not in ("uid", "creationTimestamp", "namespace")}
    return {**obj, "metadata": meta}


def test_events_in_the_cluster(kube: Namespace, cluster: Cluster):
    ns = kube.name
    bs_obj, rs_obj = kube.seed(for_the_server(backup_session_obj()), for_the_server(restore_session_obj()))
    uids = {"s1": bs_obj["metadata"]["uid"], "r1": rs_obj["metadata"]["uid"]}
    b = BackupReporter(cluster, BackupSession.from_object(cluster.get("BackupSession", ns, "s1"), ns), pusher())
    b.set_target(PG_REF, app_type="kubedb.com/postgres", total_hosts=2)
    b.started()
    b.host_done(ok("host-0"))
    b.host_done(failed("host-1"))
    rs = RestoreReporter(cluster, RestoreSession.from_object(cluster.get("RestoreSession", ns, "r1"), ns),
                         pusher("RestoreSession", "r1"), total_hosts=1)
    rs.started()
    rs.host_done(ok("host-0"))
    assert cluster.get("BackupSession", ns, "s1")["status"]["phase"] == "Failed"
    assert cluster.get("RestoreSession", ns, "r1")["status"]["phase"] == "Succeeded"

    events = sorted(kube.events(), key=lambda e: (e["involvedObject"]["kind"], e["message"]))
    assert [(e["involvedObject"]["kind"], e["involvedObject"]["name"], e["involvedObject"]["uid"], e["reason"],
             e["type"], e["message"]) for e in events] == [
        ("BackupSession", "s1", uids["s1"], "Host Backup Failed", "Warning",
         'backup failed for host "host-1" of "AppBinding"/"pg". Reason: pg_dumpall: connection refused'),
        ("BackupSession", "s1", uids["s1"], "Host Backup Succeeded", "Normal",
         'backup succeeded for host host-0 of "AppBinding"/"pg".'),
        ("RestoreSession", "r1", uids["r1"], "Host Restore Succeeded", "Normal",
         'restore succeeded for host "host-0"'),
    ]
    for e in events:
        assert (e["involvedObject"]["apiVersion"], e["involvedObject"]["namespace"]) == (f"{STASH}/v1beta1", ns)
        assert e["metadata"]["namespace"] == ns
        assert e["metadata"]["name"].startswith(e["involvedObject"]["name"] + ".")
        assert e["source"] == {"component": "Status Updater", "host": "runner-pod-1"}
        assert (e["reportingComponent"], e["reportingInstance"]) == ("Status Updater", "runner-pod-1")
        assert e["count"] == 1
        assert e["eventTime"] is None  # core/v1 Events as Stash's recorder writes them: first/lastTimestamp
        assert e["firstTimestamp"] == e["lastTimestamp"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", e["firstTimestamp"])
        when = datetime.fromisoformat(e["firstTimestamp"].replace("Z", "+00:00"))
        assert abs(time.time() - when.timestamp()) < 60
