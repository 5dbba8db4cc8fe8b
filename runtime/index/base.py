"""The `Collection` protocol and what travels through it (no gRPC, no engine here)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np

from runtime.errors import InvalidInput, shown
from runtime.index.filters import MATCH_ALL, Filter, check_path

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")  # whole names only (fullmatch); valid for Milvus too
MAX_ID_BYTES = 512
MAX_PAYLOAD_BYTES = 64 << 10
MAX_PAYLOAD_DEPTH = 32  # nested arrays and objects
MAX_TOP_K = 1000
COLLECTION_BACKENDS = ("builtin", "milvus")


@dataclass(frozen=True)
class CollectionSpec:
    name: str
    backend: str  # "builtin" | "milvus"
    dim: int
    codebook_size: int
    fingerprint: str  # the model whose vectors it holds
    indexed: tuple[str, ...] = ()  # payload field paths with postings (runtime/index/postings.py)

    def __post_init__(self) -> None:
        object.__setattr__(self, "indexed", tuple(self.indexed))  # a list, as read from JSON


@dataclass(frozen=True)
class Hit:
    id: str
    score: float  # inner product of L2-normalised vectors (cosine)
    payload: str  # JSON text
    code: int = -1  # the record's top code (its list in routed search); -1 where unknown


class Stored(NamedTuple):
    """A record as a collection holds it (Get and the listing)."""

    vector: np.ndarray | None  # (d,) unit float32; None where it was not asked for
    payload: str  # JSON text
    code: int  # its top code


Results = list[tuple[list[Hit], int]]  # per query: hits best first, how many vectors were scored


class Collection(Protocol):
    spec: CollectionSpec
    closed: bool  # dropped (here or, for a shared backend, elsewhere) or closed: every call raises NotFound

    def upsert(self, ids: list[str], vectors: np.ndarray, codes: np.ndarray, payloads: list[str]) -> None:
        """Inserts or replaces records; durable when it returns. vectors (N, d), codes (N,) top code."""
        ...

    def delete(self, ids: list[str]) -> int:
        """Removes the records that exist; returns how many did."""
        ...

    def search(
        self, queries: np.ndarray, top_k: int, nprobe: int, code_scores: np.ndarray, where: Filter = MATCH_ALL
    ) -> Results:
        """Top-k by inner product for each query (Q, d), best first: exact where nprobe is 0, else over
        the query's nprobe best lists, ranked with its codebook scores code_scores (Q, K); among the
        records whose payload matches `where` (runtime/index/filters.py). Returns, per query, the
        hits and how many vectors were scored (-1 where the backend cannot say)."""
        ...

    def delete_where(self, where: Filter) -> int:
        """Removes the records whose payload matches `where`, as one write; returns how many."""
        ...

    def get(self, ids: list[str], vectors: bool = True) -> dict[str, Stored]:
        """id -> its record, for the ids that exist (vectors only where asked for)."""
        ...

    def page(
        self, after: str, limit: int, where: Filter = MATCH_ALL, vectors: bool = False
    ) -> list[tuple[str, Stored]]:
        """Up to `limit` records matching `where` whose ids sort after `after` (bytes of UTF-8
        order), in id order: a listing's next page. A record present for a whole listing is in
        exactly one page of it, whatever is written meanwhile."""
        ...

    def count(self, where: Filter = MATCH_ALL) -> int:
        """Records whose payload matches `where` (all, by default)."""
        ...

    def close(self) -> None:
        """Flushes (the built-in one snapshots) and releases files."""
        ...

    def destroy(self) -> None:
        """Releases without flushing; the collection is being dropped."""
        ...


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise InvalidInput(f"collection name {shown(name)} must be letters, digits and _ ({NAME.pattern})")
    return name


MAX_INDEXED_FIELDS = 16


def check_indexed(paths: Sequence[str]) -> tuple[str, ...]:
    if len(paths) > MAX_INDEXED_FIELDS:
        raise InvalidInput(f"{len(paths)} indexed fields is over {MAX_INDEXED_FIELDS}")
    return tuple(dict.fromkeys(".".join(check_path(p, f"indexed field {shown(p)}")) for p in paths))


def check_id(index: int, record_id: str) -> str:
    if not record_id:
        raise InvalidInput(f"record {index}: empty id")
    if len(record_id.encode()) > MAX_ID_BYTES:
        raise InvalidInput(f"record {index}: id of {len(record_id.encode())} bytes is over {MAX_ID_BYTES}")
    return record_id


def check_payload(index: int, payload: str) -> str:
    if not payload or payload == "{}":  # most records carry none: no parse
        return "{}"
    if len(payload.encode()) > MAX_PAYLOAD_BYTES:
        raise InvalidInput(
            f"record {index}: payload of {len(payload.encode()):,} bytes is over {MAX_PAYLOAD_BYTES:,}"
        )
    try:
        value = json.loads(payload, parse_constant=_no_constant)
    except RecursionError as e:
        raise InvalidInput(f"record {index}: payload nests deeper than {MAX_PAYLOAD_DEPTH} levels") from e
    except ValueError as e:  # JSONDecodeError, and NaN / Infinity refused below
        raise InvalidInput(f"record {index}: payload is not JSON ({e})") from e
    if _depth(value) > MAX_PAYLOAD_DEPTH:
        raise InvalidInput(f"record {index}: payload nests deeper than {MAX_PAYLOAD_DEPTH} levels")
    return payload


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON value")


def _depth(value: object) -> int:
    """How deeply arrays and objects nest in a parsed JSON value (iteratively: no recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, level = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is not None:
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in children)
    return deepest


def check_top_k(top_k: int) -> int:
    if not 1 <= top_k <= MAX_TOP_K:
        raise InvalidInput(f"top_k {top_k} must be between 1 and {MAX_TOP_K}")
    return top_k


def top_hits(scores: np.ndarray, rows: np.ndarray | None, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """(row indices, scores) of the top_k scores, best first; rows maps positions to rows."""
    k = min(top_k, scores.shape[0])
    if k == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    part = np.argpartition(-scores, k - 1)[:k] if k < scores.shape[0] else np.arange(scores.shape[0])
    best = part[np.argsort(-scores[part], kind="stable")]
    return (best if rows is None else rows[best]), scores[best]
