"""examples/ and the README's "Your first backup by hand": each example objects file, its CHANGE-ME values filled
in as a user would (for the test servers: PostgreSQL, moto, fake-gcs-server, Azurite), runs the README's
commands as written — backup, snapshots, check, dump, then restore into an empty server."""

from __future__ import annotations

import os
import re
import subprocess

import pytest
import yaml

from .helpers import REPO_PASSWORD, restic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")


def readme_block(marker: str) -> str:
    with open(os.path.join(ROOT, "README.md")) as f:
        m = re.search(rf"<!-- {marker} -->\s*```sh\n(.*?)```", f.read(), re.S)
    assert m, f"README has no block marked <!-- {marker} -->"
    return m.group(1)


def fill_in(name: str, *, url: str, password: str, storage: dict) -> dict:
    """The example as a user leaves it after editing: every CHANGE-ME replaced, the storage pointed at ours."""
    with open(os.path.join(EXAMPLES, name)) as f:
        doc = yaml.safe_load(f)
    items = {(o["kind"], o["metadata"]["name"]): o for o in doc["items"]}
    assert set(items) == {("AppBinding", "pg"), ("Secret", "pg-auth"), ("Repository", "repo"),
                          ("Secret", "repo-secret")}
    assert all("namespace" not in o["metadata"] for o in doc["items"])  # so no --namespace is needed
    items[("AppBinding", "pg")]["spec"]["clientConfig"]["url"] = url
    items[("Secret", "pg-auth")]["stringData"]["password"] = password
    backend = items[("Repository", "repo")]["spec"]["backend"]
    (provider,) = [k for k in backend if k != "storageSecretName"]
    backend[provider].update(storage.get("backend", {}))
    secret = items[("Secret", "repo-secret")]["stringData"]
    secret.update({"RESTIC_PASSWORD": REPO_PASSWORD, **storage.get("secret", {})})
    for key in storage.get("drop", ()):
        secret.pop(key)
    assert "CHANGE-ME" not in yaml.safe_dump(doc), f"{name}: a CHANGE-ME value is left"
    return doc


def run_block(marker: str, cwd, env: dict | None = None) -> str:
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", readme_block(marker)], cwd=cwd, capture_output=True,
                       env={**os.environ, **(env or {})}, timeout=600)
    out = r.stdout.decode() + r.stderr.decode()
    assert r.returncode == 0, out
    assert "Traceback" not in out
    return out


@pytest.fixture
def storages(request, tmp_path) -> dict:
    """What each example needs changed for the test servers (started only for the example asked for)."""
    name = request.param
    if name == "local.yaml":
        return {"backend": {"mountPath": str(tmp_path / "backups")}, "restic": str(tmp_path / "backups" / "pg")}
    if name == "s3.yaml":
        s3 = request.getfixturevalue("moto_server")
        return {"backend": {"endpoint": s3.url, "bucket": "examples"}, "secret": s3.env,
                "restic": f"s3:{s3.url}/examples/stash-runner/pg", "env": s3.env}
    if name == "gcs.yaml":
        gcs = request.getfixturevalue("gcs_server")
        return {"backend": {"bucket": "examples"}, "secret": {**gcs.env, "GOOGLE_PROJECT_ID": "test"},
                "drop": ["GOOGLE_SERVICE_ACCOUNT_JSON_KEY"], "restic": None}
    az = request.getfixturevalue("azurite_server")
    return {"backend": {"container": "examples"}, "secret": dict(az.env), "restic": None}


@pytest.mark.parametrize("storages", ["local.yaml", "s3.yaml", "gcs.yaml", "azure.yaml"], indirect=True)
def test_the_readme_commands_run_with_each_example(storages, source_pg, fresh_pg, tmp_path, request):
    name = request.node.callspec.params["storages"]
    work = tmp_path / "work"
    work.mkdir()
    doc = fill_in(name, url=source_pg.url, password=source_pg.password, storage=storages)
    (work / "my.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))

    out = run_block("first-backup", work)
    assert "1 snapshots" in out and "no errors were found" in out
    assert b"PostgreSQL database cluster dump complete" in (work / "dumpfile.sql").read_bytes()
    if storages["restic"]:  # restic opens the same repository (it has no gs:/azure: emulator settings)
        restic(storages["restic"], "check", "--read-data", env=storages.get("env"))

    # "point the AppBinding's url at the server to restore into (an empty one)"
    target = fresh_pg()
    doc = fill_in(name, url=target.url, password=target.password, storage=storages)
    (work / "my.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    run_block("first-restore", work)
    assert target.contents() == source_pg.contents()
