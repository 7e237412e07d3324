"""The backup flow beyond one stream: several named streams in one snapshot, a directory, and several hosts
written in parallel into snapshots of their own. The dumps are bytes this test makes (no database needed for
the shape of a snapshot); restic judges every repository."""

from __future__ import annotations

import contextlib
import io
import json
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager

import pytest

from backends.local import LocalBackend
from drivers import Driver, DriverOptions, Endpoint, HostDump, Item, RestoreHost
from stash_runner.errors import HostsFailed, SnapshotNotFound, ToolFailed
from stash_runner.flows.backup import BackupPlan, run_backup
from stash_runner.flows.restore import RestorePlan, run_restore
from stash_runner.restic.repository import Repository

from .helpers import REPO_PASSWORD, restic
from .test_engine import sample_bytes
from .test_postgres import packs


class _Dump:
    """A dump of ready-made items; ``error`` makes it fail as a dump tool that exits non-zero does."""

    def __init__(self, items: list[Item], error: str = "", active: list[int] | None = None):
        self._items = items
        self._error = error
        self.closed = False
        self._active = active if active is not None else [0, 0]  # [now, most]
        self._active[0] += 1
        self._active[1] = max(self._active[1], self._active[0])

    def items(self) -> list[Item]:
        return self._items

    def finish(self) -> None:
        self._active[0] -= 1
        for item in self._items:
            if item.stream is not None:
                assert item.stream.read() == b"", "the flow reads every stream to its end"
        if self._error:
            raise ToolFailed(self._error)

    def __enter__(self) -> _Dump:
        return self

    def __exit__(self, *exc: object) -> None:
        self.closed = True


class ItemsDriver(Driver):
    """A driver whose hosts' dumps are given as items: {hostname suffix: [Item, ...]}."""

    filename = "dump"
    target = "test items"

    def __init__(self, hosts: dict[str, list[Item]], failing: str = ""):
        self._hosts = hosts
        self._failing = failing
        self.opened: list[_Dump] = []
        self.threads: set[str] = set()
        self.events: list[str] = []
        self.active = [0, 0]  # dumps running now, and the most at once
        self.restored: dict[str, bytes] = {}

    @classmethod
    def from_endpoint(cls, endpoint: Endpoint, options: DriverOptions) -> ItemsDriver:
        raise NotImplementedError  # made directly by the tests

    def wait_ready(self, timeout: float) -> None:
        pass

    def _open(self, name: str) -> AbstractContextManager[_Dump]:
        dump = _Dump(self._hosts[name], error=f"dump of {name} failed" if name == self._failing else "",
                     active=self.active)
        self.opened.append(dump)
        self.events.append(f"open {name}")
        self.threads.add(threading.current_thread().name)
        return dump

    def dump(self) -> AbstractContextManager[_Dump]:
        return self._open(next(iter(self._hosts)))

    def backup_hosts(self, hostname: str) -> AbstractContextManager[list[HostDump]]:
        if len(self._hosts) == 1:
            return super().backup_hosts(hostname)
        return self._prepared(hostname)

    @contextlib.contextmanager
    def _prepared(self, hostname: str) -> Iterator[list[HostDump]]:
        self.events.append("prepare")
        try:
            yield [HostDump(f"{hostname}-{name}", lambda name=name: self._open(name)) for name in self._hosts]
        finally:
            self.events.append("undo")

    def restore_hosts(self, hostname: str) -> list[RestoreHost]:
        return [RestoreHost(f"{hostname}-{name}", lambda chunks, name=name: self._restore(name, chunks))
                for name in self._hosts]

    def _restore(self, name: str, chunks) -> None:
        data = b"".join(chunks)
        if name == self._failing:
            raise ToolFailed(f"restore of {name} failed")
        self.restored[name] = data

    def restore(self, chunks):
        raise NotImplementedError


def _plan(root: str, driver: Driver) -> BackupPlan:
    return BackupPlan(driver=driver, backend=LocalBackend(root), password=REPO_PASSWORD, hostname="db",
                      progress_interval=60)


def _snapshots(root: str) -> list[dict]:
    return json.loads(restic(root, "snapshots", "--json").stdout)


def test_several_named_streams_in_one_snapshot(tmp_path):
    root = str(tmp_path / "repo")
    data = {f"/indices/{name}.json": sample_bytes(300_000 + i * 7_000, seed=i)
            for i, name in enumerate(["logs-2026", "users", "orders"])}
    driver = ItemsDriver({"only": [Item(path, io.BytesIO(body)) for path, body in data.items()]})
    outcome = run_backup(_plan(root, driver))

    assert len(outcome.results) == 1
    assert outcome.result.snapshot.paths == list(data)
    assert outcome.result.stats.files == 3
    restic(root, "check", "--read-data")
    (snap,) = _snapshots(root)
    assert snap["hostname"] == "db" and snap["paths"] == sorted(data)
    for path, body in data.items():
        assert restic(root, "dump", "latest", path).stdout == body
    assert driver.opened[0].closed


def test_a_directory_on_disk_is_stored_under_its_path(tmp_path):
    root = str(tmp_path / "repo")
    interim = tmp_path / "interim"
    (interim / "users").mkdir(parents=True)
    files = {"users/data.json": sample_bytes(200_000, seed=4), "users/mapping.json": b'{"properties": {}}',
             "meta.txt": b"interim\n"}
    for rel, body in files.items():
        (interim / rel).write_bytes(body)
    driver = ItemsDriver({"only": [Item("/var/data/es", directory=str(interim))]})
    outcome = run_backup(_plan(root, driver))

    assert outcome.result.snapshot.paths == ["/var/data/es"]
    restic(root, "check", "--read-data")
    out = tmp_path / "out"
    restic(root, "restore", "latest", "--target", str(out))
    for rel, body in files.items():
        assert (out / "var/data/es" / rel).read_bytes() == body


def test_several_hosts_are_written_in_parallel_into_their_own_snapshots(tmp_path):
    root = str(tmp_path / "repo")
    bodies = {name: sample_bytes(2_500_000, seed=10 + i) for i, name in enumerate(["configsvr", "shard0", "shard1"])}
    driver = ItemsDriver({name: [Item("/dump", io.BytesIO(body))] for name, body in bodies.items()})
    outcome = run_backup(_plan(root, driver))

    assert [r.snapshot.hostname for r in outcome.results] == ["db-configsvr", "db-shard0", "db-shard1"]
    assert all(d.closed for d in driver.opened)
    restic(root, "check", "--read-data")
    snaps = _snapshots(root)
    assert sorted(s["hostname"] for s in snaps) == ["db-configsvr", "db-shard0", "db-shard1"]
    for name, body in bodies.items():
        assert restic(root, "dump", "--host", f"db-{name}", "latest", "/dump").stdout == body
    # the dumps are started by the main thread (a SIGTERM there stops them all)
    assert driver.threads == {threading.main_thread().name}


def test_a_failing_host_fails_the_run_and_leaves_no_snapshot_of_its_own(tmp_path):
    root = str(tmp_path / "repo")
    bodies = {name: sample_bytes(1_500_000, seed=20 + i) for i, name in enumerate(["shard0", "shard1", "shard2"])}
    driver = ItemsDriver({name: [Item("/dump", io.BytesIO(body))] for name, body in bodies.items()},
                         failing="shard1")
    with pytest.raises(HostsFailed, match="host db-shard1: dump of shard1 failed") as failed:
        run_backup(_plan(root, driver))

    assert list(failed.value.failures) == ["db-shard1"]
    assert isinstance(failed.value.failures["db-shard1"], ToolFailed)
    assert failed.value.exit_code == ToolFailed.exit_code
    assert sorted(r.snapshot.hostname for r in failed.value.results) == ["db-shard0", "db-shard2"]
    assert all(d.closed for d in driver.opened)
    restic(root, "check", "--read-data")
    assert sorted(s["hostname"] for s in _snapshots(root)) == ["db-shard0", "db-shard2"]
    # the failed host's packs were removed: every pack left is named by an index
    repo = Repository.open(LocalBackend(root), REPO_PASSWORD)
    repo.load_index()
    assert packs(root) == {p.hex() for p in repo.index.packs()}


def test_hosts_are_prepared_around_all_dumps_and_limited_in_parallel(tmp_path):
    """A driver's preparation (a sharded cluster's balancer and locks) wraps every host's dump and is undone
    after them; at most max_parallel_hosts dumps run at once."""
    root = str(tmp_path / "repo")
    names = [f"shard{i}" for i in range(5)]
    driver = ItemsDriver({n: [Item("/dump", io.BytesIO(sample_bytes(600_000, seed=40 + i)))]
                          for i, n in enumerate(names)})
    driver.max_parallel_hosts = 2
    told = []
    plan = _plan(root, driver)
    plan.on_hosts = told.append
    outcome = run_backup(plan)

    assert told == [[f"db-{n}" for n in names]]
    assert driver.events[0] == "prepare" and driver.events[-1] == "undo"
    assert sorted(driver.events[1:-1]) == sorted(f"open {n}" for n in names)
    assert driver.active[1] == 2
    assert len(outcome.results) == 5
    restic(root, "check", "--read-data")


def test_preparation_is_undone_when_a_host_fails(tmp_path):
    root = str(tmp_path / "repo")
    driver = ItemsDriver({n: [Item("/dump", io.BytesIO(sample_bytes(300_000, seed=50 + i)))]
                          for i, n in enumerate(["a", "b", "c"])}, failing="a")
    driver.max_parallel_hosts = 1
    with pytest.raises(HostsFailed, match="dump of a failed"):
        run_backup(_plan(root, driver))
    assert driver.events[0] == "prepare" and driver.events[-1] == "undo"
    assert sorted(s["hostname"] for s in _snapshots(root)) == ["db-b", "db-c"]
    restic(root, "check", "--read-data")


def _three_hosts(seed: int, failing: str = "") -> ItemsDriver:
    return ItemsDriver({n: [Item("/dump", io.BytesIO(sample_bytes(400_000, seed=seed + i)))]
                        for i, n in enumerate(["configsvr", "shard0", "shard1"])}, failing=failing)


def test_several_hosts_restore_in_parallel_each_from_the_snapshot_chosen_for_it(tmp_path):
    root = str(tmp_path / "repo")
    first = run_backup(_plan(root, _three_hosts(60)))
    run_backup(_plan(root, _three_hosts(70)))
    older = {r.snapshot.hostname: r.snapshot.id for r in first.results}

    driver = _three_hosts(0)
    driver.max_parallel_hosts = 2
    told = []
    plan = RestorePlan(driver=driver, backend=LocalBackend(root), password=REPO_PASSWORD, source_hostname="db",
                       progress_interval=60, on_hosts=told.append,
                       choose=lambda h: (older[h], h) if h == "db-shard0" else ("latest", h))
    results = run_restore(plan)

    assert told == [["db-configsvr", "db-shard0", "db-shard1"]]
    assert [r.hostname for r in results] == ["db-configsvr", "db-shard0", "db-shard1"]
    assert driver.restored["shard0"] == sample_bytes(400_000, seed=61)  # the older snapshot, as chosen
    assert driver.restored["configsvr"] == sample_bytes(400_000, seed=70)
    assert driver.restored["shard1"] == sample_bytes(400_000, seed=72)


def test_a_failing_host_restore_fails_the_run_and_the_others_complete(tmp_path):
    root = str(tmp_path / "repo")
    run_backup(_plan(root, _three_hosts(80)))
    driver = _three_hosts(0, failing="shard0")
    with pytest.raises(HostsFailed, match="host db-shard0: restore of shard0 failed") as failed:
        run_restore(RestorePlan(driver=driver, backend=LocalBackend(root), password=REPO_PASSWORD,
                                source_hostname="db", progress_interval=60))
    assert sorted(r.hostname for r in failed.value.results) == ["db-configsvr", "db-shard1"]
    assert sorted(driver.restored) == ["configsvr", "shard1"]


def test_a_missing_host_snapshot_fails_before_anything_is_restored(tmp_path):
    root = str(tmp_path / "repo")
    run_backup(_plan(root, ItemsDriver({n: [Item("/dump", io.BytesIO(b"x" * 1000))] for n in ["configsvr"]})))
    driver = _three_hosts(0)
    with pytest.raises(SnapshotNotFound):
        run_restore(RestorePlan(driver=driver, backend=LocalBackend(root), password=REPO_PASSWORD,
                                source_hostname="db", progress_interval=60))
    assert driver.restored == {}
