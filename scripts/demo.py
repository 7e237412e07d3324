#!/usr/bin/env python3
"""Demo: a throw-away PostgreSQL with sample data, a backup into a local repository, a restore into
a fresh cluster, and a check that both hold the same data; the repository and the objects file stay in
demo-run/ with the next commands to try. Run with `make demo`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.helpers import REPO_PASSWORD, objects_yaml  # noqa: E402
from tests.pgcluster import PgCluster, load_sample  # noqa: E402


def step(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def run(*args: str) -> None:
    print("$ stash-runner " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "stash_runner", *args], check=True)


def next_steps(objects: str, repo: str) -> str:
    where = f"--objects {os.path.relpath(objects)} --repository repo"
    return f"""
Left in place for you to try: the repository {os.path.relpath(repo)}/ and the objects file
{os.path.relpath(objects)} (its Secret holds the repository password; the throw-away PostgreSQL is stopped,
so these commands read the repository only):

  stash-runner snapshots {where}
  stash-runner dump      {where} latest > dumpfile.sql
  stash-runner stats     {where}
  stash-runner check     {where} --read-data
  stash-runner forget    {where} --keep-last 1 --prune
  RESTIC_PASSWORD={REPO_PASSWORD} restic -r {os.path.relpath(repo)} snapshots

To back up your own database, copy examples/local.yaml (or s3.yaml, gcs.yaml, azure.yaml), fill in its
CHANGE-ME values, and run `stash-runner backup --objects my.yaml --appbinding pg --repository repo`.
`make demo` again starts over."""


def main() -> int:
    # The repository and objects stay in the clone (demo-run/, ignored by git); the clusters live under /tmp,
    # where the postgres OS user can reach them, and are removed at the end.
    work = os.path.join(ROOT, "demo-run")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    scratch = tempfile.mkdtemp(prefix="stash-runner-demo-", dir="/tmp")
    os.chmod(scratch, 0o755)
    repo = os.path.join(work, "repository")
    clusters: list[PgCluster] = []
    try:
        step("start a throw-away PostgreSQL and load sample data (a role, a database, 25,000 rows)")
        source = PgCluster(os.path.join(scratch, "source")).start()
        clusters.append(source)
        load_sample(source)
        src_objects = objects_yaml(os.path.join(work, "objects.yaml"), cluster=source, repo_dir=repo,
                                   namespace="default")
        print(f"objects written to {os.path.relpath(src_objects)}")

        step("back up into a new local repository")
        run("backup", "--objects", src_objects, "--appbinding", "pg", "--repository", "repo",
            "--output-dir", os.path.join(work, "output"))
        run("snapshots", "--objects", src_objects, "--repository", "repo")

        step("restore into a fresh, empty cluster")
        target = PgCluster(os.path.join(scratch, "target")).start()
        clusters.append(target)
        dst_objects = objects_yaml(os.path.join(scratch, "target.yaml"), cluster=target, repo_dir=repo,
                                   namespace="default")
        run("restore", "--objects", dst_objects, "--appbinding", "pg", "--repository", "repo")

        step("compare the two clusters (row counts and digests of every table, and the roles)")
        a, b = source.contents(), target.contents()
        for key in sorted(a):
            print(f"  {key:<28} source={a[key]}  restored={b.get(key)}")
        step("restic itself checks the repository")
        subprocess.run(["restic", "--no-cache", "-r", repo, "check", "--read-data"], check=True,
                       env={**os.environ, "RESTIC_PASSWORD": REPO_PASSWORD})
        if a != b:
            print("\nDEMO FAILED: the restored database differs")
            return 1
        print("\nDEMO OK: the restored database matches the source")
        print(next_steps(src_objects, repo))
        return 0
    finally:
        for c in clusters:
            c.destroy()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
