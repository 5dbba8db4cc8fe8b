"""The collections of a data directory: created by RPC, opened (and recovered) at start.

    DATA/collections/<name>/meta.json    the CollectionSpec (+ the Milvus URI for milvus ones)
    DATA/collections/<name>/wal-*.log    built-in collections: log and snapshots (runtime/index/wal.py)
    DATA/milvus.db                       the milvus-lite database, unless --milvus-uri names a cluster

A collection remembers the model fingerprint it was made with; the server refuses to mix models.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any

from runtime.errors import AlreadyExists, InvalidInput, NotFound
from runtime.index import milvus
from runtime.index.base import BACKENDS, Collection, CollectionSpec, check_name
from runtime.index.builtin import BuiltinCollection

log = logging.getLogger(__name__)


class Collections:
    def __init__(
        self, data_dir: Path, dim: int, codebook_size: int, fingerprint: str, fsync: str = "always",
        milvus_uri: str = "", repair: bool = False,
    ) -> None:  # fmt: skip
        self.root = data_dir / "collections"
        self.root.mkdir(parents=True, exist_ok=True)
        self.dim, self.codebook_size, self.fingerprint = dim, codebook_size, fingerprint
        self.fsync, self.repair = fsync, repair
        self.milvus_uri = milvus_uri or str(data_dir / "milvus.db")
        self._milvus: Any = None
        self.lock = threading.Lock()
        self.open: dict[str, Collection] = {}
        for meta in sorted(self.root.glob("*/meta.json")):
            spec = CollectionSpec(**json.loads(meta.read_text()))
            self.open[spec.name] = self._open(spec, meta.parent, create=False)
            log.info("collection %s (%s): %d records", spec.name, spec.backend, self.open[spec.name].count())

    def _open(self, spec: CollectionSpec, root: Path, create: bool) -> Collection:
        if spec.backend == "builtin":
            return BuiltinCollection(spec, root, self.fsync, repair=self.repair)
        if self._milvus is None:
            self._milvus = milvus.connect(self.milvus_uri)
        return milvus.MilvusCollection(spec, self._milvus, create)

    def create(self, name: str, backend: str) -> Collection:
        check_name(name)
        backend = backend or "builtin"
        if backend not in BACKENDS:
            raise InvalidInput(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
        with self.lock:
            if name in self.open:
                raise AlreadyExists(f"collection {name!r} exists ({self.open[name].spec.backend})")
            spec = CollectionSpec(name, backend, self.dim, self.codebook_size, self.fingerprint)
            tmp = self.root / f".{name}.creating"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            (tmp / "meta.json").write_text(json.dumps(asdict(spec), indent=2))
            collection = self._open(spec, tmp, create=True)
            if isinstance(collection, BuiltinCollection):
                collection.destroy()
            tmp.rename(self.root / name)
            if isinstance(collection, BuiltinCollection):  # reopen at its final path
                collection = self._open(spec, self.root / name, create=False)
            self.open[name] = collection
            return collection

    def get(self, name: str) -> Collection:
        collection = self.open.get(name)
        if collection is None:
            have = ", ".join(sorted(self.open)) or "none"
            raise NotFound(f"no collection {name!r} (collections: {have})")
        if collection.spec.fingerprint != self.fingerprint:
            raise InvalidInput(
                f"collection {name!r} holds vectors of model {collection.spec.fingerprint[:12]}…; "
                f"this server serves {self.fingerprint[:12]}… (re-index with this model)"
            )
        return collection

    def drop(self, name: str) -> None:
        with self.lock:
            collection = self.open.pop(name, None)
            if collection is None:
                raise NotFound(f"no collection {name!r}")
            collection.destroy()
            shutil.rmtree(self.root / name)

    def list(self) -> list[Collection]:
        return [self.open[k] for k in sorted(self.open)]

    def close(self) -> None:
        for collection in self.open.values():
            collection.close()
        if self._milvus is not None:
            self._milvus.close()
