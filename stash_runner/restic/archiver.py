"""Writing a snapshot: files from byte streams (or a directory), then trees, index and snapshot.

The order of writes is what keeps the repository valid if the process dies at any moment: packs
first, then the index files that name them, and the snapshot last. Packs that no index names yet
are removed again when a backup fails; after a crash they stay as unreferenced files, which
``restic check`` accepts and ``prune`` reclaims.

Memory is bounded: at most ``2 * workers`` chunks (each at most 8 MiB) are in flight, one pack per
blob type is being filled, and at most ``backend.connections`` packs are being uploaded.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import os
import stat as statmod
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import BinaryIO

import pyfastcdc

from backends.base import FileType, Handle
from stash_runner.errors import RepositoryError

from . import compression, tree
from .pack import DATA, TARGET_PACK_SIZE, TREE, PackBuilder, PackedBlob
from .repository import Repository
from .snapshot import Snapshot
from .timefmt import format_time, now
from .uploader import PackUploader

MIN_CHUNK = 512 * 1024
AVG_CHUNK = 1024 * 1024
MAX_CHUNK = 8 * 1024 * 1024
# Write an index for finished packs this often, so a long backup that dies still leaves its data
# usable for deduplication by the next run.
INDEX_FLUSH_PACKS = 64


@dataclass
class Stats:
    files: int = 0
    bytes_read: int = 0
    blobs_new: int = 0
    blobs_known: int = 0
    bytes_new: int = 0  # plaintext of blobs that were not in the repository yet
    bytes_stored: int = 0  # everything written to the backend: packs, index, snapshot
    # Where the pipeline's time goes (seconds): the reader waiting for the dump tool's next bytes, the
    # reader waiting for a worker to take a chunk, and the workers storing blobs (summed over workers).
    read_wait: float = 0.0
    worker_wait: float = 0.0
    worker_busy: float = 0.0
    workers: int = 0
    started: float = field(default_factory=time.monotonic)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **deltas: int) -> None:
        with self._lock:
            for k, v in deltas.items():
                setattr(self, k, getattr(self, k) + v)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def pipeline(self) -> str:
        """Where the time went, for the log: what a slow backup waited on."""
        return (f"the reader waited {self.read_wait:.2f} s for the dump tool and {self.worker_wait:.2f} s for "
                f"{self.workers} workers, which were busy {self.worker_busy:.2f} s of "
                f"{self.workers * self.elapsed:.2f} s")


class _TimedReader:
    """A stream's readinto, timed: how long the reader waits for the dump tool."""

    def __init__(self, stream: BinaryIO, stats: Stats):
        self._stream = stream
        self._stats = stats

    def readinto(self, b) -> int:
        t = time.monotonic()
        n = self._stream.readinto(b)
        self._stats.read_wait += time.monotonic() - t  # only the reading thread writes it
        return n


def default_workers() -> int:
    return max(2, min(4, os.cpu_count() or 2))


class BlobSaver:
    """Stores blobs: dedup by ID, compress (v2), encrypt, fill packs, upload them in parallel."""

    def __init__(self, repo: Repository, stats: Stats, workers: int, level: int):
        self.repo = repo
        self.stats = stats
        self.level = level
        self.max_inflight = workers * 2
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="blob")
        self._uploader = PackUploader(repo, self._pack_saved, self._pack_failed)
        self._lock = threading.Lock()
        self._pending: set[bytes] = set()
        self._packers = {DATA: PackBuilder(DATA), TREE: PackBuilder(TREE)}
        self.unindexed: list[tuple[bytes, list[PackedBlob]]] = []
        self._local = threading.local()
        self._error: BaseException | None = None

    # Called from worker threads.
    def store(self, blob_type: str, data: bytes) -> bytes:
        started = time.monotonic()
        try:
            return self._store(blob_type, data)
        finally:
            self.stats.add(worker_busy=time.monotonic() - started)

    def _store(self, blob_type: str, data: bytes) -> bytes:
        blob_id = hashlib.sha256(data).digest()
        with self._lock:
            if self.repo.index.has(blob_id) or blob_id in self._pending:
                self.stats.add(blobs_known=1)
                return blob_id
            self._pending.add(blob_id)
        payload, ulen = data, 0
        if self.repo.compressed:
            comp = getattr(self._local, "compressor", None)
            if comp is None:
                comp = self._local.compressor = compression.Compressor(self.level)
            packed = comp.compress(data)
            if len(packed) < len(data):
                payload, ulen = packed, len(data)
        encrypted = self.repo.key.encrypt(payload)
        full = None
        with self._lock:
            packer = self._packers[blob_type]
            packer.add(blob_id, encrypted, ulen)
            if packer.size >= TARGET_PACK_SIZE:
                full = packer
                self._packers[blob_type] = PackBuilder(blob_type)
        self.stats.add(blobs_new=1, bytes_new=len(data))
        if full is not None:
            self._uploader.upload(full)
        return blob_id

    def submit(self, blob_type: str, data: bytes) -> Future:
        if self._error is not None:
            raise self._error
        return self._pool.submit(self.store, blob_type, data)

    # Called from upload threads.
    def _pack_failed(self, pack_id: bytes, blobs: list[PackedBlob], size: int, e: BaseException) -> None:
        self._error = e

    def _pack_saved(self, pack_id: bytes, blobs: list[PackedBlob], size: int) -> None:
        self.stats.add(bytes_stored=size)
        batch = None
        with self._lock:
            self.unindexed.append((pack_id, blobs))
            if len(self.unindexed) >= INDEX_FLUSH_PACKS:
                batch, self.unindexed = self.unindexed, []
        if batch:
            self._write_index(batch)

    def _write_index(self, batch: list[tuple[bytes, list[PackedBlob]]]) -> None:
        try:
            self.stats.add(bytes_stored=self.repo.save_index(batch))
        except BaseException as e:
            with self._lock:  # keep them listed so that abort() removes them
                self.unindexed.extend(batch)
            self._error = e
            raise
        for pack_id, blobs in batch:
            self.repo.index.add_pack(pack_id, blobs)

    def flush(self) -> None:
        """Upload partly filled packs, wait for every upload, and index everything."""
        for blob_type in (DATA, TREE):
            with self._lock:
                packer = self._packers[blob_type]
                self._packers[blob_type] = PackBuilder(blob_type)
            if packer.blobs:
                self._uploader.upload(packer)
        self._uploader.wait()
        if self._error is not None:
            raise self._error
        with self._lock:
            batch, self.unindexed = self.unindexed, []
        if batch:
            self._write_index(batch)

    def abort(self) -> None:
        """Stop, and remove the packs of this run that no index names (nothing can refer to them)."""
        # Uploads waiting to retry would hold the shutdown for up to a minute (SIGTERM has 30 s).
        self.repo.backend.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)
        # the first error is already being reported; the uploads only need to have finished
        self._uploader.wait(quiet=True)
        for pack_id, _ in self.unindexed:
            with contextlib.suppress(RepositoryError):
                self.repo.remove(Handle(FileType.DATA, pack_id.hex()))
        self.unindexed = []
        self.close()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._uploader.shutdown()


@dataclass
class _Dir:
    children: dict[str, tree.Node | _Dir] = field(default_factory=dict)
    node: tree.Node | None = None  # metadata for the directory itself, when it came from disk


@dataclass
class BackupResult:
    snapshot: Snapshot
    stats: Stats


class Archiver:
    """Builds one snapshot. Use as a context manager: leaving it without commit() aborts."""

    def __init__(
        self,
        repo: Repository,
        *,
        workers: int | None = None,
        level: int = compression.DEFAULT_LEVEL,
    ):
        self.repo = repo
        self.workers = workers or default_workers()
        self.stats = Stats(workers=self.workers)
        self.saver = BlobSaver(repo, self.stats, self.workers, level)
        self._root = _Dir()
        self._done = False

    def __enter__(self) -> Archiver:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._done:
            self.saver.abort()

    def add_stream(self, path: str, stream: BinaryIO, mtime: str | None = None) -> tree.Node:
        """Chunk a byte stream into the repository as the file at ``path`` (e.g. 'dumpfile.sql')."""
        cdc = pyfastcdc.FastCDC(AVG_CHUNK, min_size=MIN_CHUNK, max_size=MAX_CHUNK)
        inflight: collections.deque[Future] = collections.deque()
        content: list[str] = []
        size = 0
        stats = self.stats
        for chunk in cdc.cut_stream(_TimedReader(stream, stats)):
            data = bytes(chunk.data)  # the chunker reuses its buffer
            size += len(data)
            stats.add(bytes_read=len(data))
            if len(inflight) >= self.saver.max_inflight:
                t = time.monotonic()
                while len(inflight) >= self.saver.max_inflight:
                    content.append(inflight.popleft().result().hex())
                stats.worker_wait += time.monotonic() - t  # only this thread writes it
            inflight.append(self.saver.submit(DATA, data))
        t = time.monotonic()
        while inflight:
            content.append(inflight.popleft().result().hex())
        stats.worker_wait += time.monotonic() - t
        ts = mtime or format_time(now())
        node = tree.Node(
            name=os.path.basename(path),
            type="file",
            mode=tree.FILE_MODE,
            mtime=ts,
            atime=ts,
            ctime=ts,
            uid=os.getuid(),
            gid=os.getgid(),
            size=size,
            content=content,
        )
        self._place(path, node)
        self.stats.add(files=1)
        return node

    def add_directory(self, root: str, prefix: str = "") -> None:
        """Back up the files below ``root`` (regular files and directories), named relative to it."""
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            rel = os.path.relpath(dirpath, root)
            rel = "" if rel == "." else rel
            st = os.lstat(dirpath)
            self._directory(os.path.join(prefix, rel) if (prefix or rel) else "").node = _node_from_stat(
                os.path.basename(dirpath), "dir", st
            )
            for name in sorted(filenames):
                full = os.path.join(dirpath, name)
                st = os.lstat(full)
                if not statmod.S_ISREG(st.st_mode):
                    continue
                with open(full, "rb") as f:
                    node = self.add_stream(os.path.join(prefix, rel, name), f)
                meta = _node_from_stat(name, "file", st)
                meta.size, meta.content = node.size, node.content
                self._place(os.path.join(prefix, rel, name), meta)

    def _directory(self, path: str) -> _Dir:
        d = self._root
        for part in [p for p in path.split("/") if p]:
            child = d.children.setdefault(part, _Dir())
            if not isinstance(child, _Dir):
                raise ValueError(f"{path}: a file and a directory share a name")
            d = child
        return d

    def _place(self, path: str, node: tree.Node) -> None:
        parent, _, _ = path.strip("/").rpartition("/")
        self._directory(parent).children[node.name] = node

    def _save_tree(self, d: _Dir) -> str:
        nodes = []
        for name, child in d.children.items():
            if isinstance(child, _Dir):
                meta = child.node or tree.Node(name=name, type="dir", mode=tree.DIR_MODE)
                ts = meta.mtime or format_time(now())
                nodes.append(
                    tree.Node(
                        name=name,
                        type="dir",
                        mode=meta.mode or tree.DIR_MODE,
                        mtime=ts,
                        atime=meta.atime or ts,
                        ctime=meta.ctime or ts,
                        uid=meta.uid,
                        gid=meta.gid,
                        subtree=self._save_tree(child),
                    )
                )
            else:
                nodes.append(child)
        return self.saver.store(TREE, tree.encode_tree(nodes)).hex()

    def commit(
        self,
        *,
        hostname: str,
        paths: list[str],
        tags: list[str] | None = None,
        parent: str | None = None,
        username: str = "",
        program_version: str = "",
    ) -> BackupResult:
        """Write trees, flush packs and index, then the snapshot: the backup exists from here on."""
        tree_id = self._save_tree(self._root)
        self.saver.flush()
        snap = Snapshot(
            time=format_time(now()),
            tree=tree_id,
            paths=paths,
            hostname=hostname,
            username=username,
            tags=list(tags or []),
            parent=parent,
            uid=os.getuid(),
            gid=os.getgid(),
            program_version=program_version,
        )
        self.stats.add(bytes_stored=self.repo.save_snapshot(snap))
        self._done = True
        self.saver.close()
        return BackupResult(snap, self.stats)


def _node_from_stat(name: str, kind: str, st: os.stat_result) -> tree.Node:
    from datetime import UTC, datetime

    def ts(ns: int) -> str:
        return format_time(datetime.fromtimestamp(ns / 1e9, UTC))

    mode = statmod.S_IMODE(st.st_mode)
    if kind == "dir":
        mode |= 0x80000000
    return tree.Node(
        name=name,
        type=kind,
        mode=mode,
        mtime=ts(st.st_mtime_ns),
        atime=ts(st.st_atime_ns),
        ctime=ts(st.st_ctime_ns),
        uid=st.st_uid,
        gid=st.st_gid,
    )
