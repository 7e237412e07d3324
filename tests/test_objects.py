"""Reading objects from YAML: shapes kubectl writes, and one-line errors naming object and field."""

from __future__ import annotations

import pytest
import yaml

from stash_runner.errors import BadInput
from stash_runner.stash.objects import AppBinding, FileSource, Repository, Secret
from stash_runner.stash.resolve import storage_from_flags, storage_from_repository

from .helpers import b64


def write(path, docs, multi=True):
    with open(path, "w") as f:
        if multi:
            yaml.safe_dump_all(docs, f)
        else:
            yaml.safe_dump(docs, f)
    return str(path)


APPBINDING = {"apiVersion": "appcatalog.appscode.com/v1alpha1", "kind": "AppBinding",
              "metadata": {"name": "pg", "namespace": "demo"},
              "spec": {"type": "kubedb.com/postgres", "secret": {"name": "pg-auth"},
                       "clientConfig": {"service": {"name": "pg", "port": 5432, "scheme": "postgresql",
                                                    "query": "sslmode=require"}}}}


def test_multi_document_list_and_directory(tmp_path):
    d = tmp_path / "objs"
    d.mkdir()
    write(d / "a.yaml", [APPBINDING, {"apiVersion": "v1", "kind": "Secret",
                                      "metadata": {"name": "pg-auth", "namespace": "demo"},
                                      "data": {"POSTGRES_USER": b64("admin"), "POSTGRES_PASSWORD": b64("pw")}}])
    write(d / "b.yml", {"apiVersion": "v1", "kind": "List", "items": [
        {"kind": "Repository", "metadata": {"name": "r"},
         "spec": {"backend": {"local": {"mountPath": "/backup", "subPath": "pg"}, "storageSecretName": "s"}}},
        {"kind": "Secret", "metadata": {"name": "s"}, "stringData": {"RESTIC_PASSWORD": "x"}}]}, multi=False)
    src = FileSource([str(d)])
    ab = AppBinding.from_object(src.get("AppBinding", "demo", "pg"), "demo")
    assert (ab.host, ab.port, ab.query["sslmode"], ab.secret_name) == ("pg.demo.svc", 5432, "require", "pg-auth")
    secret = Secret.from_object(src.get("Secret", "demo", "pg-auth"), "demo")
    assert secret.get("username", "POSTGRES_USER") == "admin"
    assert "pw" not in repr(secret)
    storage = storage_from_repository(src, "demo", "r")  # no namespace in the file: any namespace
    assert storage.backend.location == "local:/backup/pg"


def test_url_appbinding():
    ab = AppBinding.from_object({"kind": "AppBinding", "metadata": {"name": "x"}, "spec": {
        "clientConfig": {"url": "postgresql://127.0.0.1:5433/shop?sslmode=disable"}}}, "ns")
    assert (ab.host, ab.port, ab.path, ab.query, ab.ref) == ("127.0.0.1", 5433, "/shop", {"sslmode": "disable"},
                                                            "AppBinding ns/x")


@pytest.mark.parametrize("spec, message", [
    ({}, "AppBinding demo/pg: spec.clientConfig is missing"),
    ({"clientConfig": {}}, "AppBinding demo/pg: spec.clientConfig.url or spec.clientConfig.service is missing"),
    ({"clientConfig": {"caBundle": "x"}}, "AppBinding demo/pg: spec.clientConfig.url or spec.clientConfig.service"),
    ({"clientConfig": {"service": {"port": 1}}}, "AppBinding demo/pg: spec.clientConfig.service.name is missing"),
])
def test_appbinding_errors_name_the_field(spec, message):
    with pytest.raises(BadInput, match=message.replace(".", r"\.")):
        AppBinding.from_object({"kind": "AppBinding", "metadata": {"name": "pg", "namespace": "demo"},
                                "spec": spec}, "demo")


@pytest.mark.parametrize("backend, message", [
    ({"storageSecretName": "s"}, "must name exactly one provider"),
    ({"local": {}, "storageSecretName": "s"}, "spec.backend.local.mountPath is missing"),
    ({"local": {"mountPath": "/x"}}, "spec.backend.storageSecretName is missing"),
    ({"ftp": {"host": "x"}, "storageSecretName": "s"}, "spec.backend.ftp: unknown provider"),
])
def test_repository_errors_name_the_field(backend, message):
    with pytest.raises(BadInput, match=message):
        Repository.from_object({"kind": "Repository", "metadata": {"name": "r", "namespace": "demo"},
                                "spec": {"backend": backend}}, "demo")


def test_missing_objects_and_keys(tmp_path):
    f = write(tmp_path / "o.yaml", [{"kind": "Secret", "metadata": {"name": "s", "namespace": "demo"},
                                     "data": {"OTHER": b64("x")}}])
    src = FileSource([f])
    with pytest.raises(BadInput, match="Repository demo/nope: not found"):
        storage_from_repository(src, "demo", "nope")
    with pytest.raises(BadInput, match=r"Secret demo/s: data\.RESTIC_PASSWORD is missing"):
        storage_from_flags(src, provider="local", path="/tmp/x", secret_name="s", secret_namespace="demo")
    with pytest.raises(BadInput, match="--provider 'ftp': unknown provider"):
        storage_from_flags(src, provider="ftp", secret_name="s", secret_namespace="demo")
    with pytest.raises(BadInput, match="not valid YAML"):
        FileSource([write(tmp_path / "bad.yaml", "a: [", multi=False) and _raw(tmp_path / "bad.yaml", "a: [")])


def _raw(path, text):
    path.write_text(text)
    return str(path)


def test_secret_dir(tmp_path):
    (tmp_path / "RESTIC_PASSWORD").write_text("from-a-volume\n")
    storage = storage_from_flags(None, provider="local", path=str(tmp_path / "repo"), secret_dir=str(tmp_path))
    assert storage.password == "from-a-volume"


def test_interim_volume_template_size_reaches_the_driver_as_stash_meta():
    """Stash's Elasticsearch addon writes the interim PVC's requested size to meta.txt; it is read from the
    invoker's interimVolumeTemplate (a BackupConfiguration's spec, or a BackupBatch member)."""
    from drivers import DriverOptions
    from stash_runner.stash.executor import _driver_options
    from stash_runner.stash.sessions import BackupInvoker

    template = {"metadata": {"name": "es-interim"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "2Gi"}}}}
    conf = {"apiVersion": "stash.appscode.com/v1beta1", "kind": "BackupConfiguration",
            "metadata": {"name": "es-backup", "namespace": "demo"},
            "spec": {"repository": {"name": "repo"}, "interimVolumeTemplate": template,
                     "target": {"ref": {"apiVersion": "appcatalog.appscode.com/v1alpha1", "kind": "AppBinding",
                                        "name": "es"}}}}
    invoker = BackupInvoker.from_object(conf, "demo")
    assert invoker.target().interim_volume_size == "2Gi"
    assert _driver_options(DriverOptions(), invoker.target().params, "2Gi").interim_meta == "2Gi"
    conf["spec"]["interimVolumeTemplate"] = "x"
    with pytest.raises(BadInput, match="spec.interimVolumeTemplate must be a mapping"):
        BackupInvoker.from_object(conf, "demo")
    del conf["spec"]["interimVolumeTemplate"]
    assert BackupInvoker.from_object(conf, "demo").target().interim_volume_size == ""
