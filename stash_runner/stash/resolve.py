"""From names (objects or Stash's flags) to the pieces a flow runs with: driver, backend, password.

Everything here only reads: a missing object, field or key fails before anything is written.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import drivers
from backends import Backend, open_backend
from backends.factory import SUPPORTED
from backends.retry import RetryPolicy
from backends.spec import PROVIDERS, BackendSpec
from drivers import Driver, DriverOptions, Endpoint
from stash_runner.errors import BadInput

from .objects import AppBinding, FileSource, ObjectSource, Repository, Secret

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
    #: waits for the restic repository opened ahead on a thread (flows.backup.open_ahead), for a backup
    opened: Callable[[], object] | None = field(default=None, repr=False)

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
        # Only the providers this version opens: b2, swift and rest are restic's, known but not supported here.
        raise BadInput("--provider is missing (one of: " + ", ".join(SUPPORTED) + ")")
    if provider not in PROVIDERS:
        raise BadInput(f"--provider {provider!r}: unknown provider (supported: {', '.join(SUPPORTED)})")
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


def _secret(source: ObjectSource, namespace: str, name: str | None) -> Secret | None:
    return Secret.from_object(source.get("Secret", namespace, name), namespace) if name else None


def endpoint_for(source: ObjectSource, ab: AppBinding) -> Endpoint:
    """How to reach the AppBinding's database: its clientConfig, parameters, Secret and TLS Secret. A driver
    whose database needs credentials says so when spec.secret is missing."""
    auth = _secret(source, ab.namespace, ab.secret_name)
    tls = _secret(source, ab.namespace, ab.tls_secret_name)
    return Endpoint(ref=ab.ref, host=ab.host, port=ab.port, scheme=ab.scheme, path=ab.path, query=ab.query,
                    parameters=ab.parameters, auth=auth, tls=tls, ca_bundle=ab.ca_bundle,
                    insecure_tls=ab.insecure_tls)


def driver_for(source: ObjectSource, namespace: str, appbinding: str, opts: DriverOptions) -> Driver:
    if not appbinding:
        raise BadInput("--appbinding is missing")
    ab = AppBinding.from_object(source.get("AppBinding", namespace, appbinding), namespace)
    name = opts.driver or _driver_name(ab)
    if name not in drivers.NAMES:
        raise BadInput(f"{ab.ref}: no driver for {name!r} in this version (known: {', '.join(drivers.NAMES)})")
    return drivers.driver_class(name).from_endpoint(endpoint_for(source, ab), opts)


def _driver_name(ab: AppBinding) -> str:
    if not ab.type:
        raise BadInput(f"{ab.ref}: spec.type is missing (or give --driver {'|'.join(drivers.NAMES)})")
    name = drivers.name_for_type(ab.type)
    if name is None:
        raise BadInput(f"{ab.ref}: spec.type {ab.type!r}: no driver for it in this version "
                       f"(known: {', '.join(drivers.NAMES)})")
    return name
