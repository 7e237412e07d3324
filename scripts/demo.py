#!/usr/bin/env python3
"""Demo: a throw-away PostgreSQL with sample data, a backup into a local repository, a restore into
a fresh cluster, and a check that both hold the same data. Run with `make demo`."""

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


def main() -> int:
    work = tempfile.mkdtemp(prefix="stash-runner-demo-", dir="/tmp")
    os.chmod(work, 0o755)
    repo = os.path.join(work, "repository")
    clusters: list[PgCluster] = []
    try:
        step("start a throw-away PostgreSQL and load sample data (a role, a database, 25,000 rows)")
        source = PgCluster(os.path.join(work, "source")).start()
        clusters.append(source)
        load_sample(source)
        src_objects = objects_yaml(os.path.join(work, "source.yaml"), cluster=source, repo_dir=repo)
        print(f"objects written to {src_objects}")

        step("back up into a new local repository")
        run("backup", "--objects", src_objects, "-n", "demo", "--appbinding", "pg", "--repository", "repo",
            "--output-dir", os.path.join(work, "output"))
        run("snapshots", "--objects", src_objects, "-n", "demo", "--repository", "repo")

        step("restore into a fresh, empty cluster")
        target = PgCluster(os.path.join(work, "target")).start()
        clusters.append(target)
        dst_objects = objects_yaml(os.path.join(work, "target.yaml"), cluster=target, repo_dir=repo)
        run("restore", "--objects", dst_objects, "-n", "demo", "--appbinding", "pg", "--repository", "repo")

        step("compare the two clusters (row counts and digests of every table, and the roles)")
        a, b = source.contents(), target.contents()
        for key in sorted(a):
            print(f"  {key:<28} source={a[key]}  restored={b.get(key)}")
        if shutil.which("restic"):
            step("restic itself checks the repository")
            subprocess.run(["restic", "--no-cache", "-r", repo, "check", "--read-data"], check=True,
                           env={**os.environ, "RESTIC_PASSWORD": REPO_PASSWORD})
        if a != b:
            print("\nDEMO FAILED: the restored database differs")
            return 1
        print("\nDEMO OK: the restored database matches the source")
        return 0
    finally:
        for c in clusters:
            c.destroy()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
