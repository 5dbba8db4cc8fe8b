"""The collections of a data directory: created by RPC, opened (and recovered) at start.

    DATA/collections/<name>/meta.json    a built-in collection's CollectionSpec
    DATA/collections/<name>/wal-*.log    its log and snapshots (runtime/index/wal.py)
    DATA/milvus.db                       the milvus-lite database, unless --milvus-uri names a server

Milvus collections live in Milvus, spec included (runtime/index/milvus.py): a replica lists and
opens those that other replicas sharing the server created, and forgets those they dropped. (A
data directory from before keeps a meta.json for its milvus collections; they open as before.)

A collection remembers the model fingerprint it was made with; the server refuses to mix models.
A collection is created in a hidden folder and renamed into place, its directory entries fsynced,
so a crash leaves it whole or absent (a leftover `.<name>.creating` is removed at start). Every
folder under collections/ must describe itself: one without a readable meta.json stops the start
with the folder named, rather than the collection vanishing.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from runtime.errors import AlreadyExists, CorruptData, InvalidInput, NotFound, shown
from runtime.index import milvus
from runtime.index.base import COLLECTION_BACKENDS, Collection, CollectionSpec, check_indexed, check_name
from runtime.index.builtin import BuiltinCollection
from runtime.index.wal import fsync_dir

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
        self.by_name: dict[str, Collection] = {}
        for folder in sorted(self.root.iterdir()):
            if folder.name.startswith(".") and folder.name.endswith(".creating"):
                log.info("removing %s: a collection whose creation did not finish", folder)
                shutil.rmtree(folder, ignore_errors=True)
            elif folder.is_dir():
                spec = read_spec(folder)
                self.by_name[spec.name] = self._open(spec, folder, create=False)
                log.info(
                    "collection %s (%s): %d records", spec.name, spec.backend, self.by_name[spec.name].count()
                )

    def _open(self, spec: CollectionSpec, root: Path, create: bool) -> Collection:
        if spec.backend == "builtin":
            return BuiltinCollection(spec, root, self.fsync, repair=self.repair)
        return milvus.MilvusCollection(spec, self._milvus_client(), create)

    def _milvus_client(self) -> Any:
        if self._milvus is None:
            self._milvus = milvus.connect(self.milvus_uri)
        return self._milvus

    def _milvus_in_use(self) -> bool:
        """Connected, a server named, or a milvus-lite file that exists: Milvus may hold collections."""
        return self._milvus is not None or "://" in self.milvus_uri or Path(self.milvus_uri).exists()

    def _sync_milvus(self, name: str | None = None) -> None:
        """Forgets collections dropped meanwhile and opens the Milvus ones (`name`, or all) that
        another replica created. Called with the lock held."""
        for gone in [n for n, c in self.by_name.items() if c.closed]:
            del self.by_name[gone]
        if not self._milvus_in_use():
            return
        client = self._milvus_client()
        wanted = [name] if name is not None else milvus.names(client)
        if name is None:  # the whole list: what is not in it was dropped
            dropped = [n for n, c in self.by_name.items() if c.spec.backend == "milvus" and n not in wanted]
            for gone in dropped:
                self.by_name.pop(gone).closed = True
        for n in wanted:
            if n in self.by_name:
                continue
            try:
                spec = milvus.find(client, n)
            except InvalidInput:  # a Milvus collection of someone else's: not ours to list
                continue
            if spec is not None:
                self.by_name[n] = milvus.MilvusCollection(spec, client, create=False)

    def create(self, name: str, backend: str, indexed: Sequence[str] = ()) -> Collection:
        """A new collection; `indexed`: payload field paths to keep postings of (built-in only:
        Milvus evaluates filters itself)."""
        check_name(name)
        backend = backend or "builtin"
        if backend not in COLLECTION_BACKENDS:
            raise InvalidInput(f"backend {shown(backend)} is not one of {', '.join(COLLECTION_BACKENDS)}")
        spec = CollectionSpec(
            name, backend, self.dim, self.codebook_size, self.fingerprint, check_indexed(indexed)
        )
        with self.lock:
            self._sync_milvus(name)
            if name in self.by_name:
                raise AlreadyExists(f"collection {name!r} exists ({self.by_name[name].spec.backend})")
            final = self.root / name
            if final.exists():
                raise AlreadyExists(f"{final} exists but is not an open collection: move it away first")
            if backend == "milvus":
                if self._milvus_client().has_collection(name):
                    raise AlreadyExists(f"Milvus already has a collection {name!r} (not made by Tessera)")
                collection: Collection = milvus.MilvusCollection(spec, self._milvus_client(), create=True)
            else:
                collection = self._create_builtin(spec, final)
            self.by_name[name] = collection
            return collection

    def _create_builtin(self, spec: CollectionSpec, final: Path) -> Collection:
        """Made in a hidden folder, renamed into place, the directory fsynced; then opened there."""
        tmp = self.root / f".{spec.name}.creating"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir()
            write_durably(tmp / "meta.json", json.dumps(asdict(spec), indent=2))
            self._open(spec, tmp, create=True).destroy()
            tmp.rename(final)
            fsync_dir(self.root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return self._open(spec, final, create=False)

    def get(self, name: str) -> Collection:
        collection = self.by_name.get(name)
        if collection is None or collection.closed:
            with self.lock:
                self._sync_milvus(name)
            collection = self.by_name.get(name)
        if collection is None:
            have = ", ".join(sorted(self.by_name)) or "none"
            raise NotFound(f"no collection {shown(name)} (collections: {have})")
        if collection.spec.fingerprint != self.fingerprint:
            raise InvalidInput(
                f"collection {name!r} holds vectors of model {collection.spec.fingerprint[:12]}…; "
                f"this server serves {self.fingerprint[:12]}… (re-index with this model)"
            )
        return collection

    def drop(self, name: str) -> None:
        with self.lock:
            collection = self.by_name.pop(name, None)
            if collection is None:
                raise NotFound(f"no collection {shown(name)}")
            collection.destroy()
            if (self.root / name).exists():  # milvus collections have no folder (older ones do)
                shutil.rmtree(self.root / name)
                fsync_dir(self.root)

    def all(self) -> list[Collection]:
        with self.lock:
            self._sync_milvus()
            return [self.by_name[k] for k in sorted(self.by_name)]

    def close(self) -> None:
        for collection in self.by_name.values():
            collection.close()
        if self._milvus is not None:
            self._milvus.close()


def read_spec(folder: Path) -> CollectionSpec:
    """A collection folder's meta.json; a missing or damaged one raises CorruptData naming it."""
    meta = folder / "meta.json"
    if not meta.is_file():
        raise CorruptData(
            f"{meta} is missing: {folder} is a collection folder without its description. Restore the "
            "file, or move the folder out of the data directory."
        )
    try:
        spec = CollectionSpec(**json.loads(meta.read_text()))
    except (OSError, ValueError, TypeError) as e:  # JSONDecodeError is a ValueError; TypeError: wrong keys
        raise CorruptData(f"{meta}: unreadable collection description ({e}). Restore the file.") from e
    if spec.name != folder.name:
        raise CorruptData(f"{meta} describes collection {spec.name!r}, not {folder.name!r}")
    return spec


def write_durably(path: Path, text: str) -> None:
    """The file and its directory entry on disk before returning."""
    with path.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(path.parent)
