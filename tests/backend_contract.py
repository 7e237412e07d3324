"""What every Backend must do, checked the same way for each provider."""

from __future__ import annotations

import os

import pytest

from backends.base import Backend, FileType, Handle, NotFoundError


def check_contract(backend: Backend) -> None:
    """Run on an empty location: create, save, ranged load, stat, list, remove, not-found."""
    backend.create()
    backend.create()  # idempotent: a second init attempt after a crash must not fail here
    assert list(backend.list(FileType.SNAPSHOT)) == []
    assert not backend.exists(Handle(FileType.CONFIG))

    payload = os.urandom(3 * 1024 * 1024 + 17)
    pack = Handle(FileType.DATA, os.urandom(32).hex())
    backend.save(pack, payload)
    backend.save(Handle(FileType.CONFIG), b"cfg")
    for i in range(3):
        backend.save(Handle(FileType.SNAPSHOT, f"{i:064x}"), b"s%d" % i)

    assert backend.stat(pack) == len(payload)
    assert backend.load(pack) == payload
    assert backend.load(pack, 1000, 5000) == payload[1000:6000]
    assert backend.load(pack, len(payload) - 10) == payload[-10:]
    assert backend.load(Handle(FileType.CONFIG)) == b"cfg"
    assert backend.exists(Handle(FileType.CONFIG))

    assert sorted(backend.list(FileType.SNAPSHOT)) == [(f"{i:064x}", 2) for i in range(3)]
    assert list(backend.list(FileType.DATA)) == [(pack.name, len(payload))]
    assert list(backend.list(FileType.INDEX)) == []

    missing = Handle(FileType.DATA, "ab" * 32)
    with pytest.raises(NotFoundError):
        backend.stat(missing)
    with pytest.raises(NotFoundError):
        backend.load(missing)
    backend.remove(missing)  # removing what is gone is not an error (a retried remove)

    backend.remove(Handle(FileType.SNAPSHOT, f"{0:064x}"))
    assert sorted(n for n, _ in backend.list(FileType.SNAPSHOT)) == [f"{i:064x}" for i in (1, 2)]


def mirror_to_local(backend: Backend, path: str) -> str:
    """Copy a remote repository into a directory, so restic can judge it where it cannot reach the
    emulator itself (restic 0.14's gs: and azure: backends have no endpoint override)."""
    from backends.local import LocalBackend

    local = LocalBackend(path)
    local.create()
    for t in (FileType.KEY, FileType.INDEX, FileType.SNAPSHOT, FileType.LOCK, FileType.DATA):
        for name, _ in backend.list(t):
            local.save(Handle(t, name), backend.load(Handle(t, name)))
    local.save(Handle(FileType.CONFIG), backend.load(Handle(FileType.CONFIG)))
    return path
