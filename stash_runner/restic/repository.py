"""A restic repository (format 1 or 2) on any backend: keys, config, unpacked files, blobs, index."""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import socket
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from backends.base import (
    AccessDeniedError,
    Backend,
    BackendError,
    FileType,
    Handle,
    NotFoundError,
    detect_layout,
)
from stash_runner.errors import (
    IntegrityError,
    RepositoryError,
    RepositoryNotFound,
    SnapshotNotFound,
    StorageAccessDenied,
    WrongPassword,
)

from . import compression, crypto
from .chunker_polynomial import random_polynomial
from .index import Index, index_json, index_supersedes, split_for_files
from .pack import PackedBlob
from .snapshot import Snapshot
from .timefmt import format_time, now

# restic tries at most this many key files before giving up.
MAX_KEYS_TRIED = 20


@dataclass(frozen=True)
class Config:
    version: int
    id: str
    chunker_polynomial: int


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Repository:
    def __init__(self, backend: Backend, key: crypto.Key, config: Config):
        self.backend = backend
        self.key = key
        self.config = config
        self.index = Index()

    # -- opening ---------------------------------------------------------------------------------

    @staticmethod
    def exists(backend: Backend) -> bool:
        return _call(backend, lambda: backend.exists(Handle(FileType.CONFIG)))

    @classmethod
    def open(cls, backend: Backend, password: str) -> Repository:
        """Open an existing repository; WrongPassword when no key opens, RepositoryNotFound if absent."""
        if not cls.exists(backend):
            raise RepositoryNotFound(f"no repository at {backend.location}")
        # Before the keys are listed: a repository in restic's s3legacy layout keeps them under key/, not keys/.
        _call(backend, lambda: detect_layout(backend))
        names = sorted(name for name, _ in _call(backend, lambda: list(backend.list(FileType.KEY))))
        master = None
        for name in names[:MAX_KEYS_TRIED]:
            raw = _call(backend, lambda n=name: backend.load(Handle(FileType.KEY, n)))
            try:
                master = crypto.open_key_file(json.loads(raw), password.encode())
                break
            except WrongPassword:
                continue
            except (ValueError, KeyError) as e:
                raise IntegrityError(f"{backend.location}: key file {name[:8]} is unreadable: {e}") from None
        if master is None:
            raise WrongPassword(
                f"wrong password: the repository password opens none of the {len(names)} key(s) "
                f"of {backend.location}"
            )
        raw = _call(backend, lambda: backend.load(Handle(FileType.CONFIG)))
        try:
            cfg = json.loads(master.decrypt(raw))
        except IntegrityError:
            raise IntegrityError(f"{backend.location}: config does not decrypt with the key") from None
        config = Config(cfg["version"], cfg["id"], int(cfg["chunker_polynomial"], 16))
        if config.version not in (1, 2):
            raise RepositoryError(f"{backend.location}: unsupported repository version {config.version}")
        return cls(backend, master, config)

    @classmethod
    def init(cls, backend: Backend, password: str, version: int = 2) -> Repository:
        if cls.exists(backend):
            raise RepositoryError(f"a repository already exists at {backend.location}")
        _call(backend, backend.create)
        master = crypto.Key.random()
        keyfile = crypto.make_key_file(
            master, password.encode(), current_username(), socket.gethostname(), format_time(now())
        )
        raw_key = json.dumps(keyfile).encode()
        # The key first, then the config: a crash in between leaves no repository, and a retry works.
        _call(backend, lambda: backend.save(Handle(FileType.KEY, sha256_hex(raw_key)), raw_key))
        config = Config(version, os.urandom(32).hex(), random_polynomial())
        cfg = {"version": version, "id": config.id, "chunker_polynomial": f"{config.chunker_polynomial:x}"}
        enc = master.encrypt(json.dumps(cfg).encode())
        _call(backend, lambda: backend.save(Handle(FileType.CONFIG), enc))
        return cls(backend, master, config)

    @property
    def compressed(self) -> bool:
        """Version 1 repositories must never get compressed blobs or files."""
        return self.config.version >= 2

    # -- unpacked files (index, snapshots, locks) -------------------------------------------------

    def encode_unpacked(self, obj: dict) -> bytes:
        plain = json.dumps(obj, separators=(",", ":")).encode()
        if self.compressed:
            plain = b"\x02" + compression.Compressor().compress(plain)
        return self.key.encrypt(plain)

    def save_unpacked(self, ftype: FileType, obj: dict) -> tuple[str, int]:
        """Store a JSON file; returns (its id, its stored size)."""
        data = self.encode_unpacked(obj)
        name = sha256_hex(data)
        _call(self.backend, lambda: self.backend.save(Handle(ftype, name), data))
        return name, len(data)

    def load_unpacked(self, ftype: FileType, name: str) -> dict:
        h = Handle(ftype, name)
        data = _call(self.backend, lambda: self.backend.load(h))
        if sha256_hex(data) != name:
            raise IntegrityError(f"{self.backend.location}: {h} does not match its name (damaged)")
        plain = self.key.decrypt(data)
        if plain[:1] == b"\x02":
            plain = compression.decompress(plain[1:])
        elif plain[:1] not in (b"{", b"["):
            raise IntegrityError(f"{self.backend.location}: {h} has an unknown format")
        return json.loads(plain)

    def list_files(self, ftype: FileType) -> list[tuple[str, int]]:
        return _call(self.backend, lambda: list(self.backend.list(ftype)))

    def file_size(self, h: Handle) -> int:
        return _call(self.backend, lambda: self.backend.stat(h))

    def remove(self, h: Handle) -> None:
        _call(self.backend, lambda: self.backend.remove(h))

    def _parallel(self, fn: Callable, items: Iterable) -> list:
        with ThreadPoolExecutor(max(2, self.backend.connections)) as pool:
            return list(pool.map(fn, items))

    # -- index --------------------------------------------------------------------------------

    def load_index(self) -> None:
        """Read the index afresh (replacing what was loaded before: other writers may have added to it)."""
        names = [name for name, _ in self.list_files(FileType.INDEX)]
        loaded = self._parallel(lambda n: (n, self.load_unpacked(FileType.INDEX, n)), names)
        superseded = {s for _, obj in loaded for s in index_supersedes(obj)}
        fresh = Index()
        for name, obj in loaded:
            if name not in superseded:
                fresh.add_index_json(obj)
        self.index = fresh

    def save_index(self, packs: list[tuple[bytes, list[PackedBlob]]]) -> int:
        """Write index files for packs; returns the bytes stored."""
        stored = 0
        for group in split_for_files(packs):
            _, size = self.save_unpacked(FileType.INDEX, index_json(group))
            stored += size
        return stored

    # -- packs and blobs ---------------------------------------------------------------------

    def save_pack(self, pack_id: bytes, data: bytes) -> None:
        _call(self.backend, lambda: self.backend.save(Handle(FileType.DATA, pack_id.hex()), data))

    def load_blob(self, blob_id: bytes) -> bytes:
        """A blob's plaintext, checked against its MAC and its ID."""
        found = self.index.lookup(blob_id)
        if found is None:
            raise IntegrityError(f"{self.backend.location}: blob {blob_id.hex()[:16]} is in no index")
        pack_id, b = found
        h = Handle(FileType.DATA, pack_id.hex())

        def load() -> bytes:
            try:
                return self.backend.load(h, b.offset, b.length)
            except NotFoundError as e:
                # Name the blob too: the pack is what is missing, the blob is what the caller needed.
                raise NotFoundError(f"{e} (the pack of {b.type} blob {blob_id.hex()})") from None

        return self.decode_blob(_call(self.backend, load), b, pack_id)

    def decode_blob(self, data: bytes, b: PackedBlob, pack_id: bytes) -> bytes:
        try:
            plain = self.key.decrypt(data)
        except IntegrityError:
            raise IntegrityError(
                f"{self.backend.location}: blob {b.id.hex()[:16]} in pack {pack_id.hex()[:16]} "
                "fails its MAC (damaged)"
            ) from None
        if b.uncompressed_length:
            plain = compression.decompress(plain, b.uncompressed_length)
        if hashlib.sha256(plain).digest() != b.id:
            raise IntegrityError(
                f"{self.backend.location}: blob {b.id.hex()[:16]} in pack {pack_id.hex()[:16]} "
                "does not match its ID (damaged)"
            )
        return plain

    # -- snapshots ---------------------------------------------------------------------------

    def list_snapshots(self) -> list[Snapshot]:
        names = [name for name, _ in self.list_files(FileType.SNAPSHOT)]
        snaps = self._parallel(
            lambda n: Snapshot.from_json(self.load_unpacked(FileType.SNAPSHOT, n), n), names
        )
        return sorted(snaps, key=lambda s: s.datetime)

    def save_snapshot(self, snap: Snapshot) -> int:
        snap.id, size = self.save_unpacked(FileType.SNAPSHOT, snap.to_json())
        return size

    def find_snapshot(self, spec: str, hostname: str | None = None, path: str | None = None) -> Snapshot:
        """``latest`` (optionally for a host and path) or a unique ID prefix."""
        snaps = self.list_snapshots()
        if spec in ("", "latest"):
            matching = [
                s for s in snaps if (not hostname or s.hostname == hostname) and (not path or path in s.paths)
            ]
            if not matching:
                what = " and ".join(
                    x for x in (hostname and f"host {hostname!r}", path and f"path {path!r}") if x
                )
                raise SnapshotNotFound(
                    f"no snapshot{' for ' + what if what else ''} in {self.backend.location}"
                )
            return matching[-1]
        found = [s for s in snaps if s.id.startswith(_snapshot_id(spec))]
        if len(found) != 1:
            why = "no snapshot" if not found else f"{len(found)} snapshots"
            raise SnapshotNotFound(f"{why} with ID {spec!r} in {self.backend.location}")
        return found[0]


def _snapshot_id(spec: str) -> str:
    """The ID in ``spec``, also when given as Stash names snapshots, ``<repository>-<short id>`` (as a RestoreSession
    rule holds it and the operator passes it to restore Functions as --snapshot). An ID is hex, so a name with a
    dash before a hex tail can only mean that form."""
    name, dash, tail = spec.rpartition("-")
    if dash and name and tail and all(c in "0123456789abcdef" for c in tail):
        return tail
    return spec


def current_username() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container UID without a passwd entry
        return str(os.getuid())


def _call(backend: Backend, fn: Callable):
    """Run a backend call, turning storage failures into RepositoryError with the location."""
    try:
        return fn()
    except NotFoundError as e:
        raise RepositoryError(str(e)) from None
    except AccessDeniedError as e:
        raise StorageAccessDenied(str(e)) from None
    except BackendError as e:
        raise RepositoryError(str(e)) from None
