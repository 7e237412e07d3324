"""Start-up: the CLI imports only what the command that runs needs (issue 17: a command that opens a repository
starts in <= 0.25 s). Checked by what is in sys.modules, not by timing: the storage SDKs, the Kubernetes client, the
database clients, the metrics client and the flows stay out of `stash-runner --help` and of a command on a local
repository."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from backends.local import LocalBackend
from stash_runner.restic.repository import Repository

from .helpers import REPO_PASSWORD, objects_yaml

#: imported by no command that only reads a local repository (nor by the CLI's import, nor by --help)
HEAVY = (
    "boto3", "botocore", "google.cloud", "google.auth", "azure.storage", "azure.core", "kubernetes", "urllib3",
    "requests", "pymongo", "bson", "elasticsearch", "opensearchpy", "elastic_transport", "psycopg", "psycopg2",
    "prometheus_client", "jinja2",
    "backends.s3", "backends.gcs", "backends.azure", "drivers.postgres", "drivers.mongodb", "drivers.elasticsearch",
    "stash_runner.stash.kube", "stash_runner.stash.executor", "stash_runner.stash.metrics",
    "stash_runner.flows.backup", "stash_runner.flows.restore", "stash_runner.hooks.run",
)
#: the engine: not needed to declare the commands and their flags
ENGINE = ("cryptography", "zstandard", "yaml", "stash_runner.restic.repository", "stash_runner.maintenance.prune",
          "stash_runner.maintenance.check")

_PROBE = """
import json, sys
from stash_runner.cli.main import main
args = json.loads(sys.argv[1])
code = main(args) if args else 0
print(json.dumps({"code": code, "modules": sorted(sys.modules)}), file=sys.stderr)
"""


def _modules_after(args: list[str]) -> tuple[int, set[str]]:
    r = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(args)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stderr.strip().splitlines()[-1])
    return out["code"], set(out["modules"])


def _loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return [n for n in names if n in modules or any(m.startswith(n + ".") for m in modules)]


def test_importing_the_cli_imports_no_sdk_client_or_engine():
    _, modules = _modules_after([])
    assert not _loaded(modules, HEAVY + ENGINE)


@pytest.mark.parametrize("command", [[], ["backup"], ["restore"], ["backup-pg"], ["restore-mongo"], ["forget"],
                                     ["check"], ["update-status"], ["run-hook"]])
def test_help_imports_no_sdk_client_or_engine(command):
    code, modules = _modules_after([*command, "--help"])
    assert code == 0
    assert not _loaded(modules, HEAVY + ENGINE)


@pytest.mark.parametrize("command", [["snapshots"], ["stats"], ["check"], ["forget", "--keep-last", "1"]])
def test_a_command_on_a_local_repository_imports_no_sdk_or_client(tmp_path, command):
    repo_dir = str(tmp_path / "repo")
    Repository.init(LocalBackend(repo_dir), REPO_PASSWORD)
    objects = objects_yaml(str(tmp_path / "o.yaml"), repo_dir=repo_dir)
    code, modules = _modules_after([command[0], "--objects", objects, "-n", "demo", "--repository", "repo",
                                    *command[1:]])
    assert code == 0
    assert not _loaded(modules, HEAVY)


def test_forget_without_prune_does_not_import_prune(tmp_path):
    repo_dir = str(tmp_path / "repo")
    Repository.init(LocalBackend(repo_dir), REPO_PASSWORD)
    objects = objects_yaml(str(tmp_path / "o.yaml"), repo_dir=repo_dir)
    code, modules = _modules_after(["forget", "--objects", objects, "-n", "demo", "--repository", "repo",
                                    "--keep-last", "1"])
    assert code == 0
    assert not _loaded(modules, ("stash_runner.maintenance.prune", "stash_runner.maintenance.check"))


def test_the_clis_copies_of_constants_match_their_sources():
    # The CLI declares its flags without importing these modules (see cli/options.py, "Start-up").
    from stash_runner.cli import options
    from stash_runner.restic import compression
    from stash_runner.stash import metrics, objects

    assert options.ENV_PUSHGATEWAY_URL == metrics.ENV_PUSHGATEWAY_URL
    assert options.MAX_CONNECTIONS == objects.MAX_CONNECTIONS
    assert (options.COMPRESSION_DEFAULT_LEVEL, options.COMPRESSION_MIN_LEVEL, options.COMPRESSION_MAX_LEVEL) == (
        compression.DEFAULT_LEVEL, compression.MIN_LEVEL, compression.MAX_LEVEL)
