"""Nothing a user can do ends in a traceback (issue 16): a matrix of bad values for every option of every command
(taken from the click commands themselves) and for every object field the runner reads. Each case must exit with
its documented code (README "Exit codes"), print exactly one ``stash-runner: error:`` line naming the option, field
or path, no traceback, and leave the repository (and, where a database is involved, the database) as it was.

The matrix runs the CLI in-process (``main(argv)``) for speed; a few cases run it as a subprocess without the
root's DAC capabilities (``setpriv``), which is how a non-root pod meets an unreadable or read-only volume (the
tests run as root, and root ignores file modes)."""

from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import io
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass

import click
import pytest
import yaml

from backends.local import LocalBackend
from stash_runner.cli.main import cli, main
from stash_runner.cli.options import MAX_SECONDS
from stash_runner.cli.wiring import NAME_FLAGS
from stash_runner.restic import crypto
from stash_runner.restic.archiver import Archiver
from stash_runner.restic.repository import Repository
from stash_runner.stash import objects

from .helpers import REPO_PASSWORD, b64
from .pgcluster import free_port

NS = "demo"
ERROR = "stash-runner: error:"
# What a restore would leave behind if bad input ever got as far as the database.
LEAK_SQL = b"CREATE TABLE leaked_by_bad_input (x int);\n"
# Drop the root's capabilities to bypass file modes: a subprocess then meets modes as a non-root pod does.
AS_NON_ROOT = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"]


# -- the world the cases run against ------------------------------------------------------------------------


@dataclass
class World:
    root: str
    repo: str
    objects: str
    docs: list[dict]
    secret_dir: str
    out: str
    a_file: str
    digest: str

    def path(self, name: str) -> str:
        return os.path.join(self.root, name)


def tree_digest(path: str) -> str:
    """Names, sizes and contents of every file below ``path``, and the directories (a lock file left behind, a
    directory created, a pack written all change it)."""
    h = hashlib.sha256()
    for d, dirs, files in sorted(os.walk(path)):
        dirs.sort()
        h.update(f"d {os.path.relpath(d, path)}\n".encode())
        for f in sorted(files):
            full = os.path.join(d, f)
            with open(full, "rb") as fh:
                h.update(f"f {f} {hashlib.sha256(fh.read()).hexdigest()}\n".encode())
    return h.hexdigest()


def base_docs(repo: str, port: int) -> list[dict]:
    def appbinding(name: str, kind: str, url: str) -> dict:
        return {"apiVersion": "appcatalog.appscode.com/v1alpha1", "kind": "AppBinding",
                "metadata": {"name": name, "namespace": NS},
                "spec": {"type": f"kubedb.com/{kind}", "clientConfig": {"url": url}, "secret": {"name": "pg-auth"}}}

    return [
        appbinding("pg", "postgres", f"postgresql://127.0.0.1:{port}/postgres?sslmode=disable"),
        appbinding("mongo", "mongodb", f"mongodb://127.0.0.1:{port}/"),
        appbinding("es", "elasticsearch", f"http://127.0.0.1:{port}"),
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "pg-auth", "namespace": NS},
         "data": {"username": b64("postgres"), "password": b64("pw")}},
        {"apiVersion": "stash.appscode.com/v1alpha1", "kind": "Repository",
         "metadata": {"name": "repo", "namespace": NS},
         "spec": {"backend": {"local": {"mountPath": repo}, "storageSecretName": "repo-secret"}}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "repo-secret", "namespace": NS},
         "data": {"RESTIC_PASSWORD": b64(REPO_PASSWORD)}},
    ]


def write_docs(path: str, docs: list) -> str:
    with open(path, "w") as f:
        yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": docs}, f, sort_keys=False)
    return path


def make_repository(path: str) -> None:
    # A cheap key (scrypt N=2^10, read from the key file as restic does): hundreds of cases open the repository.
    saved, crypto.DEFAULT_SCRYPT = crypto.DEFAULT_SCRYPT, {**crypto.DEFAULT_SCRYPT, "N": 1024}
    try:
        repo = Repository.init(LocalBackend(path), REPO_PASSWORD)
    finally:
        crypto.DEFAULT_SCRYPT = saved
    repo.load_index()
    with Archiver(repo) as a:
        a.add_stream("dumpfile.sql", io.BytesIO(LEAK_SQL))
        a.commit(hostname="host-0", paths=["/dumpfile.sql"])
    # restic's init makes data/00..ff; without the empty ones the tree is hashed in a fraction of the time (a
    # writer makes the directory it needs, which the digest then sees).
    for d in os.listdir(os.path.join(path, "data")):
        with contextlib.suppress(OSError):
            os.rmdir(os.path.join(path, "data", d))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    root = str(tmp_path_factory.mktemp("bad-input"))
    repo = os.path.join(root, "repo")
    make_repository(repo)
    # A database nobody listens on: a case that got past validation would fail there (exit 5), not with exit 2.
    docs = base_docs(repo, free_port())
    objects = write_docs(os.path.join(root, "objects.yaml"), docs)
    secret_dir = os.path.join(root, "secret-dir")
    os.mkdir(secret_dir)
    with open(os.path.join(secret_dir, "RESTIC_PASSWORD"), "w") as f:
        f.write(REPO_PASSWORD)
    out = os.path.join(root, "out")
    os.mkdir(out)
    a_file = os.path.join(root, "a-file")
    with open(a_file, "w") as f:
        f.write("not a directory\n")
    return World(root, repo, objects, docs, secret_dir, out, a_file, tree_digest(repo))


# -- running the CLI in-process ------------------------------------------------------------------------------


def run_in_process(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    handler = signal.getsignal(signal.SIGTERM)
    try:
        code = main(argv)
    except BaseException as e:  # in a real run this is a traceback
        pytest.fail(f"stash-runner {' '.join(argv)}: {type(e).__name__} escaped main(): {e}")
    finally:
        signal.signal(signal.SIGTERM, handler)
    return code, capsys.readouterr().err


def assert_one_error(code: int, err: str, expected: int, names: tuple[str, ...], what: str) -> str:
    assert "Traceback" not in err, f"{what}: a traceback:\n{err}"
    errors = [line for line in err.splitlines() if line.startswith(ERROR)]
    assert len(errors) == 1, f"{what}: expected one error line, got {len(errors)}:\n{err}"
    assert code == expected, f"{what}: exit {code}, expected {expected}: {errors[0]}"
    for name in names:
        assert name in errors[0], f"{what}: {name!r} not named in: {errors[0]}"
    return errors[0]


# -- every option of every command ---------------------------------------------------------------------------


def base_argv(command: str, w: World) -> list[str]:
    """A complete invocation of each command against the world: one a bad value must stop before any work."""
    objects = ["--objects", w.objects]
    if command in ("backup", "restore"):
        return [command, *objects, "-n", NS, "--appbinding", "pg", "--repository", "repo", "--wait-timeout", "0"]
    if command.startswith(("backup-", "restore-")):
        database = command.split("-")[1]
        interim = ["--interim-data-dir", w.path("interim")] if database == "es" else []
        return [command, *objects, "--namespace", NS, "--appbinding", database, "--provider", "local",
                "--bucket", w.repo, "--storage-secret-name", "repo-secret", "--wait-timeout", "0", *interim]
    if command == "update-status":
        return [command, *objects, "--namespace", NS, "--backupsession", "s1", "--output-dir", w.out]
    if command == "run-hook":
        return [command, *objects, "--namespace", NS, "--backupsession", "s1", "--hook-type", "preBackup"]
    if command == "dump":
        return [command, *objects, "-n", NS, "--repository", "repo", "latest"]
    return [command, *objects, "-n", NS, "--repository", "repo"]


def _typed_name(param: click.Option) -> str:
    return next(o for o in param.opts if o.startswith("--"))


def _is_bool_text(param: click.Option) -> bool:
    """Stash's true/false flags: text with a bare form (``--flag`` = true) or a true/false default."""
    return param.callback is not None and getattr(param.callback, "__name__", "") == "true_or_false"


# Text flags and the values that must be refused, with the exit code and what the line must name. A value that
# is only checked against the objects (a snapshot that is not there) has the code of that check.
def _text_cases(w: World) -> dict[str, list[tuple[str, str, int, tuple[str, ...]]]]:
    long_name = "n" * 300
    name_cases = [("slash", "a/b", 2, ()), ("dot-dot", "..", 2, ()), ("newline", "a\nb", 2, ()),
                  ("huge", long_name, 2, ("300 characters",)), ("leading-dash", "-x", 2, ())]
    bad_yaml = os.path.join(w.root, "bad.yaml")
    return {
        **{flag: name_cases for flag in NAME_FLAGS},
        # (with backup's --appbinding a batch is a contradiction first; the line names the flag all the same)
        **{flag: [(label, value, code, ()) for label, value, code, _ in name_cases]
           for flag in ("backupbatch", "restorebatch")},
        "objects": [
            ("empty", "", 2, ("--objects",)),
            ("nonexistent", os.path.join(w.root, "nope.yaml"), 2, ("--objects", "nope.yaml")),
            ("not-yaml", bad_yaml, 2, (f"--objects {bad_yaml}:3:6: not valid YAML: expected the node content",)),
            ("binary", os.path.join(w.root, "binary.yaml"), 2, ("binary.yaml:1:4:", "not UTF-8")),
            ("a-list", os.path.join(w.root, "list.yaml"), 2, ("list.yaml", "not a mapping")),
            ("deep", os.path.join(w.root, "deep.yaml"), 2, ("deep.yaml", "nested too deeply")),
            ("nul-character", os.path.join(w.root, "nul.yaml"), 2, ("nul.yaml:1:6:", "#x0000")),
            ("dev-zero", "/dev/zero", 2, ("/dev/zero", "larger than")),
            ("a-directory-with-bad-yaml", os.path.join(w.root, "bad-dir"), 2, ("bad-dir", "not valid YAML")),
            ("kind-not-a-string", os.path.join(w.root, "kind.yaml"), 2, ("kind.yaml", "kind is not a string")),
            ("metadata-not-a-mapping", os.path.join(w.root, "meta.yaml"), 2, ("meta.yaml", "metadata")),
            ("items-not-a-list", os.path.join(w.root, "items.yaml"), 2, ("items.yaml", "items is not a list")),
        ],
        "hostname": [("newline", "a\nb", 2, ("--hostname",)), ("huge", "h" * 300, 2, ("--hostname",))],
        "output_dir": [("a-file", w.a_file, 2, ("--output-dir", "not a directory")),
                       ("below-a-file", os.path.join(w.a_file, "out"), 2, ("--output-dir", "not a directory"))],
        "secret_dir": [("a-file", w.a_file, 2, ("--secret-dir", "not a directory")),
                       ("nonexistent", os.path.join(w.root, "nope"), 2, ("--secret-dir", "not a directory"))],
        "provider": [("unknown", "ftp", 2, ("--provider", "'ftp'")), ("empty", "", 2, ("--provider",)),
                     ("unsupported", "b2", 2, ("'b2'", "not supported"))],
        "bucket": [("a-file", w.a_file, 4, ("local:", "not a directory"))],
        "storage_secret_name": [("absent", "nope", 2, ("Secret demo/nope", "not found"))],
        "snapshot": [("unknown-id", "feedc0de", 7, ("'feedc0de'",))],
        "backup_cmd": [("not-a-pg-tool", "rm", 2, ("--backup-cmd", "'rm'"))],
        "driver": [("unknown", "nosuch", 2, ("'nosuch'",))],
        "tool_args": [("unbalanced-quote", "'", 2, ("args",))],
        "read_data_subset": [("bad", "abc", 2, ("abc",)), ("zero-of-zero", "0/0", 2, ("0/0",)),
                             ("too-much", "101%", 2, ("101%",))],
        "keep_within": [("bad-duration", "1x", 2, ("1x",))],
        "max_unused": [("bad", "abc", 2, ("abc",)), ("negative", "-5%", 2, ("--max-unused",)),
                       ("all", "100%", 2, ("--max-unused",)), ("nan", "nan%", 2, ("--max-unused",))],
        "group_by": [("unknown", "bogus", 2, ("--group-by", "'bogus'"))],
        "metrics_pushgateway_url": [("bad-ipv6", "http://[::1", 2, ("--metrics-pushgateway-url", "not a URL")),
                                    ("bad-port", "http://gw:99999", 2, ("--metrics-pushgateway-url", "not a URL")),
                                    ("newline", "http://gw\n/x", 2, ("--metrics-pushgateway-url", "control"))],
        "max_repack_size": [("bad", "abc", 2, ("abc",))],
        "invoker_kind": [("unknown", "Foo", 2, ("--invoker-kind", "Foo"))],
        "enable_dashboard_backup": [("on", "true", 2, ("--enable-dashboard-backup",)),
                                    ("typo", "ture", 2, ("--enable-dashboard-backup",))],
        "enable_dashboard_restore": [("on", "true", 2, ("--enable-dashboard-restore",)),
                                     ("typo", "ture", 2, ("--enable-dashboard-restore",))],
    }


# Which text flags each command checks before its work: for the rest the base invocation fails elsewhere first
# (update-status and run-hook need their session before they look at storage or the database's flags).
_SESSION_COMMANDS = ("update-status", "run-hook")
# (the base names its session by --backupsession: another spelling of a session is a contradiction first)
_SESSION_FLAGS = {"objects", "output_dir", "invoker_kind",
                  *(f for f in NAME_FLAGS if f not in ("restoresession", "backup_session", "restore_session"))}
_ONLY = {
    "provider": lambda c: c.startswith(("backup-", "restore-")),
    "bucket": lambda c: c.startswith(("backup-", "restore-")),
    "storage_secret_name": lambda c: c.startswith(("backup-", "restore-")),
    "secret_dir": lambda c: c.startswith(("backup-", "restore-")),
    "snapshot": lambda c: c.startswith("restore"),
    "invoker_kind": lambda c: c in _SESSION_COMMANDS,
    "backup_cmd": lambda c: c in ("backup", "backup-pg"),
    "tool_args": lambda c: c in ("backup", "backup-pg", "restore", "restore-pg"),
    "output_dir": lambda c: c != "run-hook",  # accepted there for Stash's args, and not used
}


def _text_checked(command: str, flag: str) -> bool:
    if command in _SESSION_COMMANDS and flag not in _SESSION_FLAGS:
        return False
    return flag not in _ONLY or _ONLY[flag](command)


# Cases that cost a good part of a second each (a parser hitting its recursion limit, 64 MiB read).
_HEAVY = {("objects", "deep"), ("objects", "dev-zero")}


def option_cases(w: World) -> list[tuple[str, list[str], int, tuple[str, ...]]]:
    """(id, argv, exit code, what the line names) for every option of every command: missing value, empty, wrong
    type, out of range and hostile values, by the option's type; text flags by ``_text_cases``."""
    text = _text_cases(w)
    cases = []
    for command_name, command in sorted(cli.commands.items()):
        base = base_argv(command_name, w)
        for param in command.params:
            if not isinstance(param, click.Option) or param.hidden or param.name in ("verbose", "quiet"):
                continue
            flag = _typed_name(param)
            t = param.type
            values: list[tuple[str, list[str], int, tuple[str, ...]]] = []
            if param.is_flag and not _is_bool_text(param):
                values.append(("given-a-value", [f"{flag}=yes"], 2, (flag, "does not take a value")))
            elif _is_bool_text(param):
                values += [("not-true-or-false", [f"{flag}=maybe"], 2, (flag, "'maybe'")),
                           ("typo", [f"{flag}=ture"], 2, (flag,))]
            elif isinstance(t, click.types.IntParamType):
                values += [("missing", [flag], 2, (flag, "requires an argument")),
                           ("empty", [f"{flag}="], 2, (flag,)),
                           ("wrong-type", [flag, "abc"], 2, (flag, "'abc'")),
                           ("fraction", [flag, "1.5"], 2, (flag,))]
                if isinstance(t, click.IntRange):
                    if t.min is not None:
                        values.append(("below-range", [flag, str(t.min - 1)], 2, (flag, "range")))
                    if t.max is not None:
                        values += [("above-range", [flag, str(t.max + 1)], 2, (flag, "range")),
                                   ("huge", [flag, "9" * 40], 2, (flag, "range"))]
            elif t.name == "float":
                values += [("missing", [flag], 2, (flag, "requires an argument")),
                           ("wrong-type", [flag, "abc"], 2, (flag, "'abc'")),
                           ("negative", [f"{flag}=-1"], 2, (flag, "out of range")),
                           ("nan", [flag, "nan"], 2, (flag, "out of range")),
                           ("inf", [flag, "inf"], 2, (flag, "out of range")),
                           ("huge", [flag, "1e300"], 2, (flag, "out of range")),
                           ("above-a-year", [flag, str(MAX_SECONDS + 1)], 2, (flag, "out of range"))]
                if param.name != "wait_timeout":  # empty is the default there (Stash's ${waitTimeout:=})
                    values.append(("empty", [f"{flag}="], 2, (flag,)))
            elif isinstance(t, click.Choice):
                values += [("missing", [flag], 2, (flag, "requires an argument")),
                           ("empty", [f"{flag}="], 2, (flag,)),
                           ("unknown", [flag, "bogus"], 2, (flag, "'bogus'"))]
            else:
                values.append(("missing", [flag], 2, (flag, "requires an argument")))
                if _text_checked(command_name, param.name):
                    values += [(label, [f"{flag}={value}"], code, names or (flag,))
                               for label, value, code, names in text.get(param.name, [])]
            if command_name not in ("snapshots", "backup"):  # the same loader for every command: once is enough
                values = [v for v in values if (param.name, v[0]) not in _HEAVY]
            # (a flag without its value comes last: the base's flags before it are complete)
            cases += [(f"{command_name}:{flag}:{label}", base + tail, code, names)
                      for label, tail, code, names in values]
    return cases


def _bad_files(w: World) -> None:
    """The --objects files the text cases name."""
    def put(name: str, data: bytes) -> None:
        with open(os.path.join(w.root, name), "wb") as f:
            f.write(data)

    put("bad.yaml", b"items:\n- {a: 1,\n  b: ]\n")
    put("binary.yaml", b"abc\xff\xfe\x00garbage")
    put("list.yaml", b"- a\n- b\n")
    put("deep.yaml", b"[" * 100_000 + b"]" * 100_000)  # (libyaml's C parser would crash on this one)
    put("nul.yaml", b'a: "x\x00"\n')
    put("kind.yaml", b"kind: 5\nmetadata: {name: x}\n")
    put("meta.yaml", b"kind: Secret\nmetadata: [x]\n")
    put("items.yaml", b"kind: List\nitems: nope\n")
    os.makedirs(os.path.join(w.root, "bad-dir"), exist_ok=True)
    put(os.path.join("bad-dir", "a.yaml"), b"a: [\n")


@pytest.fixture(scope="module")
def matrix(world) -> list[tuple[str, list[str], int, tuple[str, ...]]]:
    _bad_files(world)
    return option_cases(world)


def test_the_matrix_covers_every_option_of_every_command(matrix):
    covered = {(case_id.split(":")[0], case_id.split(":")[1]) for case_id, *_ in matrix}
    missing = [(name, _typed_name(p)) for name, command in cli.commands.items() for p in command.params
               if isinstance(p, click.Option) and not p.hidden and p.name not in ("verbose", "quiet")
               and (name, _typed_name(p)) not in covered]
    assert not missing, missing
    assert len(matrix) > 900


def test_every_number_option_is_bounded():
    """No integer or seconds flag takes any value its type allows (-5 workers, nan seconds): every one has a range;
    a plain float would take nan and inf."""
    unbounded = [(name, p.name) for name, command in cli.commands.items() for p in command.params
                 if isinstance(p.type, click.types.IntParamType)
                 and (not isinstance(p.type, click.IntRange) or p.type.min is None)
                 or isinstance(p.type, click.types.FloatParamType)]
    assert not unbounded, unbounded


def test_option_matrix(world, matrix, capsys):
    """Every case in one test (hundreds of parametrized tests would cost more in pytest than the runs): the
    failures are collected and reported together."""
    failures = []
    for case_id, argv, code, names in matrix:
        try:
            got, err = run_in_process(argv, capsys)
            assert_one_error(got, err, code, names, case_id)
            assert tree_digest(world.repo) == world.digest, f"{case_id}: the repository changed"
        except AssertionError as e:
            failures.append(str(e).splitlines()[0] if "\n" not in str(e)[:300] else str(e)[:300])
    assert not failures, f"{len(failures)} of {len(matrix)} cases failed:\n" + "\n".join(failures)


# -- every object field the runner reads ---------------------------------------------------------------------


def _obj(docs: list[dict], kind: str, name: str) -> dict:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def _set(kind: str, name: str, path: str, value: object) -> Callable[[list[dict]], None]:
    """A mutation: set (or, for ``DELETE``, remove) the dotted field of one object."""
    def mutate(docs: list[dict]) -> None:
        cur = _obj(docs, kind, name)
        *parents, last = path.split(".")
        for part in parents:
            cur = cur.setdefault(part, {})
        if value is DELETE:
            cur.pop(last, None)
        else:
            cur[last] = value
    return mutate


def _drop(kind: str, name: str) -> Callable[[list[dict]], None]:
    def mutate(docs: list[dict]) -> None:
        docs.remove(_obj(docs, kind, name))
    return mutate


DELETE = object()
B = "spec.backend"
R, RS = ("Repository", "repo"), ("Secret", "repo-secret")
AB, AS = ("AppBinding", "pg"), ("Secret", "pg-auth")
CC = "spec.clientConfig"


def field_cases(w: World) -> list[tuple[str, str, Callable, int, tuple[str, ...]]]:
    """(id, command, mutation of the objects, exit code, what the line names). Repository and storage Secret
    fields are read by every repository command (``snapshots`` here), the AppBinding and its Secret by a backup,
    before the database is reached."""
    rref, sref, aref = "Repository demo/repo", "Secret demo/repo-secret", "AppBinding demo/pg"
    nowhere = w.path("no-such-dir")
    repo_cases = [
        ("spec-missing", _set(*R, "spec", DELETE), 2, (rref, "spec.backend is missing")),
        ("spec-not-a-mapping", _set(*R, "spec", "x"), 2, (rref, "spec.backend is missing")),
        ("backend-missing", _set(*R, B, DELETE), 2, (rref, "spec.backend is missing")),
        ("backend-a-string", _set(*R, B, "local"), 2, (rref, "spec.backend must be a mapping")),
        ("backend-a-list", _set(*R, B, ["local"]), 2, (rref, "spec.backend must be a mapping")),
        ("no-provider", _set(*R, B, {"storageSecretName": "repo-secret"}), 2, (rref, "exactly one provider")),
        ("two-providers", _set(*R, f"{B}.s3", {"bucket": "b"}), 2, (rref, "exactly one provider")),
        ("unknown-provider", _set(*R, B, {"ftp": {}, "storageSecretName": "repo-secret"}), 2,
         (rref, "spec.backend.ftp: unknown provider")),
        ("unsupported-provider", _set(*R, B, {"b2": {"bucket": "b"}, "storageSecretName": "repo-secret"}), 2,
         (rref, "'b2'", "not supported")),
        ("local-null", _set(*R, f"{B}.local", None), 2, (rref, "spec.backend.local is missing")),
        ("local-a-string", _set(*R, f"{B}.local", "/backup"), 2, (rref, "spec.backend.local must be a mapping")),
        ("mountPath-missing", _set(*R, f"{B}.local.mountPath", DELETE), 2, (rref, "local.mountPath is missing")),
        ("mountPath-empty", _set(*R, f"{B}.local.mountPath", ""), 2, (rref, "local.mountPath is missing")),
        ("mountPath-a-number", _set(*R, f"{B}.local.mountPath", 5), 2, (rref, "mountPath must be a string")),
        ("mountPath-a-list", _set(*R, f"{B}.local.mountPath", [w.repo]), 2, (rref, "mountPath must be a string")),
        ("mountPath-nul", _set(*R, f"{B}.local.mountPath", w.repo + "\0x"), 2, (rref, "mountPath", "control")),
        ("mountPath-newline", _set(*R, f"{B}.local.mountPath", w.repo + "\nx"), 2, (rref, "mountPath", "control")),
        ("subPath-a-number", _set(*R, f"{B}.local.subPath", 5), 2, (rref, "local.subPath must be a string")),
        ("mountPath-a-file", _set(*R, f"{B}.local.mountPath", w.a_file), 4, (f"local:{w.a_file}", "not a directory")),
        ("mountPath-below-a-file", _set(*R, f"{B}.local.mountPath", os.path.join(w.a_file, "r")), 4,
         ("local:", "not a directory")),
        ("mountPath-nonexistent", _set(*R, f"{B}.local.mountPath", nowhere), 4, (f"no repository at local:{nowhere}",)),
        ("mountPath-too-long", _set(*R, f"{B}.local.mountPath", "/" + "x" * 5000), 4, ("local:/xxx", "too long")),
        ("storageSecretName-missing", _set(*R, f"{B}.storageSecretName", DELETE), 2,
         (rref, "storageSecretName is missing")),
        ("storageSecretName-a-number", _set(*R, f"{B}.storageSecretName", 5), 2,
         (rref, "storageSecretName must be a string")),
        ("storageSecretName-absent", _set(*R, f"{B}.storageSecretName", "nope"), 2, ("Secret demo/nope: not found",)),
        ("s3-without-bucket", _set(*R, B, {"s3": {"endpoint": "http://127.0.0.1:1"},
                                           "storageSecretName": "repo-secret"}), 2,
         (rref, "spec.backend.s3.bucket is missing")),
        ("s3-bucket-a-number", _set(*R, B, {"s3": {"bucket": 5}, "storageSecretName": "repo-secret"}), 2,
         (rref, "s3.bucket must be a string")),
        ("s3-maxConnections-text", _set(*R, B, {"s3": {"bucket": "b", "maxConnections": "ten"},
                                                 "storageSecretName": "repo-secret"}), 2,
         (rref, "s3.maxConnections must be an integer")),
        ("s3-maxConnections-negative", _set(*R, B, {"s3": {"bucket": "b", "maxConnections": -1},
                                                     "storageSecretName": "repo-secret"}), 2,
         (rref, "s3.maxConnections must be from 0")),
        ("s3-maxConnections-huge", _set(*R, B, {"s3": {"bucket": "b", "maxConnections": 10**12},
                                                 "storageSecretName": "repo-secret"}), 2,
         (rref, "s3.maxConnections must be from 0")),
        ("s3-insecureTLS-text", _set(*R, B, {"s3": {"bucket": "b", "insecureTLS": "false"},
                                              "storageSecretName": "repo-secret"}), 2,
         (rref, "s3.insecureTLS must be true or false")),
        ("s3-endpoint-a-number", _set(*R, B, {"s3": {"bucket": "b", "endpoint": 5},
                                              "storageSecretName": "repo-secret"}), 2,
         (rref, "s3.endpoint must be a string")),
        ("s3-prefix-a-list", _set(*R, B, {"s3": {"bucket": "b", "prefix": ["p"]}, "storageSecretName": "repo-secret"}),
         2, (rref, "s3.prefix must be a string")),
        ("gcs-without-bucket", _set(*R, B, {"gcs": {"prefix": "p"}, "storageSecretName": "repo-secret"}), 2,
         (rref, "gcs bucket is missing")),
        ("azure-without-container", _set(*R, B, {"azure": {"prefix": "p"}, "storageSecretName": "repo-secret"}), 2,
         (rref, "spec.backend.azure.container is missing")),
        ("repository-absent", _drop(*R), 2, ("Repository demo/repo: not found",)),
        ("namespace-a-number", _set(*R, "metadata.namespace", 5), 2, ("metadata.namespace is not a string",)),
    ]
    secret_cases = [
        ("absent", _drop(*RS), 2, ("Secret demo/repo-secret: not found",)),
        ("data-a-string", _set(*RS, "data", "x"), 2, (sref, "data must be a mapping")),
        ("data-empty", _set(*RS, "data", {}), 2, (sref, "data.RESTIC_PASSWORD is missing")),
        ("password-empty", _set(*RS, "data.RESTIC_PASSWORD", ""), 2, (sref, "data.RESTIC_PASSWORD is missing")),
        ("password-not-base64", _set(*RS, "data.RESTIC_PASSWORD", "not base64!"), 2,
         (sref, "data.RESTIC_PASSWORD is not valid base64")),
        ("password-a-number", _set(*RS, "data.RESTIC_PASSWORD", 1234), 2, (sref, "RESTIC_PASSWORD must be a base64")),
        ("password-a-list", _set(*RS, "data.RESTIC_PASSWORD", ["x"]), 2, (sref, "RESTIC_PASSWORD must be a base64")),
        ("password-not-utf8", _set(*RS, "data.RESTIC_PASSWORD", base64.b64encode(b"\xff\xfe").decode()), 2,
         (sref, "data.RESTIC_PASSWORD is not UTF-8")),
        ("password-nul", _set(*RS, "data.RESTIC_PASSWORD", b64("a\0b")), 2, (sref, "RESTIC_PASSWORD contains a NUL")),
        ("stringData-a-list", _set(*RS, "stringData", ["x"]), 2, (sref, "stringData must be a mapping")),
        ("stringData-value-a-mapping", _set(*RS, "stringData", {"RESTIC_PASSWORD": {"a": 1}}), 2,
         (sref, "stringData.RESTIC_PASSWORD must be a string")),
        ("password-wrong", _set(*RS, "data.RESTIC_PASSWORD", b64("wrong")), 3, ("wrong password", f"local:{w.repo}")),
        ("password-huge", _set(*RS, "data.RESTIC_PASSWORD", b64("p" * 1_000_000)), 3, ("wrong password",)),
    ]
    ab_cases = [
        ("absent", _drop(*AB), 2, ("AppBinding demo/pg: not found",)),
        ("spec-missing", _set(*AB, "spec", DELETE), 2, (aref, "spec is missing")),
        ("spec-a-string", _set(*AB, "spec", "x"), 2, (aref, "spec must be a mapping")),
        ("clientConfig-missing", _set(*AB, CC, DELETE), 2, (aref, "spec.clientConfig is missing")),
        ("clientConfig-a-string", _set(*AB, CC, "x"), 2, (aref, "spec.clientConfig must be a mapping")),
        ("clientConfig-empty", _set(*AB, CC, {"caBundle": ""}), 2, (aref, "url or spec.clientConfig.service")),
        ("url-a-number", _set(*AB, f"{CC}.url", 5), 2, (aref, "spec.clientConfig.url must be a string")),
        ("url-no-host", _set(*AB, f"{CC}.url", "not a url"), 2, (aref, "spec.clientConfig.url has no host")),
        ("url-port-too-big", _set(*AB, f"{CC}.url", "postgresql://h:99999/x"), 2, (aref, "url is not a valid URL")),
        ("url-port-zero", _set(*AB, f"{CC}.url", "postgresql://h:0/x"), 2, (aref, "port 0 is out of range")),
        ("url-bad-ipv6", _set(*AB, f"{CC}.url", "postgresql://[::1/x"), 2, (aref, "url is not a valid URL")),
        ("url-newline", _set(*AB, f"{CC}.url", "postgresql://h/x\nInjected: 1"), 2, (aref, "url contains a control")),
        ("service-a-string", _set(*AB, CC, {"service": "pg"}), 2,
         (aref, "spec.clientConfig.service must be a mapping")),
        ("service-no-name", _set(*AB, CC, {"service": {"port": 5432}}), 2, (aref, "service.name is missing")),
        ("service-name-a-number", _set(*AB, CC, {"service": {"name": 5}}), 2, (aref, "service.name must be a string")),
        ("service-port-text", _set(*AB, CC, {"service": {"name": "pg", "port": "x"}}), 2,
         (aref, "service.port must be a number")),
        ("service-port-bool", _set(*AB, CC, {"service": {"name": "pg", "port": True}}), 2,
         (aref, "service.port must be a number")),
        ("service-port-huge", _set(*AB, CC, {"service": {"name": "pg", "port": 70000}}), 2,
         (aref, "port 70000 is out of range")),
        ("service-query-a-number", _set(*AB, CC, {"service": {"name": "pg", "query": 5}}), 2,
         (aref, "service.query must be a string")),
        ("caBundle-not-base64", _set(*AB, f"{CC}.caBundle", "not base64!"), 2, (aref, "caBundle is not valid base64")),
        ("caBundle-a-number", _set(*AB, f"{CC}.caBundle", 5), 2, (aref, "caBundle must be a string")),
        ("secret-a-string", _set(*AB, "spec.secret", "pg-auth"), 2, (aref, "spec.secret must be a mapping")),
        ("secret-name-a-number", _set(*AB, "spec.secret", {"name": 5}), 2, (aref, "spec.secret.name must be a string")),
        ("secret-absent", _set(*AB, "spec.secret", {"name": "nope"}), 2, ("Secret demo/nope: not found",)),
        ("secret-missing", _set(*AB, "spec.secret", DELETE), 2, (aref, "spec.secret.name is missing")),
        ("tlsSecret-absent", _set(*AB, "spec.tlsSecret", {"name": "nope"}), 2, ("Secret demo/nope: not found",)),
        ("type-a-number", _set(*AB, "spec.type", 5), 2, (aref, "spec.type must be a string")),
        ("type-missing", _set(*AB, "spec.type", DELETE), 2, (aref, "spec.type is missing")),
        ("type-unknown", _set(*AB, "spec.type", "kubedb.com/nosql"), 2, (aref, "'kubedb.com/nosql'")),
        ("parameters-a-string", _set(*AB, "spec.parameters", "x"), 2, (aref, "spec.parameters must be a mapping")),
        ("auth-absent", _drop(*AS), 2, ("Secret demo/pg-auth: not found",)),
        ("auth-password-not-base64", _set(*AS, "data.password", "not base64!"), 2,
         ("Secret demo/pg-auth", "data.password is not valid base64")),
        ("auth-username-not-utf8", _set(*AS, "data.username", base64.b64encode(b"\xff").decode()), 2,
         ("Secret demo/pg-auth", "data.username is not UTF-8")),
        ("auth-password-nul", _set(*AS, "data.password", b64("a\0b")), 2,
         ("Secret demo/pg-auth", "data.password contains a NUL")),
        ("auth-no-username", _set(*AS, "data", {"password": b64("pw")}), 2, ("Secret demo/pg-auth", "username")),
    ]
    return ([(f"Repository:{i}", "snapshots", m, c, n) for i, m, c, n in repo_cases]
            + [(f"storage-Secret:{i}", "snapshots", m, c, n) for i, m, c, n in secret_cases]
            + [(f"AppBinding:{i}", "backup", m, c, n) for i, m, c, n in ab_cases])


def test_object_field_matrix(world, capsys):
    failures = []
    cases = field_cases(world)
    os.makedirs(world.path("fields"), exist_ok=True)
    for case_id, command, mutate, code, names in cases:
        docs = copy.deepcopy(world.docs)
        mutate(docs)
        objects = write_docs(world.path(os.path.join("fields", case_id.replace(":", "-") + ".yaml")), docs)
        argv = base_argv(command, world)
        argv[argv.index(world.objects)] = objects
        try:
            got, err = run_in_process(argv, capsys)
            assert_one_error(got, err, code, names, case_id)
            assert tree_digest(world.repo) == world.digest, f"{case_id}: the repository changed"
            assert not os.path.exists(world.path("no-such-dir")), f"{case_id}: a repository was created"
        except AssertionError as e:
            failures.append(str(e)[:400])
    assert not failures, f"{len(failures)} of {len(cases)} cases failed:\n" + "\n".join(failures)
    assert len(cases) >= 80


# -- a real database stays as it was -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_world(world, source_pg) -> tuple[str, list[dict]]:
    """The world's objects with the AppBinding pointing at a real PostgreSQL (``source_pg``)."""
    docs = copy.deepcopy(world.docs)
    _obj(docs, *AB)["spec"]["clientConfig"]["url"] = source_pg.url
    _obj(docs, *AS)["data"]["password"] = b64(source_pg.password)
    return write_docs(world.path("pg-objects.yaml"), docs), docs


def test_bad_input_leaves_a_real_database_as_it_was(world, pg_world, source_pg, capsys):
    """Restores and backups against a database that is up: with any of these, nothing reaches it (the snapshot
    they would restore creates a table) and nothing is written to the repository."""
    objects, docs = pg_world
    restore = ["restore", "--objects", objects, "-n", NS, "--appbinding", "pg", "--repository", "repo"]
    backup = ["backup", *restore[1:]]
    restore_pg = ["restore-pg", "--objects", objects, "--namespace", NS, "--appbinding", "pg", "--provider", "local",
                  "--bucket", world.repo, "--storage-secret-name", "repo-secret"]

    def variant(name: str, mutate: Callable) -> str:
        changed = copy.deepcopy(docs)
        mutate(changed)
        return write_docs(world.path(f"pg-{name}.yaml"), changed)

    cases = [
        ("snapshot-unknown", [*restore, "--snapshot", "feedc0de"], 7, ("'feedc0de'",)),
        ("source-host-unknown", [*restore, "--source-hostname", "elsewhere"], 7, ("'elsewhere'",)),
        ("pg-args-unbalanced", [*restore, "--pg-args", "'"], 2, ("--pg-args",)),
        ("compression-level-99", [*backup, "--compression-level", "99"], 2, ("--compression-level",)),
        ("workers-0", [*backup, "--workers", "0"], 2, ("--workers",)),
        ("provider-unknown", [*restore_pg, "--provider", "ftp"], 2, ("--provider",)),
        ("mountPath-a-file", [*restore[:2], variant("file", _set(*R, f"{B}.local.mountPath", world.a_file)),
                              *restore[3:]], 4, ("not a directory",)),
        ("password-wrong", [*restore[:2], variant("wrong", _set(*RS, "data.RESTIC_PASSWORD", b64("nope"))),
                            *restore[3:]], 3, ("wrong password",)),
        ("auth-not-base64", [*restore[:2], variant("auth", _set(*AS, "data.password", "!!")), *restore[3:]], 2,
         ("data.password",)),
    ]
    before = source_pg.contents()
    failures = []
    for case_id, argv, code, names in cases:
        try:
            got, err = run_in_process(argv, capsys)
            assert_one_error(got, err, code, names, case_id)
            assert tree_digest(world.repo) == world.digest, f"{case_id}: the repository changed"
        except AssertionError as e:
            failures.append(str(e)[:400])
    assert not failures, "\n".join(failures)
    assert source_pg.contents() == before


# -- as a non-root pod: unreadable and read-only paths (subprocesses without the root's DAC capabilities) -------


def run_as_non_root(*args: str) -> tuple[int, str]:
    r = subprocess.run([*AS_NON_ROOT, sys.executable, "-m", "stash_runner", *args], capture_output=True, timeout=120)
    return r.returncode, r.stderr.decode()


@contextlib.contextmanager
def mode(path: str, bits: int):
    """``path`` with mode ``bits`` for the block (and every directory below it, for a read-only tree)."""
    saved = {p: stat.S_IMODE(os.lstat(p).st_mode) for p in _tree(path)}
    for p in saved:
        os.chmod(p, bits if p == path or not os.path.isdir(p) else bits | (saved[p] & 0o444) & ~0o222)
    try:
        yield
    finally:
        for p, m in saved.items():
            os.chmod(p, m)


def _tree(path: str) -> list[str]:
    if not os.path.isdir(path):
        return [path]
    return [path, *(os.path.join(d, n) for d, dirs, files in os.walk(path) for n in dirs + files)]


def test_unreadable_and_read_only_paths_as_a_non_root_pod(world, pg_world, source_pg, tmp_path):
    objects, docs = pg_world
    repo_args = ["-n", NS, "--repository", "repo"]
    before = source_pg.contents()

    def with_repo(path: str) -> str:
        changed = copy.deepcopy(docs)
        _set(*R, f"{B}.local.mountPath", path)(changed)
        return write_docs(str(tmp_path / f"objects-{len(os.listdir(tmp_path))}.yaml"), changed)

    failures = []

    def check(case_id: str, result: tuple[int, str], code: int, names: tuple[str, ...]) -> None:
        try:
            assert_one_error(*result, code, names, case_id)
        except AssertionError as e:
            failures.append(str(e)[:400])

    # The repository's volume may not be read: exit 8, for a command that reads and for a restore.
    with mode(world.repo, 0o000):
        check("snapshots-unreadable", run_as_non_root("snapshots", "--objects", objects, *repo_args), 8,
              (f"local:{world.repo}", "Permission denied"))
        check("restore-unreadable", run_as_non_root("restore", "--objects", objects, *repo_args, "--appbinding", "pg"),
              8, (f"local:{world.repo}", "Permission denied"))
    # Mounted read-only: a backup finds the repository but may not lock it; nothing is written.
    with mode(world.repo, 0o555):
        check("backup-read-only", run_as_non_root("backup", "--objects", objects, *repo_args, "--appbinding", "pg"), 8,
              (f"local:{world.repo}", "Permission denied"))
    assert tree_digest(world.repo) == world.digest
    # A new repository in a directory that may not be written: no repository, no directory.
    parent = tmp_path / "read-only"
    parent.mkdir()
    with mode(str(parent), 0o555):
        check("backup-new-read-only", run_as_non_root("backup", "--objects", with_repo(str(parent / "repo")),
                                                      *repo_args, "--appbinding", "pg"), 8,
              (f"local:{parent / 'repo'}", "Permission denied"))
    assert os.listdir(parent) == []
    # The objects, a mounted Secret's key, the output directory.
    unreadable = tmp_path / "unreadable.yaml"
    with open(objects) as f:
        unreadable.write_text(f.read())
    with mode(str(unreadable), 0o000):
        check("objects-unreadable", run_as_non_root("snapshots", "--objects", str(unreadable), *repo_args), 2,
              ("--objects", str(unreadable), "not readable"))
    with mode(os.path.join(world.secret_dir, "RESTIC_PASSWORD"), 0o000):
        check("secret-dir-unreadable", run_as_non_root(
            "backup-pg", "--objects", objects, "--namespace", NS, "--appbinding", "pg", "--provider", "local",
            "--bucket", world.repo, "--secret-dir", world.secret_dir), 2,
            (f"--secret-dir {world.secret_dir}", "cannot read RESTIC_PASSWORD"))
    with mode(world.out, 0o555):
        check("output-dir-read-only", run_as_non_root("backup", "--objects", objects, *repo_args, "--appbinding", "pg",
                                                      "--output-dir", world.out), 2, ("--output-dir", "not writable"))
    assert not failures, "\n".join(failures)
    assert tree_digest(world.repo) == world.digest
    assert source_pg.contents() == before


# -- the cluster's credentials --------------------------------------------------------------------------------


def test_bad_kubeconfig_is_one_line(world, capsys, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    not_yaml = world.path("bad.yaml")
    cases = [("nonexistent", world.path("nope"), ("--kubeconfig", "no such file")),
             ("a-directory", world.root, ("--kubeconfig", "not a file")),
             ("not-yaml", not_yaml, ("--kubeconfig", "not valid YAML")),
             ("a-list", world.path("list.yaml"), ("--kubeconfig", "not a kubeconfig"))]
    _bad_files(world)
    failures = []
    for case_id, path, names in cases:
        for how, argv in (("flag", ["snapshots", "--repository", "repo", "--kubeconfig", path]),
                          ("env", ["snapshots", "--repository", "repo"])):
            monkeypatch.setenv("KUBECONFIG", path)
            try:
                got, err = run_in_process(argv, capsys)
                assert_one_error(got, err, 2, names if how == "flag" else (), f"{case_id} ({how})")
            except AssertionError as e:
                failures.append(str(e)[:400])
    assert not failures, "\n".join(failures)


def test_environment_arguments_and_unknown_flags(world, capsys, monkeypatch):
    """The flags' environment variables take the same checks; the positional arguments and what is no flag at all
    are one line too."""
    snapshots = base_argv("snapshots", world)
    dump = base_argv("dump", world)[:-1]
    cases: list[tuple[str, list[str], dict[str, str], int, tuple[str, ...]]] = [
        *((f"env-timeout-{v}", snapshots, {"STASH_RUNNER_BACKEND_TIMEOUT": v}, 2, ("--backend-timeout",))
          for v in ("abc", "nan", "-1", "0", "1e300")),
        *((f"env-retries-{v}", snapshots, {"STASH_RUNNER_BACKEND_RETRIES": v}, 2, ("--backend-retries",))
          for v in ("abc", "0", "-1", "1.5")),
        ("env-pushgateway", base_argv("update-status", world), {"PROMETHEUS_PUSHGATEWAY_URL": "http://[::1"}, 2,
         ("$PROMETHEUS_PUSHGATEWAY_URL", "not a URL")),
        ("dump-unknown-snapshot", [*dump, "feedc0de"], {}, 7, ("'feedc0de'",)),
        ("dump-no-snapshot", dump, {}, 2, ("SNAPSHOT",)),
        ("dump-unknown-path", [*dump, "latest", "/nope"], {}, 7, ("/nope",)),
        ("dump-extra-argument", [*dump, "latest", "/dumpfile.sql", "more"], {}, 2, ("(more)",)),
        ("unknown-command", ["bakcup"], {}, 2, ("'bakcup'",)),
        ("unknown-option", [*snapshots, "--repo", "x"], {}, 2, ("'--repo'",)),
        ("option-of-another-command", [*snapshots, "--appbinding", "pg"], {}, 2, ("'--appbinding'",)),
    ]
    failures = []
    for case_id, argv, env, code, names in cases:
        with monkeypatch.context() as m:
            for k, v in env.items():
                m.setenv(k, v)
            try:
                got, err = run_in_process(argv, capsys)
                assert_one_error(got, err, code, names, case_id)
            except AssertionError as e:
                failures.append(str(e)[:400])
    assert not failures, "\n".join(failures)
    assert tree_digest(world.repo) == world.digest


# -- every field of every object, given every wrong type ------------------------------------------------------

SESSION_DOCS = [
    {"apiVersion": "stash.appscode.com/v1beta1", "kind": "BackupSession", "metadata": {"name": "s1", "namespace": NS},
     "spec": {"invoker": {"apiGroup": "stash.appscode.com", "kind": "BackupConfiguration", "name": "pg-backup"}}},
    {"apiVersion": "stash.appscode.com/v1beta1", "kind": "BackupConfiguration",
     "metadata": {"name": "pg-backup", "namespace": NS},
     "spec": {"task": {"name": "t", "params": [{"name": "backupCMD", "value": "pg_dumpall"}]},
              "repository": {"name": "repo"}, "timeOut": "1h",
              "target": {"ref": {"apiVersion": "appcatalog.appscode.com/v1alpha1", "kind": "AppBinding", "name": "pg"}},
              "retentionPolicy": {"name": "keep", "keepLast": 5, "prune": True}}},
    {"apiVersion": "stash.appscode.com/v1beta1", "kind": "RestoreSession", "metadata": {"name": "r1", "namespace": NS},
     "spec": {"task": {"name": "t"}, "repository": {"name": "repo"}, "timeOut": "1h",
              "target": {"ref": {"apiVersion": "appcatalog.appscode.com/v1alpha1", "kind": "AppBinding", "name": "pg"},
                         "rules": [{"snapshots": ["latest"], "sourceHost": "host-0", "targetHosts": ["host-0"]}]}}},
]
WRONG = [None, 0, -1, 10**30, 1e300, True, "", "x", "a\nb", "\0", [], ["x"], {}, {"x": 1}]


def _paths(obj: object, path: tuple = ()) -> list[tuple]:
    """Every field below ``obj`` (mappings' keys and lists' items), depth first."""
    out = [path] if path else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*path, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*path, i))
    return out


def test_every_field_of_every_object_given_every_wrong_type(world, capsys, monkeypatch):
    """Each field of the objects a session run reads (the session, its invoker, the AppBinding and its Secret, the
    Repository and its Secret), replaced by each of ``WRONG``: never a traceback or an unexpected error (exit 1), one
    line, nothing written. A value that happens to be acceptable runs on to the database nobody listens on (5)."""
    # libyaml parses these files ten times faster; the runner's own loader is the option matrix's subject.
    monkeypatch.setattr(objects, "_LOADER", getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    docs = world.docs + SESSION_DOCS
    runs = {"BackupSession": ["backup", "--backupsession", "s1"],
            "RestoreSession": ["restore", "--restoresession", "r1"]}
    targets = [(i, d) for i, d in enumerate(docs) if d["kind"] != "AppBinding" or d["metadata"]["name"] == "pg"]
    failures, count = [], 0
    path = world.path("every-field.yaml")
    for i, doc in targets:
        for field_path in _paths(doc):
            if field_path[0] in ("apiVersion", "kind"):
                continue
            for value in WRONG:
                changed = copy.deepcopy(docs)
                cur = changed[i]
                for part in field_path[:-1]:
                    cur = cur[part]
                cur[field_path[-1]] = value
                write_docs(path, changed)
                for session in (["BackupSession"] if doc["kind"] == "RestoreSession" else []) or runs:
                    if doc["kind"] in runs and doc["kind"] != session:
                        continue
                    count += 1
                    case_id = f"{doc['kind']} {'.'.join(map(str, field_path))}={value!r:.20} ({session})"
                    try:
                        got, err = run_in_process([*runs[session], "--objects", path, "--namespace", NS,
                                                   "--wait-timeout", "0"], capsys)
                        assert got in (2, 3, 4, 5, 7, 8), f"{case_id}: exit {got}: {err.strip()[-300:]}"
                        assert_one_error(got, err, got, (), case_id)
                        assert tree_digest(world.repo) == world.digest, f"{case_id}: the repository changed"
                    except AssertionError as e:
                        failures.append(str(e)[:400])
    assert not failures, f"{len(failures)} of {count} cases failed:\n" + "\n".join(failures)
    assert count > 500
