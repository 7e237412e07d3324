"""Objects YAML, the CLI as a subprocess, and restic as the independent judge."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys

import yaml

REPO_PASSWORD = "repo-Secret-Pass-7"
_RESTRICT = re.compile(rb"^\\(un)?restrict \S+$", re.MULTILINE)


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def objects_yaml(path: str, *, cluster=None, repo_dir: str = "", namespace: str = "demo",
                 repo_password: str | None = REPO_PASSWORD, pg_password: str | None = None,
                 appbinding: str = "pg", url: str | None = None, extra: list[dict] | None = None,
                 backend: dict | None = None, storage_secret: dict[str, str] | None = None) -> str:
    """Write AppBinding + Secrets + Repository as `kubectl get -o yaml` would (a kind: List).

    The Repository is local at ``repo_dir``, or ``backend`` (e.g. ``{"s3": {...}}``) with the
    storage Secret holding RESTIC_PASSWORD plus ``storage_secret``.
    """
    docs: list[dict] = []
    if cluster is not None or url:
        docs.append({
            "apiVersion": "appcatalog.appscode.com/v1alpha1", "kind": "AppBinding",
            "metadata": {"name": appbinding, "namespace": namespace},
            "spec": {"type": "kubedb.com/postgres", "clientConfig": {"url": url or cluster.url},
                     "secret": {"name": f"{appbinding}-auth"}},
        })
        pw = pg_password if pg_password is not None else cluster.password
        docs.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"{appbinding}-auth",
                     "namespace": namespace}, "data": {"username": b64("postgres"), "password": b64(pw)}})
    if repo_dir or backend:
        spec_backend = dict(backend or {"local": {"mountPath": repo_dir}})
        spec_backend["storageSecretName"] = "repo-secret"
        docs.append({"apiVersion": "stash.appscode.com/v1alpha1", "kind": "Repository",
                     "metadata": {"name": "repo", "namespace": namespace},
                     "spec": {"backend": spec_backend}})
        data = {"RESTIC_PASSWORD": b64(repo_password)} if repo_password is not None else {}
        data.update({k: b64(v) for k, v in (storage_secret or {}).items()})
        docs.append({"apiVersion": "v1", "kind": "Secret",
                     "metadata": {"name": "repo-secret", "namespace": namespace}, "data": data})
    docs.extend(extra or [])
    with open(path, "w") as f:
        yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": docs}, f, sort_keys=False)
    return path


def database_objects(path: str, *, app_type: str, client_config: dict, name: str, auth: dict[str, str] | None = None,
                     parameters: dict | None = None, repo_dir: str = "", namespace: str = "demo") -> str:
    """An AppBinding of ``app_type`` with its auth Secret (``auth``: key -> value) and, with ``repo_dir``, a local
    Repository and its Secret, as `kubectl get -o yaml` writes them (a kind: List)."""
    spec: dict = {"type": app_type, "clientConfig": client_config}
    docs: list[dict] = [{"apiVersion": "appcatalog.appscode.com/v1alpha1", "kind": "AppBinding",
                         "metadata": {"name": name, "namespace": namespace}, "spec": spec}]
    if auth:
        spec["secret"] = {"name": f"{name}-auth"}
        docs.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"{name}-auth", "namespace": namespace},
                     "data": {k: b64(v) for k, v in auth.items()}})
    if parameters:
        spec["parameters"] = parameters
    if repo_dir:
        docs.append({"apiVersion": "stash.appscode.com/v1alpha1", "kind": "Repository",
                     "metadata": {"name": "repo", "namespace": namespace},
                     "spec": {"backend": {"local": {"mountPath": repo_dir}, "storageSecretName": "repo-secret"}}})
        docs.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "repo-secret", "namespace": namespace},
                     "data": {"RESTIC_PASSWORD": b64(REPO_PASSWORD)}})
    with open(path, "w") as f:
        yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": docs}, f, sort_keys=False)
    return path


def runner(*args: str, check: bool = False, env: dict | None = None, timeout: float = 600,
           input: bytes | None = None) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "stash_runner", *args], capture_output=True, timeout=timeout,
                       env=env, input=input)
    if check and r.returncode != 0:
        raise AssertionError(f"stash-runner {' '.join(args)} exited {r.returncode}:\n{r.stderr.decode()}")
    return r


def restic(repo: str, *args: str, password: str = REPO_PASSWORD, check: bool = True,
           input: bytes | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``env``: extra variables, e.g. a remote repository's credentials."""
    env = {**os.environ, **(env or {}), "RESTIC_PASSWORD": password, "RESTIC_REPOSITORY": repo}
    r = subprocess.run(["restic", "--no-cache", *args], capture_output=True, env=env, input=input)
    if check and r.returncode != 0:
        raise AssertionError(f"restic {' '.join(args)} exited {r.returncode}:\n{r.stderr.decode()}")
    return r


def normalize_dump(data: bytes) -> bytes:
    """pg_dump writes a random \\restrict key on every run; everything else must match."""
    return _RESTRICT.sub(rb"\\\1restrict KEY", data)
