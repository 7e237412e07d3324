"""The CLI's surface: an unexpected error as one line, -v/-q after the command, help texts that say what is required
and what a flag does, snapshot times with their zone (restic as the judge), readable rates and a restore's
progress with total, percentage and ETA."""

from __future__ import annotations

import io
import logging
import os
import re
import time
from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner

from backends.factory import SUPPORTED
from backends.local import LocalBackend
from drivers.stdin import StdinDriver
from stash_runner.cli import repository as repository_cli
from stash_runner.cli.main import UNEXPECTED_EXIT_CODE, cli, main
from stash_runner.errors import BadInput
from stash_runner.flows.backup import BackupPlan, run_backup
from stash_runner.flows.progress import Progress
from stash_runner.flows.restore import RestorePlan, run_restore
from stash_runner.stash.resolve import storage_from_flags
from stash_runner.units import rate

from .helpers import REPO_PASSWORD, objects_yaml, restic, runner
from .test_engine import sample_bytes

REPO = ["--objects", "OBJECTS", "-n", "demo", "--repository", "repo"]


@pytest.fixture
def objects(tmp_path, repo_dir) -> list[str]:
    """The flags naming a local Repository (no AppBinding: --stdin and the repository commands need none)."""
    path = objects_yaml(str(tmp_path / "o.yaml"), repo_dir=repo_dir)
    return [path if a == "OBJECTS" else a for a in REPO]


# -- 1. an unexpected error -------------------------------------------------------------------------------------


def _failing(error: BaseException):
    def opened(*args, **kw):
        raise error

    return opened


def test_an_unexpected_error_is_one_line_and_exit_1(monkeypatch, capsys, objects):
    monkeypatch.setattr(repository_cli, "opened", _failing(ValueError("bad value\n  on a second line")))
    assert main(["stats", *objects]) == 1 == UNEXPECTED_EXIT_CODE
    assert capsys.readouterr().err == "stash-runner: error: ValueError: bad value on a second line\n"
    # an error that says nothing is named by its type alone
    monkeypatch.setattr(repository_cli, "opened", _failing(RuntimeError()))
    assert main(["stats", *objects]) == 1
    assert capsys.readouterr().err == "stash-runner: error: RuntimeError\n"


@pytest.mark.parametrize("where", ["before", "after"])
def test_the_traceback_only_with_verbose(monkeypatch, capsys, objects, where):
    monkeypatch.setattr(repository_cli, "opened", _failing(KeyError("spec")))
    argv = ["-v", "stats", *objects] if where == "before" else ["stats", *objects, "-v"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "raise error" in err
    assert err.splitlines()[-1] == "stash-runner: error: KeyError: 'spec'"


def test_a_runner_error_stays_as_it_was(monkeypatch, capsys, objects):
    monkeypatch.setattr(repository_cli, "opened", _failing(BadInput("Repository demo/repo: not found")))
    assert main(["stats", *objects, "-v"]) == 2
    assert capsys.readouterr().err == "stash-runner: error: Repository demo/repo: not found\n"


# -- 7. -v/-q after the command ---------------------------------------------------------------------------------


def test_every_command_takes_verbose_and_quiet_once():
    for name, command in cli.commands.items():
        spelled = [o for p in command.params for o in p.opts + p.secondary_opts]
        for flag in ("-v", "--verbose", "-q", "--quiet"):
            assert spelled.count(flag) == 1, (name, flag)


def test_quiet_after_the_command_silences_the_progress(objects, repo_dir):
    data = sample_bytes(200_000, seed=3)
    loud = runner("backup", "--stdin", *objects, input=data, check=True)
    assert b"saved for host-0" in loud.stderr
    quiet = runner("backup", "--stdin", *objects, "-q", input=data, check=True)
    assert quiet.stderr == b""
    # given before the command too, or on both sides
    assert runner("-q", "backup", "--stdin", *objects, input=data, check=True).stderr == b""


def test_verbose_after_the_command_logs_debug(objects, repo_dir):
    runner("backup", "--stdin", *objects, input=b"x" * 1000, check=True)
    plain = runner("prune", *objects, "--dry-run", check=True)
    verbose = runner("prune", *objects, "--dry-run", "-v", check=True)
    assert len(verbose.stderr.splitlines()) > len(plain.stderr.splitlines())


def test_a_value_that_looks_like_a_flag_stays_a_value():
    # the tool's arguments may hold -v or -q (psql's -v, mongodump's -q): an option's value is not a flag
    with click.Context(cli) as parent:
        ctx = cli.commands["backup"].make_context("backup", ["--args", "-q", "--user", "-v"], parent=parent)
    assert ctx.params["tool_args"] == "-q" and ctx.params["user"] == "-v"


# -- 7. help texts ----------------------------------------------------------------------------------------------


def _help(*command: str) -> str:
    r = CliRunner().invoke(cli, [*command, "--help"], terminal_width=200)
    assert r.exit_code == 0, r.output
    return " ".join(r.output.split())


def test_required_flags_are_marked():
    for command in ("snapshots", "dump", "forget", "prune", "check", "unlock", "stats"):
        assert re.search(r"--repository TEXT Repository to [^\[]*\[required\]", _help(command)), command
    assert "--hook-type [preBackup|postBackup|preRestore|postRestore] " in _help("run-hook")
    assert "[required]" in _help("run-hook")
    backup = _help("backup")
    assert "--appbinding TEXT AppBinding of the database: required unless a session, a batch or --stdin" in backup
    assert "--repository TEXT Repository to back up into: required unless a session or a batch" in backup
    assert "--provider TEXT Storage provider (local, s3, gcs, azure): required without a session" in _help("backup-pg")


def test_update_status_says_it_reads_output_json():
    text = _help("update-status")
    assert "--output-dir TEXT Required: the directory the backup or restore step wrote output.json to; " \
           "update-status reads it." in text
    assert "Write output.json here" not in text and "Write Stash's output.json here" not in text
    # the addon spellings write it
    assert "--output-dir TEXT Write Stash's output.json here." in _help("backup-pg")


def test_every_option_has_help():
    missing = [f"{name} {p.opts[0]}" for name, command in cli.commands.items() for p in command.params
               if isinstance(p, click.Option) and not p.hidden and not p.help]
    assert missing == []


# -- 7. the missing --provider --------------------------------------------------------------------------------------


def test_the_missing_provider_lists_only_what_works(tmp_path):
    with pytest.raises(BadInput) as e:
        storage_from_flags(None, provider="", secret_dir=str(tmp_path))
    assert str(e.value) == f"--provider is missing (one of: {', '.join(SUPPORTED)})"
    assert SUPPORTED == ("local", "s3", "gcs", "azure")
    with pytest.raises(BadInput, match=r"^--provider 'ftp': unknown provider \(supported: local, s3, gcs, azure\)$"):
        storage_from_flags(None, provider="ftp", secret_dir=str(tmp_path))
    # each one listed is opened, not refused as unsupported (the secret is what is missing here)
    for provider in SUPPORTED:
        with pytest.raises(BadInput) as e:
            storage_from_flags(None, provider=provider, bucket="b", secret_dir=str(tmp_path))
        assert "not supported" not in str(e.value) and "RESTIC_PASSWORD" in str(e.value), provider


def test_the_missing_provider_through_the_cli(tmp_path):
    objects = objects_yaml(str(tmp_path / "o.yaml"), repo_dir=str(tmp_path / "repo"))
    r = runner("backup-pg", "--objects", objects, "--namespace", "demo", "--storage-secret-name", "repo-secret",
               "--appbinding", "pg")
    assert r.returncode == 2
    assert r.stderr.decode() == "stash-runner: error: --provider is missing (one of: local, s3, gcs, azure)\n"


# -- 7. snapshot times ------------------------------------------------------------------------------------------


def _restic_times(repo_dir: str, tz: str) -> dict[str, str]:
    out = restic(repo_dir, "snapshots", env={"TZ": tz}).stdout.decode()
    row = re.compile(r"^([0-9a-f]{8})\s+(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)", re.M)
    return {m.group(1): m.group(2) for m in row.finditer(out)}


@pytest.mark.parametrize(("tz", "zone"), [("UTC", "UTC"), ("Asia/Kolkata", "IST"), ("America/Sao_Paulo", "-03")])
def test_snapshot_times_are_restics_local_time_with_the_zone(objects, repo_dir, tz, zone):
    runner("backup", "--stdin", *objects, input=b"first", check=True)
    runner("backup", "--stdin", *objects, "--hostname", "other", input=b"second", check=True)
    # one written by restic itself, with its own (local) offset in the file
    restic(repo_dir, "backup", "--stdin", "--host", "restic-host", input=b"third", env={"TZ": "Europe/Berlin"})
    ours = runner("snapshots", *objects, env={**os.environ, "TZ": tz}, check=True).stdout.decode().splitlines()
    assert ours[0].split() == ["ID", "Time", "Host", "Tags", "Paths"] and ours[-1] == "3 snapshots"
    rows = {line.split()[0]: line for line in ours[1:-1]}
    theirs = _restic_times(repo_dir, tz)
    assert set(rows) == set(theirs)
    for short_id, when in theirs.items():
        assert rows[short_id].split()[1:4] == [*when.split(), zone], rows[short_id]


# -- 7. rates and progress --------------------------------------------------------------------------------------


def test_rates_in_the_unit_that_fits():
    assert rate(0, 1.0) == "0 B/s"
    assert rate(600, 1.0) == "600 B/s"
    assert rate(40_000, 1.0) == "39.1 KiB/s"  # a small run no longer reads "0.0 MB/s"
    assert rate(3 << 20, 2.0) == "1.5 MiB/s"
    assert rate(5 << 30, 2.0) == "2.5 GiB/s"
    assert rate(100, 0.0) == "-"


def test_progress_line_with_a_total():
    p = Progress("restore", lambda: 0, total=400 << 20)
    assert p.line(100 << 20, 10.0, 50 << 20, 5.0) == \
        "restore: 100.000 MiB of 400.000 MiB (25%), 10.0 MiB/s, about 0:30 left"
    assert p.line(400 << 20, 40.0, 50 << 20, 5.0) == "restore: 400.000 MiB of 400.000 MiB (100%), 10.0 MiB/s"
    assert p.line(0, 5.0, 0, 5.0) == "restore: 0 B of 400.000 MiB (0%), 0 B/s"
    plain = Progress("backup", lambda: 0, extra=lambda: "1 B stored")
    assert plain.line(2048, 1.0, 2048, 1.0) == "backup: 2.000 KiB so far, 2.0 KiB/s, 1 B stored"


class _SlowSink(StdinDriver):
    """The stdin driver with a restore that takes its time, so that progress lines appear."""

    def __init__(self, data: bytes):
        super().__init__(io.BytesIO(data))
        self.restored = b""

    def wait_ready(self, timeout: float) -> None:
        pass  # a restore waits for no input

    def restore(self, chunks: Iterator[bytes]) -> None:
        for c in chunks:
            self.restored += c
            time.sleep(0.05)


def test_a_restore_reports_total_percentage_and_eta(tmp_path, caplog):
    data = sample_bytes(6_000_000, seed=5)
    root = str(tmp_path / "repo")
    run_backup(BackupPlan(driver=StdinDriver(io.BytesIO(data)), backend=LocalBackend(root), password=REPO_PASSWORD))
    sink = _SlowSink(b"")
    caplog.set_level(logging.INFO, logger="stash_runner")
    run_restore(RestorePlan(driver=sink, backend=LocalBackend(root), password=REPO_PASSWORD, source_hostname="host-0",
                            progress_interval=0.02))
    assert sink.restored == data
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("restore: ")]
    assert lines, caplog.text
    pattern = re.compile(r"^restore: [\d.]+ (B|KiB|MiB) of 5\.722 MiB \(\d+%\), [\d.]+ (B|KiB|MiB)/s"
                         r"(, about \d+:\d\d left)?$")
    assert all(pattern.match(line) for line in lines), lines
    assert any("left" in line for line in lines), lines
    summary = [r.getMessage() for r in caplog.records if r.getMessage().startswith("restored snapshot")]
    assert re.search(r": 5\.722 MiB in [\d.]+ s \([\d.]+ (KiB|MiB)/s\)$", summary[0]), summary
