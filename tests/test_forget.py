"""``forget`` against restic 0.14 itself: same repository, same policy, same snapshots kept and removed."""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import resource
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from backends.local import LocalBackend
from stash_runner.errors import BadInput, LockedError
from stash_runner.maintenance.forget import ForgetResult, run_forget
from stash_runner.maintenance.retention import Duration, GoTime, Policy, apply_policy, group, parse_group_by
from stash_runner.restic.lock import RepositoryLock
from stash_runner.restic.repository import Repository
from stash_runner.restic.snapshot import Snapshot

from .helpers import REPO_PASSWORD, restic

NS = 1_000_000_000
HOSTS = ["db-0", "db-1", "db-2"]
PATHS = [["/dumpfile.sql"], ["/b.sql", "/a.sql"]]  # unsorted on purpose: restic groups by sorted paths
TAGS = [[], ["daily"], ["weekly", "daily"], ["manual"]]
OFFSETS = [0, 5 * 3600 + 1800, -8 * 3600, 9 * 3600, 14 * 3600, -12 * 3600, 3600, -3 * 3600 - 1800]


def go_time(instant_ns: int, offset: int) -> str:
    """RFC 3339 as Go writes a time.Time: trailing fraction zeros dropped, 'Z' for UTC."""
    secs, ns = divmod(instant_ns, NS)
    wall = dt.datetime.fromtimestamp(secs, dt.timezone(dt.timedelta(seconds=offset)))
    s = wall.strftime("%Y-%m-%dT%H:%M:%S")
    if ns:
        s += f".{ns:09d}".rstrip("0")
    if offset == 0:
        return s + "Z"
    sign, off = ("+", offset) if offset > 0 else ("-", -offset)
    return s + f"{sign}{off // 3600:02d}:{off % 3600 // 60:02d}"


def epoch_ns(y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> int:
    return int(dt.datetime(y, mo, d, h, mi, tzinfo=dt.UTC).timestamp()) * NS


def write_snapshots(repo: Repository, snaps: list[Snapshot]) -> None:
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(repo.save_snapshot, snaps))


def restic_repo_with_tree(root: str) -> tuple[Repository, str]:
    """A repository restic made, with a few snapshots restic made at chosen times in several zones."""
    restic(root, "init")
    made = [
        ("Asia/Tokyo", "2021-01-01 05:30:00", ["daily"]),
        ("America/Los_Angeles", "2020-12-31 20:00:00", []),
        ("UTC", "2021-01-03 23:59:59", ["manual"]),
        ("Asia/Kolkata", "2021-01-04 00:15:00", ["weekly", "daily"]),
        ("Pacific/Kiritimati", "2021-01-04 01:00:00", []),
        ("Europe/Berlin", "2021-03-28 02:30:00", ["daily"]),  # a DST gap: Go's ParseInLocation picks a side
    ]
    for tz, when, tags in made:
        args = ["backup", "--stdin", "--stdin-filename", "dumpfile.sql", "--host", "db-0", "--time", when]
        for t in tags:
            args += ["--tag", t]
        restic(root, *args, input=b"SELECT 1;\n", env={"TZ": tz})
    repo = Repository.open(LocalBackend(root), REPO_PASSWORD)
    return repo, repo.list_snapshots()[0].tree


def generated_snapshots(tree: str, seed: int = 7) -> list[Snapshot]:
    """Snapshots at many different times: random, in bursts, around ISO-week and year boundaries,
    in many offsets, nanoseconds apart, and some in the future. No two share an instant."""
    rnd = random.Random(seed)
    used: set[int] = set()
    out: list[Snapshot] = []

    def add(instant: int, host: str | None = None, paths: list[str] | None = None,
            tags: list[str] | None = None, offset: int | None = None) -> None:
        while instant in used:
            instant += 1
        used.add(instant)
        off = rnd.choice(OFFSETS) if offset is None else offset
        out.append(Snapshot(time=go_time(instant, off), tree=tree,
                            paths=list(paths if paths is not None else rnd.choice(PATHS)),
                            hostname=host or rnd.choice(HOSTS), username="stash",
                            tags=list(tags if tags is not None else rnd.choice(TAGS))))

    lo, hi = epoch_ns(2019, 6, 1), epoch_ns(2024, 6, 1)
    for _ in range(120):
        add(rnd.randrange(lo, hi, NS) + rnd.choice([0, 0, rnd.randrange(NS)]))
    for _ in range(20):  # several snapshots of one hour or one day
        center = rnd.randrange(lo, hi, NS)
        host, paths = rnd.choice(HOSTS), rnd.choice(PATHS)
        for _ in range(rnd.randint(3, 6)):
            add(center + rnd.randrange(-40 * 60, 40 * 60) * NS, host, paths)
    for year in (2019, 2020, 2021, 2022, 2023):  # ISO weeks 52/53/1, local day != UTC day
        for _ in range(6):
            day = dt.datetime(year, 12, 27, tzinfo=dt.UTC) + dt.timedelta(days=rnd.randrange(9))
            add(int(day.timestamp()) * NS + rnd.choice([22, 23, 0, 1, 2, 11]) * 3600 * NS
                + rnd.randrange(3600) * NS)
    for host in HOSTS:  # month ends (31st vs. "1 month back" arithmetic) and DST-free offsets
        for mo in (1, 3, 5, 8, 10, 12):
            add(epoch_ns(2023, mo, 28 if mo == 2 else 30, 23, 30), host, ["/dumpfile.sql"])
    base = epoch_ns(2022, 6, 15, 12)
    for delta in (0, 500, 1000, NS + 1):  # closer than a microsecond: Go orders them, datetime could not
        add(base + delta, "nano", ["/dumpfile.sql"], [], 0)
    # Around the thresholds of --keep-within*: Go's AddDate normalizes 31 March minus a month to
    # 2 March, and works in the newest snapshot's own offset (1 April 01:00 at +05:00 is 31 March UTC).
    for when in ("2024-03-31T10:00:00+02:00", "2024-03-02T10:00:00.000000001+02:00", "2024-03-02T10:00:00+02:00",
                 "2024-03-02T09:59:00+02:00", "2024-02-29T10:01:00+02:00", "2023-03-02T09:00:00.5+02:00",
                 "2023-03-02T08:59:00+02:00", "2023-02-28T10:00:00+02:00"):
        t = GoTime.parse(when)
        add(t.instant_ns, "edge", ["/dumpfile.sql"], [], t.offset)
    for when in ("2024-04-01T01:00:00+05:00", "2024-03-01T12:00:00Z", "2024-02-29T19:59:59Z"):
        t = GoTime.parse(when)
        add(t.instant_ns, "edge2", ["/dumpfile.sql"], [], t.offset)
    add(epoch_ns(2100, 1, 1), "db-0", ["/dumpfile.sql"], [])  # the future: ignored when finding "latest"
    add(epoch_ns(2099, 5, 5), "db-1", ["/b.sql", "/a.sql"], ["daily"])
    rnd.shuffle(out)
    return out


@pytest.fixture(scope="module")
def base_repo(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("forget") / "repo")
    repo, tree = restic_repo_with_tree(root)
    write_snapshots(repo, generated_snapshots(tree))
    return root


def _key(g: dict) -> tuple:
    return g["host"], json.dumps(g["paths"]), json.dumps(g["tags"])


def _snapshot_files(root: str) -> set[str]:
    return set(os.listdir(os.path.join(root, "snapshots")))


def compare_with_restic(base: str, tmp_path, args: list[str], policy: Policy, **kw) -> tuple[ForgetResult, list]:
    """Run restic forget on one copy and run_forget on another; everything must agree."""
    theirs_root, ours_root = str(tmp_path / "theirs"), str(tmp_path / "ours")
    shutil.copytree(base, theirs_root)
    shutil.copytree(base, ours_root)
    out = restic(theirs_root, "forget", "--json", *args).stdout
    theirs = json.loads(out) if out.strip() else []
    result = run_forget(Repository.open(LocalBackend(ours_root), REPO_PASSWORD), policy, **kw)
    ours = result.json()

    theirs_by, ours_by = {_key(g): g for g in theirs}, {_key(g): g for g in ours}
    assert sorted(ours_by) == sorted(theirs_by)
    for k, tg in theirs_by.items():
        og = ours_by[k]
        ids = lambda lst: [s["id"][:8] for s in lst or []]  # noqa: E731
        assert ids(og["keep"]) == ids(tg["keep"]), f"group {k}: kept"
        assert ids(og["remove"]) == ids(tg["remove"]), f"group {k}: removed"
        assert [r["matches"] for r in og["reasons"] or []] == [r["matches"] for r in tg["reasons"] or []], k
        assert og == tg, f"group {k}: JSON differs"
    assert _snapshot_files(ours_root) == _snapshot_files(theirs_root)
    assert not os.listdir(os.path.join(ours_root, "locks"))
    assert sorted(result.removed) == sorted(result.to_remove)
    return result, theirs


CASES = [
    (["--keep-last", "1"], Policy(last=1), {}),
    (["--keep-last", "7"], Policy(last=7), {}),
    (["--keep-last", "1000"], Policy(last=1000), {}),
    (["--keep-hourly", "3"], Policy(hourly=3), {}),
    (["--keep-daily", "7"], Policy(daily=7), {}),
    (["--keep-weekly", "5"], Policy(weekly=5), {}),
    (["--keep-monthly", "13"], Policy(monthly=13), {}),
    (["--keep-yearly", "3"], Policy(yearly=3), {}),
    (["--keep-daily", "7", "--keep-weekly", "4", "--keep-monthly", "12", "--keep-yearly", "5"],
     Policy(daily=7, weekly=4, monthly=12, yearly=5), {}),
    (["--keep-last", "2", "--keep-hourly", "24", "--keep-daily", "2", "--keep-weekly", "30"],
     Policy(last=2, hourly=24, daily=2, weekly=30), {}),
    (["--keep-tag", "daily"], Policy(tags=("daily",)), {}),
    (["--keep-tag", "weekly,daily"], Policy(tags=("weekly,daily",)), {}),
    (["--keep-tag", ""], Policy(tags=("",)), {}),
    (["--keep-tag", "manual", "--keep-tag", "daily, weekly", "--keep-daily", "3"],
     Policy(tags=("manual", "daily, weekly"), daily=3), {}),
    (["--keep-within", "1y2m"], Policy(within="1y2m"), {}),
    (["--keep-within", "3d12h", "--keep-monthly", "3"], Policy(within="3d12h", monthly=3), {}),
    (["--keep-within-hourly", "2d", "--keep-within-daily", "1m", "--keep-within-weekly", "6m",
      "--keep-within-monthly", "2y", "--keep-within-yearly", "10y"],
     Policy(within_hourly="2d", within_daily="1m", within_weekly="6m", within_monthly="2y", within_yearly="10y"), {}),
    (["--host", "edge", "--keep-within", "1m"], Policy(within="1m"), {"host": "edge"}),
    (["--host", "edge", "--keep-within", "1y1m1d1h"], Policy(within="1y1m1d1h"), {"host": "edge"}),
    (["--host", "edge", "--keep-within-daily", "1m", "--keep-within-hourly", "1y1m1d1h"],
     Policy(within_daily="1m", within_hourly="1y1m1d1h"), {"host": "edge"}),
    (["--host", "edge2", "--keep-within", "1m"], Policy(within="1m"), {"host": "edge2"}),
    (["--group-by", "", "--keep-daily", "10"], Policy(daily=10), {"group_by": ""}),
    (["--group-by", "host", "--keep-weekly", "6"], Policy(weekly=6), {"group_by": "host"}),
    (["--group-by", "tags", "--keep-monthly", "4"], Policy(monthly=4), {"group_by": "tags"}),
    (["--group-by", "host,tags", "--keep-last", "2", "--keep-yearly", "9"], Policy(last=2, yearly=9),
     {"group_by": ("host", "tags")}),
    (["--host", "db-1", "--keep-last", "3"], Policy(last=3), {"host": "db-1"}),
    (["--host", "nano", "--keep-last", "1"], Policy(last=1), {"host": "nano"}),
    (["--host", "nano", "--host", "db-2", "--keep-hourly", "2"], Policy(hourly=2), {"host": ["nano", "db-2"]}),
    (["--tag", "daily", "--keep-daily", "2"], Policy(daily=2), {"tag_filter": ["daily"]}),
    (["--path", "/a.sql", "--keep-monthly", "2"], Policy(monthly=2), {"path_filter": ["/a.sql"]}),
]


@pytest.mark.parametrize("args,policy,kw", CASES, ids=[" ".join(c[0]) or "empty" for c in CASES])
def test_forget_matches_restic(base_repo, tmp_path, args, policy, kw):
    result, theirs = compare_with_restic(base_repo, tmp_path, args, policy, **kw)
    assert theirs, "the case must exercise at least one group"


def test_repository_covers_many_times(base_repo):
    """The data behind the matrix: many groups, offsets, ISO weeks; no instant shared within a group."""
    snaps = Repository.open(LocalBackend(base_repo), REPO_PASSWORD).list_snapshots()
    assert len(snaps) > 250
    times = [GoTime.parse(s.time) for s in snaps]
    assert len({t.offset for t in times}) >= 8
    assert len({t.yw() for t in times}) > 100
    for members in group(snaps).values():
        instants = [GoTime.parse(s.time).instant_ns for s in members]
        assert len(instants) == len(set(instants))


def test_json_text_is_restics_byte_for_byte(base_repo, tmp_path):
    """With one group (no grouping), restic's stdout is exactly our JSON line."""
    root = str(tmp_path / "repo")
    shutil.copytree(base_repo, root)
    theirs = restic(root, "forget", "--json", "--dry-run", "--group-by", "", "--keep-weekly", "20",
                    "--keep-tag", "manual", "--keep-within", "2m").stdout.decode()
    result = run_forget(Repository.open(LocalBackend(root), REPO_PASSWORD),
                        Policy(weekly=20, tags=("manual",), within="2m"), dry_run=True, group_by="")
    assert result.json_text() == theirs


def test_dry_run_removes_nothing(base_repo, tmp_path):
    root = str(tmp_path / "repo")
    shutil.copytree(base_repo, root)
    before = _snapshot_files(root)
    theirs = json.loads(restic(root, "forget", "--json", "--dry-run", "--keep-daily", "3").stdout)
    assert _snapshot_files(root) == before
    result = run_forget(Repository.open(LocalBackend(root), REPO_PASSWORD), Policy(daily=3), dry_run=True,
                        prune=True)
    assert _snapshot_files(root) == before
    assert not os.listdir(os.path.join(root, "locks"))
    assert result.removed == [] and result.to_remove and result.prune  # prune would run (as a dry run)
    assert sorted(result.to_remove) == sorted(s["id"] for g in theirs for s in g["remove"] or [])
    assert "would remove" in result.summary()


def test_empty_policy_removes_nothing(base_repo, tmp_path):
    root = str(tmp_path / "repo")
    shutil.copytree(base_repo, root)
    before = _snapshot_files(root)
    r = restic(root, "forget", "--json")
    assert r.stdout == b"" and _snapshot_files(root) == before  # restic: no policy, nothing printed
    assert b"no policy was specified" in restic(root, "forget").stdout
    result = run_forget(Repository.open(LocalBackend(root), REPO_PASSWORD), Policy(), prune=True)
    assert _snapshot_files(root) == before
    assert result.json_text() == "" and result.groups == [] and not result.prune
    assert result.summary() == "no policy was specified, no snapshots will be removed\n"
    snaps = Repository.open(LocalBackend(root), REPO_PASSWORD).list_snapshots()
    keep, remove, reasons = apply_policy(snaps, Policy())
    assert len(keep) == len(snaps) and remove == [] and {m for r in reasons for m in r.matches} == {"policy is empty"}


def test_forget_takes_an_exclusive_lock(base_repo, tmp_path):
    root = str(tmp_path / "repo")
    shutil.copytree(base_repo, root)
    before = _snapshot_files(root)
    repo = Repository.open(LocalBackend(root), REPO_PASSWORD)
    with RepositoryLock(repo, exclusive=False), pytest.raises(LockedError):
        run_forget(repo, Policy(last=1))
    assert _snapshot_files(root) == before
    with RepositoryLock(repo, exclusive=False):  # a dry run only reads
        assert run_forget(repo, Policy(last=1), dry_run=True).to_remove


def test_bad_policies_are_refused():
    with pytest.raises(BadInput, match="negative"):
        Policy(daily=-1)  # restic 0.14 would accept it and remove every snapshot of the group
    for bad in ("1x", "d", "5", "-1d", "1.5d"):
        with pytest.raises(BadInput):
            Policy(within=bad)
    with pytest.raises(BadInput):
        parse_group_by("host,owner")
    assert parse_group_by("hosts,path,") == ("host", "paths")
    assert str(Duration.parse("1y2m3d4h")) == "1y2m3d4h" and str(Duration.parse("0y3d3d")) == "3d"


def test_policy_text_as_restic_prints_it(base_repo, tmp_path):
    policy = Policy(last=1, within_daily="2d", tags=("a,b", "a"), within="1d")
    out = restic(base_repo, "forget", "--dry-run", "--no-lock", "--keep-last", "1", "--keep-within-daily", "2d",
                 "--keep-tag", "a,b", "--keep-tag", "a", "--keep-within", "1d").stdout.decode()
    assert f"Applying Policy: {policy}\n" in out


def test_buckets_use_the_stored_offset():
    """05:00 in Tokyo on 3 January is 2 January in UTC: restic counts it for the 3rd."""
    snaps = [Snapshot(time="2022-01-03T05:00:00+09:00", tree="t", paths=["/x"], id="b"),
             Snapshot(time="2022-01-02T19:00:00Z", tree="t", paths=["/x"], id="a")]
    keep, remove, _ = apply_policy(snaps, Policy(daily=2))
    assert [s.id for s in keep] == ["b", "a"] and remove == []


def test_thousand_snapshots(tmp_path):
    """1,000 snapshots in 8 groups: same result as restic; the time is printed, not asserted."""
    root = str(tmp_path / "repo")
    repo, tree = restic_repo_with_tree(root)
    rnd = random.Random(1000)
    start = epoch_ns(2021, 1, 1)
    snaps = []
    for i in range(994):  # roughly every 26 hours for three years, a few more often, plus restic's six
        instant = start + i * 26 * 3600 * NS + rnd.randrange(3 * 3600) * NS + rnd.randrange(NS)
        snaps.append(Snapshot(time=go_time(instant, rnd.choice(OFFSETS)), tree=tree,
                              paths=list(rnd.choice(PATHS)), hostname=f"db-{i % 4}", username="stash",
                              tags=["manual"] if i % 97 == 0 else []))
    write_snapshots(repo, snaps)
    policy_args = ["--keep-last", "3", "--keep-hourly", "24", "--keep-daily", "14", "--keep-weekly", "8",
                   "--keep-monthly", "12", "--keep-yearly", "5", "--keep-tag", "manual"]
    policy = Policy(last=3, hourly=24, daily=14, weekly=8, monthly=12, yearly=5, tags=("manual",))
    base = str(tmp_path / "base")
    shutil.copytree(root, base)
    assert len(_snapshot_files(base)) == 1000

    started = time.monotonic()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tmp = tmp_path / "cmp"
    tmp.mkdir()
    t0 = time.monotonic()
    result, theirs = compare_with_restic(base, tmp, policy_args, policy)
    elapsed = time.monotonic() - t0
    # The comparison also ran restic; time our part alone on a fresh copy.
    again = str(tmp_path / "again")
    shutil.copytree(base, again)
    t1 = time.monotonic()
    ours = run_forget(Repository.open(LocalBackend(again), REPO_PASSWORD), policy)
    ours_elapsed = time.monotonic() - t1
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"\nforget of 1000 snapshots: run_forget {ours_elapsed:.2f} s (restic + ours + compare "
          f"{elapsed:.2f} s, all {time.monotonic() - started:.2f} s), {len(ours.removed)} removed, "
          f"{sum(len(g.keep) for g in ours.groups)} kept in {len(ours.groups)} groups; "
          f"max RSS {rss_before // 1024} -> {rss_after // 1024} MiB")
    assert len(result.groups) == len(theirs) == 8  # 4 hosts x 2 paths (restic's six join db-0 /dumpfile.sql)
    assert sorted(ours.removed) == sorted(result.removed)
    assert len(ours.removed) > 500
    # The removed snapshots are gone from our copy exactly as from restic's.
    assert _snapshot_files(again) == _snapshot_files(str(tmp / "theirs"))
