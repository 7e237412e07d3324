"""The Elasticsearch / OpenSearch driver, in one of two modes:

- ``stream`` (the default of ``backup``/``restore``): every index's settings, mappings, aliases and documents
  read through the cluster's official client and streamed into the snapshot as files under ``/elasticsearch``;
  no interim volume. Restore creates the indices, bulk-loads them and checks their counts.
- ``interim`` (the default of Stash's ``backup-es``/``restore-es``): Stash's flow. ``multielasticdump`` writes
  the indices into the interim directory, which is backed up as a directory snapshot at its own path, as
  ``restic backup <dir>`` does; restore extracts it there and loads it with ``multielasticdump``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager

from stash_runner.errors import BadInput

from ..base import Driver, DriverOptions, Dump, Endpoint, HostDump, RestoreHost, SnapshotFiles
from ..wait import wait_until
from . import interim, stream
from .connection import SearchClient, Server, connect, waitable
from .indices import list_indices, select

log = logging.getLogger("stash_runner")

MODES = ("stream", "interim")
#: Stash's interim directory when the invoker has no interim volume template (its INTERIM_DATA_DIR)
STASH_TMP = "/stash-tmp"
INTERIM_SUBDIR = "stash-interim-volume/data"


def default_interim_dir(scratch_dir: str | None) -> str:
    return os.path.join(scratch_dir or STASH_TMP, INTERIM_SUBDIR)


class ElasticsearchDriver(Driver):
    filename = "elasticsearch"

    def __init__(self, endpoint: Endpoint, options: DriverOptions):
        self.mode = options.mode or "stream"
        if self.mode not in MODES:
            raise BadInput(f"--mode {self.mode!r}: Elasticsearch is backed up in mode stream or interim")
        if self.mode == "stream" and options.args.strip():
            raise BadInput("--es-args are multielasticdump's options, for --mode interim; in stream mode choose "
                           "indices with --indices")
        if self.mode == "interim" and not options.interim_dir and options.scratch_dir is None \
                and not os.path.isdir(STASH_TMP):
            raise BadInput("--interim-data-dir is missing (interim mode dumps into it; Stash passes "
                           "INTERIM_DATA_DIR)")
        self.options = options
        self.server = Server.from_endpoint(endpoint, user=options.user)
        self.interim_dir = os.path.abspath(options.interim_dir or default_interim_dir(options.scratch_dir))
        self.target = f"Elasticsearch at {self.server.url} ({endpoint.ref})"
        self._client: SearchClient | None = None

    @classmethod
    def from_endpoint(cls, endpoint: Endpoint, options: DriverOptions) -> ElasticsearchDriver:
        return cls(endpoint, options)

    @property
    def snapshot_path(self) -> str:
        return stream.ROOT if self.mode == "stream" else self.interim_dir

    # -- connections -------------------------------------------------------------------------

    def wait_ready(self, timeout: float) -> None:
        def check() -> None:
            if self._client is None:
                self._client = connect(self.server)
            self._client.request("GET", "/_cluster/health")

        wait_until(f"{self.target} to answer", check, timeout, log.info, waitable=waitable)
        assert self._client is not None
        self.target = f"{self._client.name} ({self.server.ref})"
        log.info("connected to %s", self._client.name)

    def client(self) -> SearchClient:
        if self._client is None:
            self._client = connect(self.server)
        return self._client

    # -- backup ------------------------------------------------------------------------------

    def backup_hosts(self, hostname: str) -> AbstractContextManager[list[HostDump]]:
        return contextlib.nullcontext([HostDump(hostname, self.dump, paths=[self.snapshot_path])])

    def dump(self) -> AbstractContextManager[Dump]:
        client = self.client()
        chosen = select(list_indices(client), self.options.indices, self.options.include_hidden, self.target)
        log.info("backing up %d indices of %s (%s mode): %s", len(chosen), self.target, self.mode,
                 _names(i.name for i in chosen))
        if self.mode == "stream":
            return stream.StreamDump(client, chosen, slices=self.options.max_concurrency, target=self.target)
        return interim.InterimDump(self.server, chosen, interim_dir=self.interim_dir,
                                   scratch_dir=self.options.scratch_dir, es_args=self.options.args,
                                   meta=self.options.interim_meta, target=self.target)

    # -- restore -----------------------------------------------------------------------------

    def restore_hosts(self, hostname: str) -> list[RestoreHost]:
        return [RestoreHost(hostname, restore_files=self.restore_files)]

    def restore_files(self, files: SnapshotFiles) -> None:
        client = self.client()
        if self.mode == "stream":
            loaded = stream.restore_stream(client, files, overwrite=self.options.overwrite,
                                           workers=self.options.max_concurrency, target=self.target)
        else:
            loaded = interim.restore_interim(self.server, client, files, interim_dir=self.interim_dir,
                                             scratch_dir=self.options.scratch_dir, es_args=self.options.args,
                                             overwrite=self.options.overwrite, target=self.target)
        log.info("restored %d indices, %d documents into %s", len(loaded), sum(loaded.values()), self.target)

    def restore(self, chunks: Iterator[bytes]) -> None:
        raise AssertionError("an Elasticsearch restore reads the snapshot's files (restore_files)")

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def _names(names: Iterator[str], limit: int = 10) -> str:
    listed = list(names)
    text = ", ".join(listed[:limit])
    return text + (f" and {len(listed) - limit} more" if len(listed) > limit else "") if listed else "none"
