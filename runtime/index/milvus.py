"""A collection on Milvus through pymilvus: the same behaviour as the built-in one on an existing
(distributed) vector database. `uri` is a milvus-lite file (the Milvus engine embedded, from PyPI),
or a server address such as http://milvus:19530 that several replicas share.

Milvus holds what a collection is: its CollectionSpec is a property of the Milvus collection
(`tessera.spec`), so a replica finds collections another replica created (`find`, `names`), and a
collection dropped by another replica answers NotFound here, not an internal error.

Schema: id VARCHAR primary key, vector FLOAT_VECTOR (inner product, FLAT index: exact), code INT64
as the partition key, payload JSON. A routed search filters `code in [...]`, which Milvus resolves
to the partitions holding those codes. Writes use Strong consistency, so a search sees every
acknowledged upsert.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

import numpy as np

from runtime.errors import InvalidInput, MissingDependency, NotFound
from runtime.index.base import CollectionSpec, Hit, Results, Stored
from runtime.index.filters import MATCH_ALL, Filter, milvus_expr

HINT = "Milvus collections need pymilvus: `pip install 'tessera-embed[milvus]'` (pymilvus + milvus-lite)"
NUM_PARTITIONS = 64  # physical partitions the code key hashes into
SPEC_PROPERTY = "tessera.spec"
COLLECTION_NOT_FOUND = 100  # Milvus's error code
DELETE_BATCH = 4096  # ids per delete call of a delete by filter


def connect(uri: str) -> Any:
    try:
        from pymilvus import MilvusClient
    except ImportError as e:
        raise MissingDependency(HINT) from e
    return MilvusClient(uri)


def find(client: Any, name: str) -> CollectionSpec | None:
    """The spec of Milvus collection `name` as Tessera made it; None where there is none."""
    if not client.has_collection(name):
        return None
    raw = client.describe_collection(name).get("properties", {}).get(SPEC_PROPERTY)
    if raw is None:
        raise InvalidInput(f"Milvus collection {name!r} was not made by Tessera (no {SPEC_PROPERTY})")
    return CollectionSpec(**json.loads(raw))


def names(client: Any) -> list[str]:
    return list(client.list_collections())


class MilvusCollection:
    def __init__(self, spec: CollectionSpec, client: Any, create: bool) -> None:
        from pymilvus import DataType

        self.spec, self.client = spec, client
        self.lock = threading.Lock()  # one pymilvus client, used from worker threads
        self.closed = False  # dropped: every call raises NotFound (checked under the lock)
        if create and not client.has_collection(spec.name):
            schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=512)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=spec.dim)
            schema.add_field("code", DataType.INT64, is_partition_key=True)
            schema.add_field("payload", DataType.JSON)
            index = client.prepare_index_params()
            index.add_index("vector", index_type="FLAT", metric_type="IP")
            client.create_collection(
                spec.name, schema=schema, index_params=index, num_partitions=NUM_PARTITIONS,
                consistency_level="Strong", properties={SPEC_PROPERTY: json.dumps(asdict(spec))},
            )  # fmt: skip
        self.client.load_collection(spec.name)

    def upsert(self, ids: list[str], vectors: np.ndarray, codes: np.ndarray, payloads: list[str]) -> None:
        rows = [
            {"id": i, "vector": v.tolist(), "code": int(c), "payload": json.loads(p)}
            for i, v, c, p in zip(ids, vectors, codes, payloads, strict=True)
        ]
        with self._call():
            self.client.upsert(self.spec.name, rows)

    def delete(self, ids: list[str]) -> int:
        with self._call():
            present = self.client.get(self.spec.name, ids=list(dict.fromkeys(ids)), output_fields=["id"])
            if present:
                self.client.delete(self.spec.name, ids=[r["id"] for r in present])
            return len(present)

    def search(
        self, queries: np.ndarray, top_k: int, nprobe: int, code_scores: np.ndarray, where: Filter = MATCH_ALL
    ) -> Results:
        """Per query: Milvus's own index, filtered to the query's nprobe best codes where nprobe > 0,
        and to the records matching `where` (its FLAT index filters exactly)."""
        out: Results = []
        payload = milvus_expr(where)
        for query, scores in zip(queries, code_scores, strict=True):
            kwargs: dict[str, Any] = {}
            terms = [f"({payload})"] if payload else []
            if nprobe:
                probe = np.argsort(-scores, kind="stable")[:nprobe]  # (nprobe,) best codes first
                terms.append(f"code in [{', '.join(str(int(c)) for c in probe)}]")
            if terms:
                kwargs["filter"] = " and ".join(terms)
            with self._call():
                result = self.client.search(
                    self.spec.name, data=[query.tolist()], limit=top_k, output_fields=["payload", "code"],
                    search_params={"metric_type": "IP"}, **kwargs,
                )  # fmt: skip
            hits = [
                Hit(str(r["id"]), float(r["distance"]), json.dumps(e["payload"]), int(e["code"]))
                for r in result[0]
                for e in [r["entity"]]
            ]
            out.append((hits, -1))  # Milvus does not report how many vectors it scored
        return out

    def delete_where(self, where: Filter) -> int:
        """The matching ids, read page by page, then deleted by id: Milvus's delete by expression
        answers with keys it did not delete too, so its count would be wrong."""
        deleted = 0
        with self._call():
            pages = self.client.query_iterator(
                self.spec.name, batch_size=DELETE_BATCH, filter=milvus_expr(where), output_fields=["id"]
            )
            try:
                while rows := pages.next():
                    self.client.delete(self.spec.name, ids=[r["id"] for r in rows])
                    deleted += len(rows)
            finally:
                pages.close()
        return deleted

    def get(self, ids: list[str], vectors: bool = True) -> dict[str, Stored]:
        with self._call():
            asked = list(dict.fromkeys(ids))
            rows = self.client.get(self.spec.name, ids=asked, output_fields=self._fields(vectors))
        return {r["id"]: _stored(r, vectors) for r in rows}

    def page(
        self, after: str, limit: int, where: Filter = MATCH_ALL, vectors: bool = False
    ) -> list[tuple[str, Stored]]:
        """Milvus's query iterator pages by primary key, in order (a plain query with a limit does
        not: it answers in segment order)."""
        terms = [f"id > {json.dumps(after, ensure_ascii=False)}"] if after else []
        if expr := milvus_expr(where):
            terms.append(f"({expr})")
        with self._call():
            pages = self.client.query_iterator(
                self.spec.name, batch_size=limit, limit=limit, filter=" and ".join(terms),
                output_fields=self._fields(vectors),
            )  # fmt: skip
            try:
                rows = pages.next()
            finally:
                pages.close()
        return [(r["id"], _stored(r, vectors)) for r in rows]

    @staticmethod
    def _fields(vectors: bool) -> list[str]:
        return ["payload", "code", "vector"] if vectors else ["payload", "code"]

    def count(self, where: Filter = MATCH_ALL) -> int:
        with self._call():
            rows = self.client.query(self.spec.name, filter=milvus_expr(where), output_fields=["count(*)"])
            return int(rows[0]["count(*)"])

    def close(self) -> None:
        pass  # the client is shared by the registry

    def destroy(self) -> None:
        with self.lock:
            self.closed = True
            self.client.drop_collection(self.spec.name)

    @contextmanager
    def _call(self) -> Iterator[None]:
        """One call on the shared client, under the lock; a collection dropped meanwhile (here or
        by another replica) raises NotFound."""
        from pymilvus.exceptions import MilvusException

        with self.lock:
            if self.closed:
                raise NotFound(f"collection {self.spec.name!r} was dropped")
            try:
                yield
            except MilvusException as e:
                if e.code != COLLECTION_NOT_FOUND:
                    raise
                self.closed = True
                raise NotFound(f"collection {self.spec.name!r} was dropped (in Milvus)") from None


def _stored(row: dict[str, Any], vectors: bool) -> Stored:
    vector = np.asarray(row["vector"], np.float32) if vectors else None  # (d,)
    return Stored(vector, json.dumps(row["payload"]), int(row["code"]))
