"""From names (objects or Stash's flags) to the pieces a flow runs with: driver, backend, password.

Everything here only reads: a missing object, field or key fails before anything is written.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from backends import Backend, open_backend
from backends.retry import RetryPolicy
from drivers.base import Driver
from drivers.postgres import Connection, PostgresDriver

from .errors import BadInput
from .objects import PROVIDERS, AppBinding, BackendSpec, FileSource, ObjectSource, Repository, Secret

if TYPE_CHECKING:
    from .kube import Cluster


@contextlib.contextmanager
def open_objects(paths: tuple[str, ...] | list[str], kubeconfig: str = "",
                 environ: Mapping[str, str] | None = None) -> Iterator[tuple[ObjectSource, Cluster | None]]:
    """The objects' source, and the cluster to report to: ``--objects`` files (offline, nothing to report
    to), else the Kubernetes API (in-cluster, ``--kubeconfig`` or ``KUBECONFIG``)."""
    if paths:
        yield FileSource(list(paths)), None
        return
    from .kube import Cluster  # the kubernetes client takes ~0.7 s to import: offline runs do not pay it

    cluster = Cluster.connect(kubeconfig, environ=environ)
    try:
        yield cluster, cluster
    finally:
        cluster.close()


@dataclass(frozen=True)
class Storage:
    backend: Backend
    password: str = field(repr=False)
    where: str = ""
    #: the Repository it was opened from (named, or made of Stash's flags), for status and metrics
    repository: Repository | None = None

    def close(self) -> None:
        self.backend.close()


def _storage(spec: BackendSpec, secret: Secret, where: str, policy: RetryPolicy | None,
             repository: Repository | None = None) -> Storage:
    password = secret.get("RESTIC_PASSWORD")
    return Storage(open_backend(spec, secret, where, policy), password, where, repository)


def storage_from_repository(source: ObjectSource, namespace: str, name: str,
                            policy: RetryPolicy | None = None) -> Storage:
    repo = Repository.from_object(source.get("Repository", namespace, name), namespace)
    secret = Secret.from_object(source.get("Secret", repo.namespace, repo.storage_secret_name), repo.namespace)
    return _storage(repo.backend, secret, repo.ref, policy, repo)


def storage_from_flags(
    source: ObjectSource | None,
    *,
    provider: str,
    bucket: str = "",
    endpoint: str = "",
    region: str = "",
    path: str = "",
    secret_name: str = "",
    secret_namespace: str = "",
    secret_dir: str = "",
    max_connections: int = 0,
    insecure_tls: bool = False,
    policy: RetryPolicy | None = None,
    repository_name: str = "",
    namespace: str = "",
) -> Storage:
    """Stash's addon flags: --provider --bucket --path ... with the secret by name or mounted."""
    if not provider:
        raise BadInput("--provider is missing (one of: " + ", ".join(PROVIDERS) + ")")
    if provider not in PROVIDERS:
        raise BadInput(f"--provider {provider!r}: unknown provider (known: {', '.join(PROVIDERS)})")
    spec = BackendSpec(provider, bucket=bucket, prefix=path, endpoint=endpoint, region=region,
                       max_connections=max_connections, insecure_tls=insecure_tls)
    if secret_dir:
        secret = Secret.from_dir(secret_dir)
    elif secret_name:
        if source is None:
            raise BadInput("--storage-secret-name needs --objects to read the Secret from")
        secret = Secret.from_object(source.get("Secret", secret_namespace, secret_name), secret_namespace)
    else:
        raise BadInput("--storage-secret-name (or --secret-dir) is missing")
    if provider == "local" and not bucket and path:
        spec = BackendSpec(provider, bucket=path)  # Stash's local flags put the mount path in --path
    repo = Repository(namespace or secret_namespace or "default", repository_name or spec.bucket, spec,
                      secret_name) if repository_name or namespace else None
    return _storage(spec, secret, f"--provider {provider}", policy, repo)


@dataclass
class DriverOptions:
    backup_cmd: str = "pg_dumpall"
    pg_args: str = ""
    user: str = ""
    scratch_dir: str | None = None
    driver: str = ""  # empty: from the AppBinding's spec.type


def _secret(source: ObjectSource, namespace: str, name: str | None, ref: str, field_path: str) -> Secret:
    if not name:
        raise BadInput(f"{ref}: {field_path} is missing")
    return Secret.from_object(source.get("Secret", namespace, name), namespace)


def driver_for(source: ObjectSource, namespace: str, appbinding: str, opts: DriverOptions) -> Driver:
    if not appbinding:
        raise BadInput("--appbinding is missing")
    ab = AppBinding.from_object(source.get("AppBinding", namespace, appbinding), namespace)
    kind = opts.driver or _driver_kind(ab)
    if kind != "postgres":
        raise BadInput(f"{ab.ref}: no driver for {kind!r} in this version (known: postgres)")
    secret = _secret(source, ab.namespace, ab.secret_name, ab.ref, "spec.secret.name")
    tls = Secret.from_object(source.get("Secret", ab.namespace, ab.tls_secret_name), ab.namespace) \
        if ab.tls_secret_name else None
    conn = Connection.from_appbinding(ab, secret, tls, user=opts.user)
    return PostgresDriver(conn, backup_cmd=opts.backup_cmd or "pg_dumpall", pg_args=opts.pg_args,
                          scratch_dir=opts.scratch_dir)


def _driver_kind(ab: AppBinding) -> str:
    t = ab.type.lower()
    if not t:
        raise BadInput(f"{ab.ref}: spec.type is missing (or give --driver postgres)")
    if "postgres" in t:
        return "postgres"
    raise BadInput(f"{ab.ref}: spec.type {ab.type!r}: no driver for it in this version (known: postgres)")
