"""update-status with the args Stash's operator generates (and older releases' spellings), offline from --objects
files: real PostgreSQL, restic as the judge of the repository, Debian's Pushgateway for the metrics."""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest
from click.testing import CliRunner

from stash_runner.cli.main import cli

from .helpers import REPO_PASSWORD, objects_yaml, restic, runner
from .pushgateway import groups

NS = "demo"
INVOKER = "pg-backup"
JOB = f"backupconfiguration-{NS}-{INVOKER}"

#: The update-status Function the operator creates (stashed/stash pkg/util/crds.go, updateStatusFunction),
#: with its pushgateway URL left as a placeholder; the operator envsubsts the rest.
OPERATOR_ARGS = [
    "update-status",
    "--provider=${REPOSITORY_PROVIDER:=}",
    "--bucket=${REPOSITORY_BUCKET:=}",
    "--endpoint=${REPOSITORY_ENDPOINT:=}",
    "--insecure-tls=${REPOSITORY_INSECURE_TLS:=}",
    "--region=${REPOSITORY_REGION:=}",
    "--path=${REPOSITORY_PREFIX:=}",
    "--enable-cache=${ENABLE_CACHE:=true}",
    "--max-connections=${MAX_CONNECTIONS:=0}",
    "--namespace=${NAMESPACE:=default}",
    "--backupsession=${BACKUP_SESSION:=}",
    "--storage-secret-name=${REPOSITORY_SECRET_NAME}",
    "--storage-secret-namespace=${REPOSITORY_SECRET_NAMESPACE}",
    "--invoker-kind=${INVOKER_KIND:=}",
    "--invoker-name=${INVOKER_NAME:=}",
    "--target-kind=${TARGET_KIND:=}",
    "--target-name=${TARGET_NAME:=}",
    "--target-namespace=${TARGET_NAMESPACE:=}",
    "--output-dir=${outputDir:=}",
    "--metrics-enabled=true",
    "--scratch-dir=/stash-tmp",
    "--metrics-pushgateway-url=PUSHGATEWAY",
]


def envsubst(text: str, env: dict[str, str]) -> str:
    """The operator's envsubst: ${VAR}, and ${VAR:=default} for unset or empty."""
    return re.sub(r"\$\{(\w+)(?::=([^}]*))?\}", lambda mt: env.get(mt.group(1)) or mt.group(2) or "", text)


def operator_args(env: dict[str, str], gateway_url: str) -> list[str]:
    return [envsubst(a, env).replace("PUSHGATEWAY", gateway_url) for a in OPERATOR_ARGS]


def operator_env(repo_dir: str, out: str, **extra: str) -> dict[str, str]:
    """What the operator sets for a BackupConfiguration's session, local Repository (Stash passes a local
    backend's mount path as the prefix, the bucket empty)."""
    return {"REPOSITORY_PROVIDER": "local", "REPOSITORY_PREFIX": repo_dir, "REPOSITORY_SECRET_NAME": "repo-secret",
            "REPOSITORY_SECRET_NAMESPACE": NS, "NAMESPACE": NS, "BACKUP_SESSION": "s1",
            "INVOKER_KIND": "BackupConfiguration", "INVOKER_NAME": INVOKER, "TARGET_KIND": "AppBinding",
            "TARGET_NAME": "pg", "TARGET_NAMESPACE": NS, "outputDir": out, **extra}


def invoker(retention: dict | None = None) -> dict:
    spec: dict = {"repository": {"name": "repo"},
                  "target": {"ref": {"apiVersion": "appcatalog.appscode.com/v1alpha1", "kind": "AppBinding",
                                     "name": "pg"}},
                  "task": {"name": "postgres-backup-16"}}
    if retention:
        spec["retentionPolicy"] = {"name": "keep", **retention}
    return {"apiVersion": "stash.appscode.com/v1beta1", "kind": "BackupConfiguration",
            "metadata": {"name": INVOKER, "namespace": NS}, "spec": spec}


def backup_session(name: str = "s1") -> dict:
    return {"apiVersion": "stash.appscode.com/v1beta1", "kind": "BackupSession",
            "metadata": {"name": name, "namespace": NS, "creationTimestamp": "2024-01-01T00:00:00Z"},
            "spec": {"invoker": {"apiGroup": "stash.appscode.com", "kind": "BackupConfiguration", "name": INVOKER}}}


def restore_session(name: str = "r1", target: str = "pg") -> dict:
    return {"apiVersion": "stash.appscode.com/v1beta1", "kind": "RestoreSession",
            "metadata": {"name": name, "namespace": NS, "creationTimestamp": "2024-01-01T00:00:00Z"},
            "spec": {"repository": {"name": "repo"}, "task": {"name": "postgres-restore-16"},
                     "target": {"ref": {"apiVersion": "appcatalog.appscode.com/v1alpha1", "kind": "AppBinding",
                                        "name": target}, "rules": [{"sourceHost": "host-0", "snapshots": []}]}}}


def snapshot_count(repo_dir: str) -> int:
    return len(json.loads(restic(repo_dir, "snapshots", "--json").stdout))


def extra_snapshot(repo_dir: str) -> None:
    """One more snapshot of host-0's /dumpfile.sql, written by restic: a retention that runs again forgets it."""
    restic(repo_dir, "backup", "--stdin", "--stdin-filename", "dumpfile.sql", "--host", "host-0",
           input=b"-- another dump\n")


def stash_output(out: str, phase: str = "Succeeded", error: str = "", snapshot: str = "") -> None:
    """output.json as Stash's own backup/restore image writes it: no marker of ours."""
    host: dict = {"hostname": "host-0", "phase": phase, "duration": "2.5s"}
    if snapshot:
        host["snapshots"] = [{"name": snapshot, "path": "/dumpfile.sql", "totalSize": "1.000 MiB",
                              "uploaded": "1.000 KiB", "processingTime": "0:02",
                              "fileStats": {"totalFiles": 1, "newFiles": 1, "modifiedFiles": 0,
                                            "unmodifiedFiles": 0}}]
    if error:
        host["error"] = error
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "output.json"), "w") as f:
        json.dump({"targetStatus": {"ref": {"apiVersion": "appcatalog.appscode.com/v1alpha1", "kind": "AppBinding",
                                            "name": "pg"}, "stats": [host]}}, f)


def read_output(out: str) -> dict:
    with open(os.path.join(out, "output.json")) as f:
        return json.load(f)


def metric(gw, job: str, name: str, **grouping: str) -> float:
    want = {"job": job, **grouping}
    for g in groups(gw):
        if g["labels"] == want and name in g:
            [series] = g[name]["metrics"]
            return float(series["value"])
    raise AssertionError(f"{name} not in group {want}")


def one_line_error(r) -> str:
    """A mismatch is one line on stderr, exit code 2."""
    err = r.stderr.decode().strip()
    assert r.returncode == 2, (r.returncode, err)
    assert len(err.splitlines()) == 1 and err.startswith("stash-runner: error: "), err
    return err


@pytest.fixture(scope="module")
def two_snapshots(source_pg, tmp_path_factory) -> str:
    """A repository holding two backups of the sample cluster (host-0, /dumpfile.sql); tests copy it."""
    base = tmp_path_factory.mktemp("two-snapshots")
    repo_dir = str(base / "repo")
    objects = objects_yaml(str(base / "o.yaml"), cluster=source_pg, repo_dir=repo_dir, namespace=NS)
    for _ in range(2):
        runner("backup", "--objects", objects, "-n", NS, "--appbinding", "pg", "--repository", "repo", check=True)
    return repo_dir


@pytest.fixture
def repo(two_snapshots, tmp_path) -> str:
    repo_dir = str(tmp_path / "repo")
    shutil.copytree(two_snapshots, repo_dir)
    return repo_dir


def session_objects(tmp_path, source_pg, repo_dir: str, *extra: dict) -> str:
    return objects_yaml(str(tmp_path / "objects.yaml"), cluster=source_pg, repo_dir=repo_dir, namespace=NS,
                        extra=[invoker({"keepLast": 1}), backup_session("s1"), *extra])


# -- the operator's args -----------------------------------------------------------------------


def test_operator_args_for_a_backup_report_it_and_run_the_post_backup_actions(source_pg, repo, tmp_path, gateway):
    """A step that did not report (Stash's image, or ours without a session: no marker): update-status, run
    with exactly the operator's args, applies the invoker's retention and checks the Repository it names."""
    objects = session_objects(tmp_path, source_pg, repo)
    out = str(tmp_path / "out")
    r = runner("backup", "--objects", objects, "-n", NS, "--appbinding", "pg", "--repository", "repo",
               "--output-dir", out, check=True)
    assert "statusReported" not in read_output(out)  # no session: nothing was reported
    assert snapshot_count(repo) == 3
    r = runner(*operator_args(operator_env(repo, out), gateway.url), "--objects", objects)
    assert r.returncode == 0, r.stderr.decode()
    log = r.stderr.decode()
    assert "retention (" in log and "check snapshots, trees and blobs" in log
    assert snapshot_count(repo) == 1
    restic(repo, "check")
    assert metric(gateway, JOB, "stash_appscode_com_backupsession_host_backup_success", hostname="host-0") == 1
    assert metric(gateway, JOB, "stash_appscode_com_repository_snapshot_count") == 1
    assert metric(gateway, JOB, "stash_appscode_com_backupsession_success") == 1


def test_operator_args_for_a_restore_name_the_restoresession_by_its_invoker(source_pg, fresh_pg, repo, tmp_path,
                                                                            gateway):
    """The operator passes an empty --backupsession= and --invoker-kind=RestoreSession --invoker-name: that is
    the restore path. Stash's image's output is reported; ours (marked) is left alone."""
    target = fresh_pg()
    objects = objects_yaml(str(tmp_path / "objects.yaml"), cluster=target, repo_dir=repo, namespace=NS,
                           extra=[restore_session("r1"), restore_session("r2")])
    env = operator_env(repo, "", BACKUP_SESSION="", INVOKER_KIND="RestoreSession")

    stash_image = str(tmp_path / "stash-image")
    stash_output(stash_image)
    r = runner(*operator_args({**env, "INVOKER_NAME": "r1", "outputDir": stash_image}, gateway.url),
               "--objects", objects)
    assert r.returncode == 0, r.stderr.decode()
    job = f"restoresession-{NS}-r1"
    assert metric(gateway, job, "stash_appscode_com_restoresession_host_restore_success", hostname="host-0") == 1
    assert metric(gateway, job, "stash_appscode_com_restoresession_success") == 1

    ours = str(tmp_path / "ours")
    runner("restore-pg", "--restoresession=r2", f"--namespace={NS}", "--objects", objects, f"--output-dir={ours}",
           check=True)
    assert target.contents() == source_pg.contents()
    assert read_output(ours)["statusReported"] is True  # offline too
    r = runner(*operator_args({**env, "INVOKER_NAME": "r2", "outputDir": ours}, gateway.url), "--objects", objects)
    assert r.returncode == 0, r.stderr.decode()
    assert "already reported" in r.stderr.decode()


# -- the marker, offline ------------------------------------------------------------------------


def test_an_offline_session_backup_marks_its_output_so_update_status_does_not_run_retention_again(
        source_pg, repo, tmp_path, gateway):
    """A backup step run for a session from --objects files reported (metrics) and ran the post-backup actions
    itself: its output.json says so, as in a cluster, and the operator's update-status step after it neither
    applies retention nor checks the repository a second time."""
    objects = session_objects(tmp_path, source_pg, repo)
    out = str(tmp_path / "out")
    r = runner("backup-pg", "--backupsession=s1", f"--namespace={NS}", "--objects", objects, f"--output-dir={out}",
               f"--metrics-pushgateway-url={gateway.url}")
    assert r.returncode == 0, r.stderr.decode()
    assert "retention (" in r.stderr.decode()
    doc = read_output(out)
    assert doc["statusReported"] is True and doc["repository"]["snapshotCount"] == 1
    assert doc["repository"]["snapshotsRemovedOnLastCleanup"] == 2 and doc["repository"]["integrity"] is True
    assert snapshot_count(repo) == 1

    extra_snapshot(repo)  # a second run of the retention would forget one of the two
    args = [*operator_args(operator_env(repo, out), gateway.url), "--objects", objects]
    r = runner(*args)
    assert r.returncode == 0, r.stderr.decode()
    log = r.stderr.decode()
    assert "already reported and ran its post-backup actions" in log
    assert "retention (" not in log and "check snapshots, trees and blobs" not in log
    assert snapshot_count(repo) == 2
    assert not os.listdir(os.path.join(repo, "locks"))

    # The marker is what stops it: without it the same step applies the retention.
    with open(os.path.join(out, "output.json"), "w") as f:
        json.dump({k: v for k, v in doc.items() if k != "statusReported"}, f)
    r = runner(*args)
    assert r.returncode == 0, r.stderr.decode()
    assert snapshot_count(repo) == 1


def test_an_offline_session_failure_is_marked_and_update_status_still_fails(tmp_path, repo_dir):
    """A failed host was reported by the step (offline: its metrics); update-status does not report it again
    but fails the step, as after a failure in a cluster."""
    from .pgcluster import free_port

    objects = objects_yaml(str(tmp_path / "objects.yaml"), url=f"postgres://127.0.0.1:{free_port()}/postgres",
                           pg_password="x", repo_dir=repo_dir, namespace=NS,
                           extra=[invoker({"keepLast": 1}), backup_session("s1")])
    out = str(tmp_path / "out")
    r = runner("backup-pg", "--backupsession=s1", f"--namespace={NS}", "--objects", objects, f"--output-dir={out}",
               "--wait-timeout=1")
    assert r.returncode == 5, r.stderr.decode()
    doc = read_output(out)
    assert doc["statusReported"] is True and doc["targetStatus"]["stats"][0]["phase"] == "Failed"
    r = runner(*operator_args(operator_env(repo_dir, out), ""), "--objects", objects)
    assert r.returncode == 1 and "host host-0 failed" in r.stderr.decode(), r.stderr.decode()
    assert "already reported" in r.stderr.decode()


# -- older releases' spellings --------------------------------------------------------------------

#: update-status args as older operators wrote them ({repo}, {out}, {secret}: filled in per test)
OLD_BACKUP_ARGS = {
    # stashed/stash pkg/cmds/update-status.go @39323fb (v0.9.0-rc), its e2e Function test/e2e/framework
    "v0.9.0-rc": ["--namespace=demo", "--repository=repo", "--backup-session=s1", "--restore-session=",
                  "--output-dir={out}", "--enable-status-subresource=false"],
    # stashed/docs docs/reference/operator/stash_update-status.md (v0.9): cobra's bare bool flag
    "v0.9": ["--namespace=demo", "--repository=repo", "--backupsession=s1", "--restoresession=",
             "--target-kind=AppBinding", "--target-name=pg", "--output-dir={out}", "--metrics-enabled",
             "--prom-job-name="],
    # stashed/website v2020.10.29 .. v2021.11.24 reference (v0.11.4 .. v0.17.0): storage flags, mounted Secret
    "v0.10-v0.17": ["--provider=local", "--bucket=", "--endpoint=", "--region=", "--path={repo}",
                    "--secret-dir={secret}", "--scratch-dir=/tmp", "--enable-cache=true", "--max-connections=0",
                    "--namespace=demo", "--backupsession=s1", "--repository=repo",
                    "--invoker-kind=BackupConfiguration", f"--invoker-name={INVOKER}", "--target-kind=AppBinding",
                    "--target-name=pg", "--output-dir={out}", "--metrics-enabled=true"],
    # stashed/stash pkg/cmds/update_status.go between v0.17.0 and v0.18.0: the Secret from the Repository
    "v0.18-dev": ["--provider=local", "--bucket=", "--endpoint=", "--region=", "--path={repo}",
                  "--scratch-dir=/stash-tmp", "--enable-cache=true", "--max-connections=0", "--namespace=demo",
                  "--repo-name=repo", "--repo-namespace=demo", "--invoker-kind=BackupConfiguration",
                  f"--invoker-name={INVOKER}", "--target-kind=AppBinding", "--target-name=pg",
                  "--backupsession=s1", "--output-dir={out}", "--metrics-enabled=true", "--metrics-labels=a=b"],
    # stashed/website v2022.02.22 reference (v0.18.0): the Secret by name, no --target-namespace yet; plus the
    # empty --license-apiservice/--master every Stash spelling of ours takes
    "v0.18": ["--provider=local", "--bucket=", "--path={repo}", "--storage-secret-name=repo-secret",
              "--storage-secret-namespace=demo", "--namespace=demo", "--backupsession=s1",
              "--invoker-kind=BackupConfiguration", f"--invoker-name={INVOKER}", "--target-kind=AppBinding",
              "--target-name=pg", "--output-dir={out}", "--metrics-enabled=true", "--license-apiservice=",
              "--master="],
}


@pytest.mark.parametrize("release", sorted(OLD_BACKUP_ARGS))
def test_older_releases_spellings_for_a_backup(release, source_pg, repo, tmp_path):
    objects = session_objects(tmp_path, source_pg, repo)
    out = str(tmp_path / "out")
    stash_output(out, snapshot="deadbeef")
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "RESTIC_PASSWORD").write_text(REPO_PASSWORD)
    args = [a.format(repo=repo, out=out, secret=secret) for a in OLD_BACKUP_ARGS[release]]
    r = runner("update-status", *args, "--objects", objects)
    assert r.returncode == 0, r.stderr.decode()
    assert "retention (" in r.stderr.decode()
    assert snapshot_count(repo) == 1


@pytest.mark.parametrize("args", [
    ["--restore-session=r1", "--backup-session=", "--repository=repo"],  # v0.9.0-rc
    ["--restoresession=r1", "--backupsession=", "--repository=repo", "--metrics-enabled=false"],  # v0.9
    ["--backupsession=", "--invoker-kind=RestoreSession", "--invoker-name=r1", "--repository=repo",  # v0.10-v0.17
     "--target-kind=AppBinding", "--target-name=pg"],
], ids=["v0.9.0-rc", "v0.9", "v0.10-v0.17"])
def test_older_releases_spellings_for_a_restore(args, tmp_path):
    objects = objects_yaml(str(tmp_path / "objects.yaml"), url="postgres://127.0.0.1:1/postgres", pg_password="x",
                           namespace=NS, extra=[restore_session("r1")])
    out = str(tmp_path / "out")
    stash_output(out)
    r = runner("update-status", f"--namespace={NS}", f"--output-dir={out}", *args, "--objects", objects)
    assert r.returncode == 0, r.stderr.decode()


# -- mismatches ---------------------------------------------------------------------------------

@pytest.mark.parametrize("args, names", [
    (["--backupsession=s1", "--invoker-kind=Foo"], "--invoker-kind=Foo"),
    (["--backupsession=s1", "--invoker-kind=RestoreSession", "--invoker-name=r1"],
     "--backupsession=s1 together with --invoker-kind=RestoreSession"),
    (["--backupsession=s1", "--restoresession=r1"], "--backupsession=s1 together with --restoresession=r1"),
    (["--backupsession=", "--invoker-kind=RestoreSession", "--invoker-name=r1", "--restoresession=r2"],
     "--restoresession=r2 and --invoker-kind=RestoreSession --invoker-name=r1"),
    (["--backupsession=", "--invoker-kind=BackupConfiguration", f"--invoker-name={INVOKER}"],
     "--invoker-kind=BackupConfiguration needs --backupsession"),
    (["--backupsession=", "--invoker-kind=RestoreBatch", "--invoker-name=r1"], "--invoker-kind=RestoreBatch"),
    (["--backupsession=", "--invoker-kind=", "--invoker-name="], "no session"),
    (["--backupsession=s1", "--backup-session=s2"], "--backupsession=s1 and --backup-session=s2"),
    (["--backupsession=s1", "--invoker-kind=BackupBatch"], "--invoker-kind=BackupBatch"),
    (["--backupsession=s1", "--invoker-kind=BackupConfiguration", "--invoker-name=other"], "--invoker-name=other"),
    (["--backupsession=s1", "--repository=other"], "--repository/--repo-name demo/other"),
    (["--backupsession=s1", "--repo-name=repo", "--repo-namespace=elsewhere"], "--repository/--repo-name elsewhere/"),
    (["--backupsession=s1", "--repository=repo", "--repo-name=other"], "--repository=repo and --repo-name=other"),
    (["--backupsession=s1", "--target-name=nope"], "--target-name=nope"),
    (["--backupsession=s1", "--target-kind=Deployment"], "--target-kind=Deployment"),
    (["--backupsession=s1", "--target-namespace=other"], "--target-namespace=other"),
    (["--backupsession=s1", "--master=https://10.0.0.1:6443"], "--master=https://10.0.0.1:6443"),
    (["--backupsession=", "--invoker-kind=RestoreSession", "--invoker-name=r1", "--target-name=other"],
     "--target-name=other"),
    (["--backupsession=", "--invoker-kind=RestoreSession", "--invoker-name=r1", "--repository=other"],
     "--repository/--repo-name demo/other"),
])
def test_mismatched_flags_are_one_line_errors_naming_them(args, names, tmp_path):
    objects = objects_yaml(str(tmp_path / "objects.yaml"), url="postgres://127.0.0.1:1/postgres", pg_password="x",
                           repo_dir=str(tmp_path / "repo"), namespace=NS,
                           extra=[invoker({"keepLast": 1}), backup_session("s1"), restore_session("r1")])
    out = str(tmp_path / "out")
    stash_output(out)
    with open(os.path.join(out, "output.json")) as f:
        before = f.read()
    r = runner("update-status", f"--namespace={NS}", f"--output-dir={out}", *args, "--objects", objects)
    assert names in one_line_error(r)
    with open(os.path.join(out, "output.json")) as f:
        assert f.read() == before
    assert not os.path.exists(tmp_path / "repo")


def test_mismatches_are_found_also_when_the_step_already_reported(tmp_path):
    objects = objects_yaml(str(tmp_path / "objects.yaml"), url="postgres://127.0.0.1:1/postgres", pg_password="x",
                           namespace=NS, extra=[invoker(), backup_session("s1")])
    out = str(tmp_path / "out")
    stash_output(out)
    doc = read_output(out)
    with open(os.path.join(out, "output.json"), "w") as f:
        json.dump({**doc, "statusReported": True}, f)
    r = runner("update-status", f"--namespace={NS}", f"--output-dir={out}", "--backupsession=s1",
               "--invoker-name=someone-else", "--objects", objects)
    assert "--invoker-name=someone-else" in one_line_error(r)


# -- flags every Stash spelling takes ------------------------------------------------------------

STASH_COMMANDS = ["backup-pg", "restore-pg", "backup-mongo", "restore-mongo", "backup-es", "restore-es",
                  "update-status"]


@pytest.mark.parametrize("command", STASH_COMMANDS)
def test_every_stash_spelling_accepts_license_apiservice_and_bare_bool_flags(command):
    # --help after the flags: the parser rejects an unknown flag before --help answers
    for args in (["--license-apiservice=https://license.example"], ["--license-apiservice="],
                 ["--enable-cache", "--insecure-tls=false", "--metrics-enabled"], ["--master="]):
        r = CliRunner().invoke(cli, [command, *args, "--help"])
        assert r.exit_code == 0, (command, args, r.output)
