"""A folder of embedded vectors in Parquet shards: what `python -m runtime.batch` writes and
`python -m runtime.client load` reads. Any Parquet reader (pyarrow, DuckDB, Spark, a vector
database's bulk import) reads the shards as they are.

    OUT/manifest.json          the job: format, bundle fingerprint, embed_dim, top codes per item,
                               source, item count, items per shard; written before any shard
    OUT/shard-000000.parquet   id: string, vector: fixed_size_list<float32>[d], codes:
                               fixed_size_list<int32>[k] (top codes, best first), payload: string (JSON);
                               file metadata: tessera.fingerprint, tessera.skipped ([[name, reason], ...])
    OUT/skipped.jsonl          written when the job is done: every item skipped, {"name", "reason"}

OUT is a local folder or an fsspec URL. Shard k holds items k * shard_items ... in source order,
less those skipped. A shard is written under a temporary name and moved into place, so a shard
that exists is whole: a re-run of the job writes only the shards that do not.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np

FORMAT = "tessera-vectors/1"
MANIFEST = "manifest.json"
SKIPPED = "skipped.jsonl"
FINGERPRINT_KEY = b"tessera.fingerprint"
SKIPPED_KEY = b"tessera.skipped"


class ShardError(Exception):
    """A vectors folder that cannot be written or read, in one line naming the file."""


@dataclass(frozen=True)
class Job:
    """manifest.json: what a vectors folder holds."""

    fingerprint: str  # the bundle's: vectors of another model do not mix
    embed_dim: int
    top_codes: int
    source: str
    items: int
    shard_items: int
    first: str  # the first and last items' names: a changed source is another job
    last: str
    format: str = FORMAT

    @property
    def shards(self) -> int:
        return -(-self.items // self.shard_items)


@dataclass(frozen=True)
class Shard:
    ids: list[str]
    vectors: np.ndarray  # (n, d) float32
    payloads: list[str]  # JSON
    fingerprint: str
    skipped: list[tuple[str, str]]  # (item name, reason)


class Folder:
    """A vectors folder (local or fsspec URL)."""

    def __init__(self, location: str) -> None:
        import fsspec

        self.location = location.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.location)
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        self.local = "local" in protocols  # plain files: fsync and rename

    def path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def shard_name(self, k: int) -> str:
        return f"shard-{k:06d}.parquet"

    # -- the job ----------------------------------------------------------------------------------

    def job(self) -> Job:
        """The manifest, read and checked."""
        path = self.path(MANIFEST)
        try:
            with self.fs.open(path, "rt", encoding="utf-8") as f:
                raw = json.load(f)
            job = Job(**raw)
        except FileNotFoundError:
            raise ShardError(f"{self.location}: no {MANIFEST} (not a folder of vectors)") from None
        except (OSError, ValueError, TypeError) as e:
            raise ShardError(f"{self.location}/{MANIFEST}: unreadable ({e})") from None
        if job.format != FORMAT:
            raise ShardError(f"{self.location}/{MANIFEST}: format {job.format!r}, not {FORMAT!r}")
        return job

    def start(self, job: Job) -> None:
        """Writes the manifest, or checks that the one there is this job's (a re-run)."""
        self.fs.makedirs(self.root, exist_ok=True)
        if self.fs.exists(self.path(MANIFEST)):
            there = self.job()
            if there != job:
                changed = [k for k, v in asdict(job).items() if asdict(there).get(k) != v]
                raise ShardError(
                    f"{self.location} holds shards of another job ({', '.join(changed)} differ): "
                    "give another --out, or remove it to start over"
                )
        else:
            self._write(MANIFEST, json.dumps(asdict(job), indent=1).encode())
        for stale in self.fs.glob(self.path(".*.tmp-*")):  # a killed run's half-written files
            self.fs.rm(stale)

    def done(self) -> set[int]:
        """The shards written so far."""
        names = (n.rsplit("/", 1)[-1] for n in self.fs.glob(self.path("shard-*.parquet")))
        return {int(n[len("shard-") : -len(".parquet")]) for n in names}

    # -- shards -----------------------------------------------------------------------------------

    def write_shard(
        self, k: int, fingerprint: str, ids: list[str], vectors: np.ndarray, codes: np.ndarray,
        payloads: list[str], skipped: list[tuple[str, str]],
    ) -> None:  # fmt: skip
        """vectors (n, d) float32, codes (n, k) int32."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        def rows_of(values: np.ndarray, kind: pa.DataType) -> pa.FixedSizeListArray:
            return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), kind), values.shape[1])

        table = pa.table({
            "id": pa.array(ids, pa.string()),
            "vector": rows_of(vectors, pa.float32()),
            "codes": rows_of(codes, pa.int32()),
            "payload": pa.array(payloads, pa.string()),
        })  # fmt: skip
        meta = {FINGERPRINT_KEY: fingerprint.encode(), SKIPPED_KEY: json.dumps(skipped).encode()}
        table = table.replace_schema_metadata(meta)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        self._write(self.shard_name(k), sink.getvalue().to_pybytes())

    def shard_meta(self, k: int) -> tuple[int, str, list[tuple[str, str]]]:
        """(rows, fingerprint, skipped) from the file's footer, without reading the vectors."""
        import pyarrow.parquet as pq

        name = self.shard_name(k)
        try:
            with self.fs.open(self.path(name), "rb") as f:
                meta = pq.read_metadata(f)
            fingerprint, skipped = _tags(meta.metadata)
            return meta.num_rows, fingerprint, skipped
        except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
            raise ShardError(f"{self.location}/{name}: unreadable ({e})") from None

    def read_shard(self, k: int) -> Shard:
        import pyarrow.parquet as pq

        name = self.shard_name(k)
        try:
            with self.fs.open(self.path(name), "rb") as f:
                table = pq.read_table(f)
        except (OSError, ValueError) as e:
            raise ShardError(f"{self.location}/{name}: unreadable ({e})") from None
        column = table.column("vector").combine_chunks()
        d = column.type.list_size
        vectors = column.values.to_numpy(zero_copy_only=False).reshape(-1, d)  # (n, d)
        fingerprint, skipped = _tags(table.schema.metadata)
        ids, payloads = table.column("id").to_pylist(), table.column("payload").to_pylist()
        return Shard(ids, vectors, payloads, fingerprint, skipped)

    def shards(self, job: Job) -> Iterator[tuple[int, Shard]]:
        """Every shard of the job, in order, each checked to be of the job's model."""
        missing = sorted(set(range(job.shards)) - self.done())
        if missing:
            raise ShardError(f"{self.location}: {len(missing)} of {job.shards} shards missing "
                             f"(first {self.shard_name(missing[0])}): finish the job first")  # fmt: skip
        for k in range(job.shards):
            shard = self.read_shard(k)
            if shard.fingerprint != job.fingerprint:
                raise ShardError(
                    f"{self.location}/{self.shard_name(k)}: vectors of model {shard.fingerprint[:12]}…, "
                    f"the folder's manifest names {job.fingerprint[:12]}…"
                )
            yield k, shard

    def write_skipped(self, skipped: list[tuple[str, str]]) -> None:
        lines = (json.dumps({"name": n, "reason": r}) + "\n" for n, r in skipped)
        self._write(SKIPPED, "".join(lines).encode())

    def _write(self, name: str, data: bytes) -> None:
        """Whole or not at all: a temporary file moved into place (fsynced first on a local disk)."""
        tmp = self.path(f".{name}.tmp-{uuid.uuid4().hex[:8]}")
        final = self.path(name)
        if self.local:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
            return
        with self.fs.open(tmp, "wb") as f:
            f.write(data)
        self.fs.mv(tmp, final)


def _tags(metadata: dict[bytes, bytes] | None) -> tuple[str, list[tuple[str, str]]]:
    """(fingerprint, skipped items) from a shard's file metadata."""
    kv = metadata or {}
    skipped = [(str(a), str(b)) for a, b in json.loads(kv.get(SKIPPED_KEY, b"[]"))]
    return kv.get(FINGERPRINT_KEY, b"").decode(), skipped
