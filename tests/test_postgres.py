"""End to end through the CLI on real PostgreSQL clusters, with restic as the judge."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from .helpers import REPO_PASSWORD, normalize_dump, objects_yaml, restic, runner
from .pgcluster import bulk_cluster, free_port
from .test_engine import dir_size

NS = ["-n", "demo"]


def backup(objects: str, *extra: str, check: bool = True):
    return runner("backup", "--objects", objects, *NS, "--appbinding", "pg", "--repository", "repo", *extra,
                  check=check)


def restore(objects: str, *extra: str, check: bool = True):
    return runner("restore", "--objects", objects, *NS, "--appbinding", "pg", "--repository", "repo", *extra,
                  check=check)


def snapshot_count(repo_dir: str) -> int:
    if not os.path.exists(os.path.join(repo_dir, "snapshots")):
        return 0
    return len(os.listdir(os.path.join(repo_dir, "snapshots")))


def packs(repo_dir: str) -> set[str]:
    return {f for _, _, files in os.walk(os.path.join(repo_dir, "data")) for f in files}


@pytest.fixture(scope="module")
def bulk_pg(workdir):
    """A cluster whose dump is ~250 MB, so that a backup can be interrupted part-way."""
    yield from bulk_cluster(workdir, "bulk-pg", 250)


def test_backup_is_restic_valid_and_byte_exact(source_pg, repo_dir, tmp_path):
    objects = objects_yaml(str(tmp_path / "o.yaml"), cluster=source_pg, repo_dir=repo_dir)
    r = backup(objects, "--output-dir", str(tmp_path / "out"), "--tag", "nightly")
    assert b"snapshot " in r.stderr and b"saved for host-0" in r.stderr
    restic(repo_dir, "check", "--read-data")
    ours = restic(repo_dir, "dump", "latest", "/dumpfile.sql").stdout
    assert normalize_dump(ours) == normalize_dump(source_pg.pg_dumpall())
    snaps = json.loads(restic(repo_dir, "snapshots", "--json").stdout)
    assert snaps[0]["hostname"] == "host-0" and snaps[0]["tags"] == ["nightly"]
    # Stash's output.json shape
    out = json.loads((tmp_path / "out" / "output.json").read_text())
    host = out["targetStatus"]["stats"][0]
    assert out["targetStatus"]["ref"] == {"apiVersion": "appcatalog.appscode.com/v1alpha1",
                                          "kind": "AppBinding", "name": "pg"}
    assert host["hostname"] == "host-0" and host["phase"] == "Succeeded" and host["duration"].endswith("s")
    assert host["snapshots"][0]["name"] == snaps[0]["id"]
    assert host["snapshots"][0]["path"] == "/dumpfile.sql"
    assert host["snapshots"][0]["totalSize"].endswith("MiB") and host["snapshots"][0]["uploaded"]
    # our own listing and dump agree with restic
    ours_json = json.loads(runner("snapshots", "--objects", objects, *NS, "--repository", "repo", "--json",
                                  check=True).stdout)
    assert [s["id"] for s in ours_json] == [s["id"] for s in snaps]
    assert runner("dump", "--objects", objects, *NS, "--repository", "repo", "latest", check=True).stdout == ours
    # secrets appear nowhere we print
    everything = r.stderr + (tmp_path / "out" / "output.json").read_bytes()
    assert source_pg.password.encode() not in everything and REPO_PASSWORD.encode() not in everything


def test_restore_into_fresh_cluster(source_pg, fresh_pg, repo_dir, tmp_path):
    backup(objects_yaml(str(tmp_path / "src.yaml"), cluster=source_pg, repo_dir=repo_dir))
    target = fresh_pg()
    objects = objects_yaml(str(tmp_path / "dst.yaml"), cluster=target, repo_dir=repo_dir)
    restore(objects, "--output-dir", str(tmp_path / "out"))
    assert target.contents() == source_pg.contents()
    # the target kept its own superuser password (the dump's ALTER ROLE postgres ... PASSWORD was dropped)
    with target.connect() as c:
        assert c.execute("SELECT 1").fetchone() == (1,)
    out = json.loads((tmp_path / "out" / "output.json").read_text())
    assert out["targetStatus"]["stats"][0]["phase"] == "Succeeded"
    # A second restore would overwrite what the first wrote: it fails before writing anything, naming it.
    before = target.contents()
    r = restore(objects, check=False)
    assert r.returncode == 2, r.stderr
    assert b"already has what the dump creates: database shop; in database postgres: table public.notes" in r.stderr
    assert b"Traceback" not in r.stderr and target.contents() == before


def test_restore_of_a_snapshot_written_by_restic(source_pg, fresh_pg, tmp_path):
    repo_dir = str(tmp_path / "restic-repo")
    restic(repo_dir, "init")
    dump = subprocess.run(["pg_dumpall"], env=source_pg.env(), check=True, capture_output=True).stdout
    restic(repo_dir, "backup", "--stdin", "--stdin-filename", "dumpfile.sql", "--host", "host-0", input=dump)
    target = fresh_pg()
    restore(objects_yaml(str(tmp_path / "o.yaml"), cluster=target, repo_dir=repo_dir))
    assert target.contents() == source_pg.contents()


def test_stash_addon_flags(source_pg, fresh_pg, tmp_path):
    """backup-pg/restore-pg with a Stash Function's args (and --secret-dir for a mounted secret)."""
    repo_dir = str(tmp_path / "repo")
    objects = objects_yaml(str(tmp_path / "o.yaml"), cluster=source_pg)
    storage = objects_yaml(str(tmp_path / "s.yaml"), repo_dir=repo_dir)
    runner("backup-pg", "--objects", objects, "--objects", storage, "--provider=local", "--bucket=",
           f"--path={repo_dir}", "--storage-secret-name=repo-secret", "--storage-secret-namespace=demo",
           "--namespace=demo", "--appbinding=pg", "--hostname=host-0", "--backup-cmd=pg_dumpall", "--pg-args=",
           "--enable-cache=true", "--max-connections=0", "--retention-keep-last=0", "--retention-prune=false",
           "--backupsession=", "--wait-timeout=30", f"--output-dir={tmp_path / 'out'}", check=True)
    restic(repo_dir, "check")
    target = fresh_pg()
    secret_dir = tmp_path / "secret"
    secret_dir.mkdir()
    (secret_dir / "RESTIC_PASSWORD").write_text(REPO_PASSWORD)
    runner("restore-pg", "--objects", objects_yaml(str(tmp_path / "t.yaml"), cluster=target),
           "--provider=local", f"--path={repo_dir}", f"--secret-dir={secret_dir}", "--appbinding=pg",
           "--appbinding-namespace=demo", "--snapshot=latest", "--source-hostname=host-0", "--restoresession=",
           check=True)
    assert target.contents() == source_pg.contents()


def test_pg_dump_of_one_database(source_pg, fresh_pg, tmp_path):
    repo_dir = str(tmp_path / "repo")
    objects = objects_yaml(str(tmp_path / "o.yaml"), cluster=source_pg, repo_dir=repo_dir)
    backup(objects, "--backup-cmd", "pg_dump", "--pg-args", "--dbname=shop --no-owner")
    target = fresh_pg()
    target.execute("CREATE DATABASE shop")
    url = f"postgresql://127.0.0.1:{target.port}/shop?sslmode=disable"
    restore(objects_yaml(str(tmp_path / "t.yaml"), cluster=target, url=url, repo_dir=repo_dir))
    src, dst = source_pg.contents(), target.contents()
    assert {k: v for k, v in dst.items() if k.startswith("shop:")} == \
           {k: v for k, v in src.items() if k.startswith("shop:")}


def test_bad_input_is_one_line_exit_2_and_writes_nothing(source_pg, tmp_path):
    repo_dir = str(tmp_path / "repo")
    no_pw = objects_yaml(str(tmp_path / "a.yaml"), cluster=source_pg, repo_dir=repo_dir, repo_password=None)
    r = backup(no_pw, check=False)
    assert r.returncode == 2
    assert r.stderr.decode().strip().splitlines() == [
        "stash-runner: error: Secret demo/repo-secret: data.RESTIC_PASSWORD is missing"]
    no_cc = objects_yaml(str(tmp_path / "b.yaml"), repo_dir=repo_dir, extra=[
        {"kind": "AppBinding", "metadata": {"name": "pg", "namespace": "demo"},
         "spec": {"type": "kubedb.com/postgres"}}])
    r = backup(no_cc, check=False)
    assert r.returncode == 2 and b"AppBinding demo/pg: spec.clientConfig is missing" in r.stderr
    r = runner("backup-pg", "--objects", no_cc, "--provider=ftp", "--storage-secret-name=repo-secret",
               "--namespace=demo", "--appbinding=pg")
    assert r.returncode == 2 and b"--provider 'ftp': unknown provider" in r.stderr
    r = backup(str(tmp_path / "missing.yaml"), check=False)
    assert r.returncode == 2 and b"no such file" in r.stderr
    assert not os.path.exists(repo_dir)


def test_unreachable_database_exit_5_repository_untouched(tmp_path):
    repo_dir = str(tmp_path / "repo")
    objects = objects_yaml(str(tmp_path / "o.yaml"), url=f"postgresql://127.0.0.1:{free_port()}/postgres",
                           pg_password="x", repo_dir=repo_dir)
    r = backup(objects, "--wait-timeout", "1", check=False)
    assert r.returncode == 5, r.stderr
    assert b"is not accepting connections after 1 s" in r.stderr
    assert not os.path.exists(repo_dir)


def test_wrong_repository_password_exit_3(source_pg, repo_dir, tmp_path):
    backup(objects_yaml(str(tmp_path / "a.yaml"), cluster=source_pg, repo_dir=repo_dir))
    before = {(d, f) for d, _, fs in os.walk(repo_dir) for f in fs}
    r = backup(objects_yaml(str(tmp_path / "b.yaml"), cluster=source_pg, repo_dir=repo_dir,
                            repo_password="wrong"), check=False)
    assert r.returncode == 3 and b"wrong password" in r.stderr
    assert {(d, f) for d, _, fs in os.walk(repo_dir) for f in fs} == before


def test_failing_dump_never_yields_a_snapshot(source_pg, repo_dir, tmp_path):
    good = objects_yaml(str(tmp_path / "a.yaml"), cluster=source_pg, repo_dir=repo_dir)
    backup(good)
    before = packs(repo_dir)
    bad = objects_yaml(str(tmp_path / "b.yaml"), cluster=source_pg, repo_dir=repo_dir, pg_password="wrong-pw")
    r = backup(bad, "--output-dir", str(tmp_path / "out"), check=False)
    assert r.returncode == 6, r.stderr
    assert b"pg_dumpall exited with code 1" in r.stderr and b"password authentication failed" in r.stderr
    assert snapshot_count(repo_dir) == 1 and packs(repo_dir) == before
    assert not os.listdir(os.path.join(repo_dir, "locks"))
    host = json.loads((tmp_path / "out" / "output.json").read_text())["targetStatus"]["stats"][0]
    assert host["phase"] == "Failed" and "password authentication failed" in host["error"]
    assert b"wrong-pw" not in r.stderr


def _start_backup(objects: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "stash_runner", "backup", "--objects", objects, *NS,
                             "--appbinding", "pg", "--repository", "repo", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for_packs(repo_dir: str, proc: subprocess.Popen, n: int = 1) -> None:
    deadline = time.monotonic() + 120
    while len(packs(repo_dir)) < n:
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.02)


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def _descendants(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                parents[int(pid)] = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            pass
    found, frontier = [], [root]
    while frontier:
        kids = [p for p, pp in parents.items() if pp in frontier]
        found.extend(kids)
        frontier = kids
    return found


def _cmdlines() -> bytes:
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    out.append(f.read())
            except OSError:
                pass
    return b"\n".join(out)


def test_sigkill_part_way_leaves_a_valid_repository(bulk_pg, repo_dir, tmp_path):
    objects = objects_yaml(str(tmp_path / "o.yaml"), cluster=bulk_pg, repo_dir=repo_dir)
    proc = _start_backup(objects)
    _wait_for_packs(repo_dir, proc, 2)
    argv = _cmdlines()  # no secret in any process's argv while the dump runs
    assert bulk_pg.password.encode() not in argv and REPO_PASSWORD.encode() not in argv
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert snapshot_count(repo_dir) == 0
    restic(repo_dir, "check", "--read-data", "--no-lock")
    backup(objects)
    restic(repo_dir, "check", "--read-data")
    assert snapshot_count(repo_dir) == 1


def test_sigterm_cleans_up(bulk_pg, repo_dir, tmp_path):
    objects = objects_yaml(str(tmp_path / "o.yaml"), cluster=bulk_pg, repo_dir=repo_dir)
    proc = _start_backup(objects, "--output-dir", str(tmp_path / "out"))
    _wait_for_packs(repo_dir, proc, 1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert b"terminated by SIGTERM" in err
    assert not os.listdir(os.path.join(repo_dir, "locks"))  # lock removed
    assert snapshot_count(repo_dir) == 0
    assert not packs(repo_dir)  # unindexed packs of the aborted run are removed
    host = json.loads((tmp_path / "out" / "output.json").read_text())["targetStatus"]["stats"][0]
    assert host["phase"] == "Failed" and "SIGTERM" in host["error"]
    restic(repo_dir, "check", "--read-data")


def test_dump_tool_killed_or_connection_lost(bulk_pg, repo_dir, tmp_path):
    objects = objects_yaml(str(tmp_path / "o.yaml"), cluster=bulk_pg, repo_dir=repo_dir)
    # the database connection is cut mid-dump
    proc = _start_backup(objects)
    _wait_for_packs(repo_dir, proc, 1)
    bulk_pg.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'stash-runner'")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 6, err
    assert b"pg_dumpall exited with code 1" in err and b"terminat" in err
    # the dump tool is killed
    proc = _start_backup(objects)
    _wait_for_packs(repo_dir, proc, 1)
    victims = [p for p in _descendants(proc.pid) if _comm(p) == "pg_dump"]
    assert victims, "no pg_dump below the runner"
    for pid in victims:  # only our own dump: other pg_dumps on the machine are left alone
        os.kill(pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 6, err
    assert b"pg_dumpall" in err
    assert snapshot_count(repo_dir) == 0
    restic(repo_dir, "check", "--read-data")


def test_second_backup_of_unchanged_database_adds_little(bulk_pg, repo_dir, tmp_path):
    objects = objects_yaml(str(tmp_path / "o.yaml"), cluster=bulk_pg, repo_dir=repo_dir)
    backup(objects)
    first = dir_size(repo_dir)
    backup(objects)
    added = dir_size(repo_dir) - first
    assert added < 0.05 * first, (added, first)
    restic(repo_dir, "check", "--read-data")


def test_globals_filter_only_touches_the_roles_section():
    from drivers.postgres import _filter_globals

    dump = (b"--\nSET x = 1;\nCREATE ROLE postgres;\nALTER ROLE postgres WITH SUPERUSER LOGIN PASSWORD 'SCRAM';\n"
            b'CREATE ROLE "We""ird";\nALTER ROLE "We""ird" WITH LOGIN PASSWORD \'keep\';\n'
            b"\\connect shop\nCOPY t (a) FROM stdin;\nCREATE ROLE x;\n\\.\n")
    expected = (b"--\nSET x = 1;\n"
                b"DO $stash_runner$ BEGIN CREATE ROLE postgres; EXCEPTION WHEN duplicate_object THEN NULL; "
                b"END $stash_runner$;\n-- stash-runner: kept the target's password for role postgres\n"
                b'DO $stash_runner$ BEGIN CREATE ROLE "We""ird"; EXCEPTION WHEN duplicate_object THEN NULL; '
                b"END $stash_runner$;\nALTER ROLE \"We\"\"ird\" WITH LOGIN PASSWORD 'keep';\n"
                b"\\connect shop\nCOPY t (a) FROM stdin;\nCREATE ROLE x;\n\\.\n")
    for split in range(1, len(dump)):  # every chunk boundary gives the same bytes
        assert b"".join(_filter_globals(iter([dump[:split], dump[split:]]), {"postgres"})) == expected
