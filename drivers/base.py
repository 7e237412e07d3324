"""What a database driver is given, and what the backup and restore flows need from it.

A driver is made from an ``Endpoint`` (how to reach the database, whoever read it: the Stash layer from an
AppBinding and its Secrets) and ``DriverOptions`` (the flags for its tools). Backing up, it gives one
``HostDump`` per snapshot to write: one for most databases, one per shard and config server for a sharded
cluster, all written in parallel. Each dump gives its snapshot's ``Item``s: byte streams stored as files
(``pg_dumpall``'s output, one stream per index) or directories already on disk (an interim dump).
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol

from stash_runner.credentials import Credentials


@dataclass(frozen=True)
class Endpoint:
    """How to reach a database: an AppBinding's clientConfig, parameters and Secrets, without Stash's shapes."""

    ref: str  # names it in messages: "AppBinding demo/pg"
    host: str
    port: int | None = None
    scheme: str = ""
    path: str = ""
    query: Mapping[str, str] = field(default_factory=dict)
    parameters: Mapping[str, Any] = field(default_factory=dict)
    auth: Credentials | None = field(default=None, repr=False)  # username/password
    tls: Credentials | None = field(default=None, repr=False)  # ca.crt, tls.crt, tls.key
    ca_bundle: bytes | None = field(default=None, repr=False)
    insecure_tls: bool = False  # clientConfig.insecureSkipTLSVerify: the user asked not to verify the server


@dataclass
class DriverOptions:
    """The flags for a driver's tools; each driver reads the ones it knows."""

    driver: str = ""  # the driver's name; empty: from the AppBinding's spec.type
    backup_cmd: str = ""  # the dump tool, where a driver has several (pg_dumpall, pg_dump); empty: its default
    args: str = ""  # extra arguments for the dump/restore tool (Stash's --pg-args, the Task's args param)
    user: str = ""  # overrides the Secret's username
    scratch_dir: str | None = None  # for temporary files (certificates)
    purpose: str = "backup"  # or "restore": which tool's options ``args`` holds, checked before anything runs
    auth_database: str = ""  # where the user is defined, for databases that have one (MongoDB's authSource)
    max_concurrency: int = 0  # hosts or collections worked on at once, where a driver has a choice; 0: its default
    mode: str = ""  # how a driver with several ways dumps (Elasticsearch: "stream" or "interim"); empty: its default
    indices: str = ""  # which indices, as comma-separated patterns (Elasticsearch); empty: every non-hidden one
    include_hidden: bool = False  # also system and hidden indices (Elasticsearch)
    overwrite: bool = False  # a restore may replace what already exists in the database
    clean: bool = False  # PostgreSQL: a restore drops what the dump creates and the target has (default: fail)
    interim_dir: str = ""  # a directory a driver dumps into before the backup reads it (Stash's interim volume)
    interim_meta: str = ""  # what Stash writes to <interim>/meta.txt: the interim volume's size ("1Gi")


@dataclass
class Item:
    """One entry of a snapshot: a byte stream stored as a file, or a directory on disk stored with its files."""

    path: str  # where it goes in the snapshot: "/dumpfile.sql", "/var/data/es"
    stream: BinaryIO | None = None
    directory: str | None = None


class Dump(Protocol):
    """A running dump. Read each item's stream to its end before taking the next; then ``finish()`` raises if the
    dump failed or is incomplete, before anything refers to its data."""

    def items(self) -> Iterable[Item]: ...

    def finish(self) -> None: ...


@dataclass
class HostDump:
    """One snapshot of a backup: the host it is recorded under, and how to start its dump."""

    hostname: str
    open: Callable[[], AbstractContextManager[Dump]]
    #: the paths the snapshot is recorded under (restic's --path); default: its items' paths
    paths: list[str] | None = None


class SnapshotFiles(Protocol):
    """The files of the snapshot a restore reads, for a driver that needs more than one file's bytes."""

    #: the paths the snapshot was recorded under
    paths: list[str]

    def files(self, under: str = "/") -> list[str]:
        """The paths of the files below ``under``, depth first, sorted; [] when there is nothing there."""

    def read(self, path: str) -> Iterator[bytes]:
        """A file's bytes, verified; SnapshotNotFound when there is no such file."""

    def scan(self, path: str) -> Iterator[bytes]:
        """A file's bytes as ``read`` gives them, for a look at them before the restore: not counted as restored."""

    def extract(self, path: str, target: str) -> None:
        """Write the directory at ``path`` (its files and subdirectories, with their modes) into ``target``."""


@dataclass
class RestoreHost:
    """One snapshot a restore reads: the host it was taken under, and where its bytes go: one file's bytes to
    ``restore``, or the whole snapshot to ``restore_files``."""

    hostname: str
    restore: Callable[[Iterator[bytes]], None] | None = None
    restore_files: Callable[[SnapshotFiles], None] | None = None


class Driver(abc.ABC):
    #: the file a single-stream dump is stored as and restored from (Stash's name for it)
    filename: str
    #: where the database is, for messages
    target: str
    #: how many hosts of a multi-host backup are dumped at once (0: all)
    max_parallel_hosts: int = 0

    @property
    def snapshot_path(self) -> str:
        """The path this driver's snapshots are recorded under: a restore of ``latest`` looks for it."""
        return "/" + self.filename

    @classmethod
    @abc.abstractmethod
    def from_endpoint(cls, endpoint: Endpoint, options: DriverOptions) -> Driver:
        """The driver for this database; BadInput naming the field when something it needs is missing."""

    @abc.abstractmethod
    def wait_ready(self, timeout: float) -> None:
        """Return once the database accepts connections; DatabaseUnreachable after ``timeout`` s."""

    @abc.abstractmethod
    def dump(self) -> AbstractContextManager[Dump]:
        """Start the dump; leaving the context stops its tool if it still runs."""

    def backup_hosts(self, hostname: str) -> AbstractContextManager[list[HostDump]]:
        """The snapshots one backup writes. Most databases: one, under the run's host name. A driver that dumps
        several members (a sharded cluster) gives one per member; they are written in parallel, at most
        ``max_parallel_hosts`` at once. Entering may prepare the database for a consistent backup (stop a
        balancer, lock members); leaving undoes that, on success, on failure and on SIGTERM alike."""
        return contextlib.nullcontext([HostDump(hostname, self.dump)])

    def restore_hosts(self, hostname: str) -> list[RestoreHost]:
        """The snapshots one restore reads. Most databases: one, taken under ``hostname``. A sharded cluster:
        one per member, each restored into its own replica set, in parallel (at most ``max_parallel_hosts``)."""
        return [RestoreHost(hostname, self.restore)]

    @abc.abstractmethod
    def restore(self, chunks: Iterator[bytes]) -> None:
        """Feed a dump's bytes to the restore tool; ToolFailed if it fails."""

    def close(self) -> None:
        """Remove temporary files (certificates)."""
